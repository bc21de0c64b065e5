"""Entry points shared by the ``lenvm-rl`` command and the ``recipes/`` scripts."""


def end_processes() -> None:
    """End a launched script: every process waits for the others, then the process group is destroyed.

    Call it last in anything ``accelerate launch`` starts. A process that exits with its process group
    alive can abort in gloo's teardown ("terminate called without an active exception", SIGABRT) while
    another process still writes its files, and the launcher then fails the whole run. A no-op in a
    single process without a process group.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
