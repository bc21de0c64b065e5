"""Length prediction: expected remaining tokens at the prompt boundary, and per-token traces.

>>> predictor = LengthPredictor.from_pretrained("path/to/lenvm")          # doctest: +SKIP
>>> predictor.predict(["Natalia sold clips to 48 of her friends..."])    # doctest: +SKIP
[LengthPrediction(value=..., length=...)]

A prediction reads the value at ``s_0``, the last prompt token (see :meth:`LengthPredictor.encode_prompt`
for how a prompt becomes tokens), and inverts it: ``length = ln(1 + V) / ln(gamma)``. This
is the return-consistent length: on a predicted *mean* value it sits below the mean sampled length
(Jensen), so compare it with :func:`lenvm_rl.core.return_consistent_length` of sampled lengths
(docs/method.md#the-length-value).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Union

import torch

from lenvm_rl.core import logits_to_length, logits_to_value
from lenvm_rl.data.prompts import (
    PromptFormat,
    apply_prompt_format,
    encode_prompt,
    prompt_mismatch,
    resolve_prompt_format,
)
from lenvm_rl.modeling import EMBEDDED_MODELS, LenVM
from lenvm_rl.modeling.vision import is_vision_language

__all__ = ["LengthPrediction", "LengthPredictor", "LengthTrace", "Prompt"]

logger = logging.getLogger(__name__)

Prompt = Union[str, list[dict]]
"""A string, or chat messages ``[{"role": ..., "content": ...}, ...]``; see :meth:`LengthPredictor.encode_prompt`.
For a vision-language LenVM the messages' content may hold images (:mod:`lenvm_rl.data.images`)."""


@dataclass(frozen=True)
class LengthPrediction:
    """``value`` is ``V(s_0)`` in (-1, 0); ``length`` the predicted remaining tokens, EOS included."""

    value: float
    length: float


@dataclass(frozen=True)
class LengthTrace:
    """Values along a completion: entry 0 is ``s_0`` (last prompt token), entry ``t`` follows token ``t``.

    ``tokens`` (each decoded alone) and ``token_ids`` hold the ``L`` completion tokens; ``values`` and ``lengths`` are
    float32 tensors of shape (L + 1,).
    """

    tokens: list[str]
    token_ids: list[int]
    values: torch.Tensor
    lengths: torch.Tensor


class LengthPredictor:
    """Batched length prediction with a :class:`~lenvm_rl.modeling.LenVM` and its tokenizer.

    Args:
        model: the LenVM.
        tokenizer: the backbone's tokenizer; for a vision-language LenVM its processor.
        batch_size: sequences per forward pass; inputs are length-sorted so padding stays small.
        untrained: set when the head is freshly initialised; every output then says so.
        prompt_format: how a *string* prompt becomes ``s_0``: ``"raw"`` (TRL's convention: the text as is,
            with the tokenizer's special tokens) or ``"chat"`` (one user message under the chat template with
            its generation prompt). ``None`` (default): the format the LenVM was pretrained on
            (``model.prompt_format``); for a checkpoint that records none, ``"chat"`` when the tokenizer has a
            chat template, as every string prompt was formatted before formats were recorded. Chat messages
            always go through the chat template.
        chat_template_kwargs, tools: passed to the chat template (:func:`lenvm_rl.data.encode_prompt`).

    A prompt formatted unlike the LenVM's training prompts (raw against chat, or another chat template)
    logs a warning, once per predictor.
    """

    def __init__(self, model: LenVM, tokenizer, *, batch_size: int = 16, untrained: bool = False,
                 prompt_format: PromptFormat | None = None, chat_template_kwargs: dict | None = None,
                 tools: list | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.untrained = untrained
        self.prompt_format = resolve_prompt_format(prompt_format, model, tokenizer)
        self.chat_template_kwargs = chat_template_kwargs
        self.tools = tools
        self._format_warned = False

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        gamma: float | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        trust_remote_code: bool = False,
        batch_size: int = 16,
        prompt_format: PromptFormat | None = None,
        chat_template_kwargs: dict | None = None,
    ) -> "LengthPredictor":
        """Load a LenVM checkpoint and its tokenizer (``prompt_format`` and ``chat_template_kwargs`` as in the class).

        A short name of an embedded backbone (e.g. ``smollm2-135m``) has no trained head: it gets a
        fresh head seeded with 0, ``untrained=True``, and a warning. Any other path must hold a
        value head (see :meth:`LenVM.from_pretrained`).
        """
        from transformers import AutoProcessor, AutoTokenizer

        untrained = str(name_or_path) in EMBEDDED_MODELS
        if untrained:
            logger.warning(
                "%s is a bare backbone: its value head is freshly initialised (seed 0) and UNTRAINED, so its "
                "predictions are not meaningful. Pretrain a LenVM for real predictions.",
                name_or_path,
            )
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = LenVM.from_backbone(
                    name_or_path, gamma=gamma or 0.997, dtype=dtype, device=device, trust_remote_code=trust_remote_code
                )
        else:
            model = LenVM.from_pretrained(
                name_or_path, gamma=gamma, dtype=dtype, device=device, trust_remote_code=trust_remote_code
            )
        loader = AutoProcessor if is_vision_language(model.config) else AutoTokenizer
        tokenizer = loader.from_pretrained(model.config.name_or_path, trust_remote_code=trust_remote_code)
        return cls(model, tokenizer, batch_size=batch_size, untrained=untrained, prompt_format=prompt_format,
                   chat_template_kwargs=chat_template_kwargs)

    @property
    def gamma(self) -> float:
        return self.model.gamma

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of the state ``s_0``: a string formatted as :attr:`prompt_format` says, then
        :func:`lenvm_rl.data.encode_prompt`, the encoder of rollouts and TRL's GRPO."""
        return self.encode_prompt_inputs(prompt)[0]

    def encode_prompt_inputs(self, prompt: Prompt) -> tuple[list[int], dict | None]:
        """:meth:`encode_prompt`'s ids and the prompt's image inputs (``None`` without images); a VL LenVM's
        processor encodes as TRL's GRPO does for VLMs (:func:`lenvm_rl.data.images.encode_vision_prompt`)."""
        from lenvm_rl.data.images import encode_vision_prompt, is_processor

        prompt = apply_prompt_format(prompt, self.prompt_format)
        if not self._format_warned:
            why = prompt_mismatch(self.model, prompt, self.tokenizer, chat_template_kwargs=self.chat_template_kwargs)
            if why:
                logger.warning(why)
                self._format_warned = True
        if is_processor(self.tokenizer):
            return encode_vision_prompt(self.tokenizer, prompt, tools=self.tools,
                                        chat_template_kwargs=self.chat_template_kwargs)
        return encode_prompt(self.tokenizer, prompt, tools=self.tools,
                             chat_template_kwargs=self.chat_template_kwargs), None

    def predict(self, prompts: list[Prompt], *, progress: bool = False) -> list[LengthPrediction]:
        """Predicted remaining tokens at the prompt boundary, one per prompt, in input order."""
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list; wrap a single prompt as [prompt]")
        encoded = [self.encode_prompt_inputs(p) for p in prompts]
        images = [image_inputs for _, image_inputs in encoded]
        scored = self.model.score([ids for ids, _ in encoded], batch_size=self.batch_size, progress=progress,
                                  images=images if any(images) else None)
        last_logits = torch.stack([s.logits[-1] for s in scored]) if scored else torch.zeros(0)
        lengths = logits_to_length(last_logits, self.gamma)
        values = logits_to_value(last_logits)
        return [LengthPrediction(value=v, length=n) for v, n in zip(values.tolist(), lengths.tolist())]

    def trace(self, prompt: Prompt, completion: str | list[int]) -> LengthTrace:
        """Per-token values and predicted remaining lengths along ``completion``.

        ``completion`` is text (tokenized without special tokens, so append the EOS token yourself
        to score a finished completion) or token ids.
        """
        prompt_ids, images = self.encode_prompt_inputs(prompt)
        tokenizer = getattr(self.tokenizer, "tokenizer", self.tokenizer)  # a VL processor holds one
        completion_ids = (
            tokenizer(completion, add_special_tokens=False)["input_ids"]
            if isinstance(completion, str)
            else [int(t) for t in completion]
        )
        (scored,) = self.model.score([prompt_ids + completion_ids], batch_size=1, images=[images] if images else None)
        states = slice(len(prompt_ids) - 1, None)  # s_0 (last prompt token) .. s_L
        return LengthTrace(
            tokens=[tokenizer.decode([t]) for t in completion_ids],
            token_ids=completion_ids,
            values=scored.values[states],
            lengths=logits_to_length(scored.logits[states], self.gamma),
        )
