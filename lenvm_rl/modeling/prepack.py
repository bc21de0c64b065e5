"""Faster float32 inference on CPU: ``nn.Linear`` layers run on oneDNN with pre-packed (reordered) weights.

>>> with PrepackedLinears(lenvm):          # doctest: +SKIP
...     out = lenvm(input_ids, attention_mask)

PyTorch's default CPU ``linear`` calls MKL's ``sgemm`` on the row-major weight. For the few-row
inputs of guided decoding (one chosen token plus ``K`` candidates) that runs far below the CPU's
peak; oneDNN with the weight reordered once into its blocked layout does the same float32 product
about 2x faster (SmolLM2-135M on 2 AVX-512 cores: 17 rows through the trunk 59 ms instead of 104 ms,
one row 37 ms instead of 48 ms; see ``bench/bench_decoding.py speed``). The result equals
``F.linear`` up to float32 summation order. This is the pre-packing ``torch.compile`` applies when it
freezes a CPU model, without compiling.

Inside the ``with`` block every plain ``nn.Linear`` of the model (LoRA's base layers included) runs
the packed product when it can: CPU, float32 input and weight, no autograd graph to record. Anything
else falls back to ``F.linear``. Packed weights are made on first use and remade when a weight is
changed in place or replaced (an optimizer step, a refit), so a live model never runs stale weights.
They cost one extra copy of the linear weights in memory while the object lives. The
``state_dict`` is never touched.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrepackedLinears"]


def _onednn_linear_available() -> bool:
    ops = torch.ops.mkldnn
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PrepackedLinears:
    """Context manager: run ``model``'s ``nn.Linear`` layers on oneDNN-packed float32 weights (CPU inference).

    Args:
        model: any module; its ``nn.Linear`` submodules (exact type) are the ones switched.
        rows: the typical number of input rows (tokens) per call, a hint for oneDNN's weight layout;
            any number of rows is correct.

    ``PrepackedLinears.available(model)`` says whether it would do anything: oneDNN is built in,
    and the model's linear weights are float32 on the CPU. The block may be entered many times
    (the packed weights are kept between entries) but not nested.
    """

    def __init__(self, model: nn.Module, *, rows: int = 16):
        if rows < 1:
            raise ValueError(f"rows must be >= 1, got {rows}")
        self.model = model
        self.rows = rows
        self._packed: dict[nn.Linear, tuple[tuple[int, int], torch.Tensor]] = {}
        self._active: list[nn.Linear] = []

    @staticmethod
    def available(model: nn.Module) -> bool:
        """True when oneDNN is available and every ``nn.Linear`` weight of ``model`` is float32 on the CPU."""
        weights = [m.weight for m in model.modules() if type(m) is nn.Linear]
        return (
            bool(weights)
            and _onednn_linear_available()
            and all(w.device.type == "cpu" and w.dtype == torch.float32 for w in weights)
        )

    def __enter__(self) -> "PrepackedLinears":
        if self._active:
            raise RuntimeError("PrepackedLinears is already active; it cannot be nested")
        if _onednn_linear_available():
            self._active = [m for m in self.model.modules() if type(m) is nn.Linear]
            for module in self._active:
                module.forward = self._forward_of(module)  # an instance attribute shadows nn.Linear.forward
        return self

    def __exit__(self, *exc) -> None:
        for module in self._active:
            del module.forward
        self._active = []

    def _forward_of(self, module: nn.Linear):
        def forward(x: torch.Tensor) -> torch.Tensor:
            weight = module.weight
            if (
                x.device.type != "cpu"
                or x.dtype != torch.float32
                or weight.dtype != torch.float32
                or weight.device.type != "cpu"
                or (torch.is_grad_enabled() and (weight.requires_grad or x.requires_grad))
            ):
                return F.linear(x, weight, module.bias)
            return torch.ops.mkldnn._linear_pointwise(x, self._packed_weight(module), module.bias, "none", [], "")

        return forward

    def _packed_weight(self, module: nn.Linear) -> torch.Tensor:
        weight = module.weight
        key = (weight.data_ptr(), weight._version if not weight.is_inference() else 0)
        cached = self._packed.get(module)
        if cached is None or cached[0] != key:
            with torch.no_grad():
                packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), self.rows)
            self._packed[module] = cached = (key, packed)
        return cached[1]
