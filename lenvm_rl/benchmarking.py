"""What the benchmarks in ``bench/`` share: the ``--device`` and ``--dtype`` options, wall time that waits for
the GPU, and the header naming the hardware and library versions a number was measured on.

CUDA kernels run asynchronously: without a synchronisation a timer stops when the work is queued, not done.
:func:`timed` synchronises the device before starting and before stopping the clock.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from importlib import metadata

import torch

from lenvm_rl.modeling.devices import resolve_device

__all__ = ["DTYPES", "add_device_arguments", "environment_header", "resolve_device_arguments", "synchronize",
           "timed"]

DTYPES = ("float32", "bfloat16", "float16")
"""The ``--dtype`` choices: the models' parameter dtype."""


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (default ``auto``: CUDA when available) and ``--dtype`` (default ``float32``)."""
    parser.add_argument("--device", default="auto",
                        help="torch device, e.g. cpu or cuda:0; auto: cuda when available, else cpu (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")


def resolve_device_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Replace ``args.device`` ``auto`` by the device it names; ``args.dtype`` stays a name of :data:`DTYPES`."""
    args.device = resolve_device(args.device)
    return args


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued work of ``device`` to finish (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds ``fn()`` takes on ``device``: its queued work is finished before the clock starts and stops."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_header(device: torch.device | str, dtype: str) -> str:
    """One line: the device (a GPU's name, or the CPU's torch threads), the dtype, and the versions of torch
    (with its CUDA), transformers and trl. Print it first, so that every number has its setting."""
    device = torch.device(device)
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    else:
        where = f"{device} ({torch.get_num_threads()} torch threads)"
    return (f"device {where}, dtype {dtype}; torch {torch.__version__}, transformers {_version('transformers')}, "
            f"trl {_version('trl')}")
