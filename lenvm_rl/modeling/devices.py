"""Where a model runs: the one reading of a ``--device`` value, shared by the commands and the benchmarks."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """The torch device a ``--device`` value names: ``auto`` is ``cuda`` where CUDA is available, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
