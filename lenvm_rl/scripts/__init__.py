"""Entry points shared by the ``lenvm-rl`` command and the ``recipes/`` scripts."""

import atexit
import os
import sys
import threading


def end_processes() -> None:
    """End a launched script: every process waits for the others, the process group is destroyed, and the
    process exits with status 0 once Python's own shutdown steps have run.

    Call it last in anything ``accelerate launch`` starts; with a process group it does not return. A
    no-op in a single process without a process group.

    Why the process exits here instead of returning: importing ``torch._dynamo`` after the process group
    exists, as the first ``DistributedDataParallel`` does, leaves 10 references to the group that are never
    released (torch 2.13). ``destroy_process_group`` then cannot free it, gloo's worker threads outlive it,
    and the interpreter's teardown can abort on them ("terminate called without an active exception",
    SIGABRT, with no Python frame left on the stack) after every file was written: the launcher fails the
    whole run. It happened in 2 of about 170 runs of the two-process GRPO test here (torch 2.13, CPU), and
    to both such tests in one CI run. So the steps of Python's shutdown that user code relies on run now,
    in its order: non-daemon threads are joined (``threading._shutdown``, which also waits for
    ``concurrent.futures`` pools such as a Hub upload), the ``atexit`` handlers run (loggers, trackers),
    the standard streams are flushed, and ``os._exit(0)`` skips the teardown that follows.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    dist.destroy_process_group()
    threading._shutdown()  # noqa: SLF001 - CPython's shutdown, steps 1 and 2, while the interpreter is whole
    atexit._run_exitfuncs()  # noqa: SLF001
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
