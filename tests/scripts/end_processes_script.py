"""Launched by test_end_processes.py: a DDP model takes one step, then the script ends with end_processes.

    accelerate launch --multi_gpu --num_processes 2 tests/scripts/end_processes_script.py OUT_DIR

Each process starts a thread that writes ``thread{rank}`` after 0.5 s, registers an exit handler that
writes ``exit{rank}`` and, after ``end_processes()``, writes ``after{rank}``: with a process group the first
two must exist and the last must not.
"""

import atexit
import sys
import threading
import time
from pathlib import Path

import torch
from accelerate import Accelerator

from lenvm_rl.scripts import end_processes


def main(out: Path) -> None:
    accelerator = Accelerator(cpu=True)
    rank = accelerator.process_index
    model = accelerator.prepare(torch.nn.Linear(3, 1))  # DistributedDataParallel with 2 processes
    accelerator.backward(model(torch.ones(2, 3)).sum())
    threading.Thread(target=lambda: (time.sleep(0.5), (out / f"thread{rank}").write_text("joined"))).start()
    atexit.register(lambda: (out / f"exit{rank}").write_text("ran"))
    end_processes()
    (out / f"after{rank}").write_text("returned")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
