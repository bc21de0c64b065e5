"""LenVM guidance as a ``transformers`` logits processor, scoring candidates on the LenVM's own KV cache.

>>> processor = LenVMLogitsProcessor(lenvm, constraint="equal", target=128, top_k=16)   # doctest: +SKIP
>>> processor.begin(attention_mask)                                                     # doctest: +SKIP
>>> policy.generate(input_ids, attention_mask=attention_mask, do_sample=True, temperature=1.0, top_k=0,
...                 logits_processor=LogitsProcessorList([processor]))                   # doctest: +SKIP

Each call scores every candidate ``x`` of the step with ``V(s_t + x)`` in **one** LenVM forward: the
token chosen at the previous step (or the whole prompt, on the first call) is folded in front of the
``K`` candidates, the candidates sit side by side at the same position under a 4D attention mask
(each sees the prefix and itself only), and the cache is cropped back to the prefix afterwards. So
a step never re-encodes the prefix. ``scoring="naive"`` re-encodes ``prefix + x`` for every
candidate instead: the reference the cached path is tested against, and the benchmark's baseline.

The mode math is in :mod:`lenvm_rl.core.decoding`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor
from transformers import LogitsProcessor

from lenvm_rl.core import (
    CONSTRAINTS,
    constraint_mask,
    length_to_value,
    logits_to_length,
    select_candidates,
    soft_equal,
    tilt,
)
from lenvm_rl.decoding.scoring import naive_extension_logits, score_extensions
from lenvm_rl.modeling import LenVM, PrepackedLinears

__all__ = ["GuidanceConfig", "GuidanceStep", "LenVMLogitsProcessor", "check_vocabulary"]


@dataclass(frozen=True)
class GuidanceConfig:
    """What the guidance does at each step.

    Args:
        constraint: ``None`` for exponential tilting with ``beta``; ``"equal"``, ``"at_most"`` or
            ``"at_least"`` for a hard constraint on the completion length ``target`` (tokens, EOS
            included); ``"soft_equal"`` tilts so the expected ``u`` hits the target's.
        target: token target, > 0; required by (and only allowed with) a constraint.
        beta: tilt strength for ``constraint=None``: ``p'(x) ∝ p(x) exp(beta u(x))`` with
            ``u = -V``; ``beta < 0`` favours shorter continuations, ``beta = 0`` is the base model.
        top_k, top_p, min_p: the candidate set (see :func:`lenvm_rl.core.select_candidates`).
        temperature: applied to the policy's scores before the candidate set and the mode; leave
            ``generate``'s own ``temperature`` at 1.0.
    """

    constraint: Literal["equal", "at_most", "at_least", "soft_equal"] | None = None
    target: int | None = None
    beta: float = 0.0
    top_k: int = 16
    top_p: float = 1.0
    min_p: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        if self.constraint is not None and self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be None (tilt) or one of {CONSTRAINTS}, got {self.constraint!r}")
        if self.constraint is None:
            if self.target is not None:
                raise ValueError(f"target={self.target!r} needs a constraint (one of {CONSTRAINTS})")
        else:
            if self.target is None:
                raise ValueError(f"constraint={self.constraint!r} needs a target (tokens > 0)")
            if isinstance(self.target, bool) or not isinstance(self.target, int) or self.target <= 0:
                raise ValueError(f"target must be a positive integer number of tokens, got {self.target!r}")
            if self.beta != 0.0:
                raise ValueError(f"beta={self.beta!r} applies to tilting only (constraint=None), "
                                 f"not to constraint={self.constraint!r}")
        if not math.isfinite(self.beta):
            raise ValueError(f"beta must be finite, got {self.beta!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")


@dataclass
class GuidanceStep:
    """One step's candidates, all (B, K): token ids, base log-probs, set mask, LenVM logits ``z`` of
    ``s_t + x`` (before the terminal-EOS override), and the guided log-probs (``-inf`` outside)."""

    ids: Tensor
    logprobs: Tensor
    mask: Tensor
    lenvm_logits: Tensor
    guided: Tensor


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def check_vocabulary(policy_tokenizer, lenvm_tokenizer) -> None:
    """Raise ``ValueError`` naming both tokenizers unless they map the same strings to the same ids."""
    if policy_tokenizer is None or lenvm_tokenizer is None or policy_tokenizer is lenvm_tokenizer:
        return
    policy_vocab, lenvm_vocab = policy_tokenizer.get_vocab(), lenvm_tokenizer.get_vocab()
    if policy_vocab != lenvm_vocab:
        differing = sorted(set(policy_vocab.items()) ^ set(lenvm_vocab.items()))[:3]
        raise ValueError(
            f"the policy tokenizer {_tokenizer_name(policy_tokenizer)!r} ({len(policy_vocab)} tokens) and the LenVM "
            f"tokenizer {_tokenizer_name(lenvm_tokenizer)!r} ({len(lenvm_vocab)} tokens) differ (e.g. {differing}); "
            "the LenVM may be smaller than the policy but must share its vocabulary"
        )


class LenVMLogitsProcessor(LogitsProcessor):
    """Re-weights the policy's next-token scores with a :class:`LenVM` (LENVM.md section 5).

    Returns scores whose softmax is the guided distribution over the candidate set (``-inf``
    elsewhere), so greedy and sampling ``generate`` both work. Hard constraints leave one candidate.

    Args:
        lenvm: the length value model; it may be smaller than the policy but must share its vocabulary.
        config: a :class:`GuidanceConfig` (or give its fields as keyword arguments).
        eos_token_id: EOS id(s); a candidate EOS reaches the terminal state, whose value is 0 by
            definition, so its ``u`` and remaining length are set to exactly 0.
        pad_token_id: the left-padding id, used to find padding when :meth:`begin` was not called.
        scoring: ``"cached"`` (one forward per step on the LenVM's KV cache) or ``"naive"``
            (re-encode ``prefix + x`` for every candidate; slow, the reference).
        policy_tokenizer, lenvm_tokenizer: when both are given their vocabularies must agree.
        cpu_prepack: run the LenVM's linear layers on oneDNN-packed weights during scoring
            (:class:`~lenvm_rl.modeling.PrepackedLinears`: about 2x faster on CPU for ``1 + K`` tokens,
            the same float32 math, one extra copy of the LenVM's linear weights in memory).
            ``None`` (default) turns it on when the LenVM is float32 on the CPU and oneDNN is
            available; ``True`` requires it; ``False`` keeps PyTorch's default kernels.

    A processor follows one ``generate`` call at a time: it notices a new call (the inputs no longer
    extend what it has seen) and starts over. Call :meth:`begin` with the prompt attention mask
    before each call with left padding (:func:`~lenvm_rl.decoding.guided_generate` does). Greedy and
    sampling are supported; beam search reorders rows between steps, which makes the processor start
    over (correct, but it re-encodes every step).

    Cost: each step forwards ``1 + K`` tokens through the LenVM (``P + K`` on the first), under a
    ``(B, 1, 1 + K, S + 1 + K)`` mask; keep ``top_k`` small (16 is the paper's setting).
    """

    def __init__(
        self,
        lenvm: LenVM,
        config: GuidanceConfig | None = None,
        *,
        eos_token_id: int | list[int] | None = None,
        pad_token_id: int | None = None,
        scoring: Literal["cached", "naive"] = "cached",
        policy_tokenizer=None,
        lenvm_tokenizer=None,
        cpu_prepack: bool | None = None,
        **config_kwargs,
    ):
        if config is not None and config_kwargs:
            raise ValueError(f"give either config or its fields, not both (got {sorted(config_kwargs)})")
        self.config = config if config is not None else GuidanceConfig(**config_kwargs)
        if scoring not in ("cached", "naive"):
            raise ValueError(f"scoring must be 'cached' or 'naive', got {scoring!r}")
        check_vocabulary(policy_tokenizer, lenvm_tokenizer)
        self.vocab_checked = policy_tokenizer is not None and lenvm_tokenizer is not None
        self.lenvm = lenvm.eval()
        self.scoring = scoring
        if cpu_prepack and not PrepackedLinears.available(lenvm):
            raise ValueError("cpu_prepack=True needs a float32 LenVM on the CPU and a PyTorch built with oneDNN "
                             f"(torch.backends.mkldnn.is_available() is {torch.backends.mkldnn.is_available()}); "
                             "pass cpu_prepack=None to use it only where it applies")
        use_prepack = PrepackedLinears.available(lenvm) if cpu_prepack is None else cpu_prepack
        self._prepacked = PrepackedLinears(lenvm, rows=self.config.top_k + 1) if use_prepack else None
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.eos_token_ids = torch.tensor(eos, dtype=torch.long)
        self.pad_token_id = pad_token_id
        self.last_step: GuidanceStep | None = None
        self.state_logits: list[Tensor] = []  # cached scoring: LenVM logit of s_t at each step, (B,) each
        self._prompt_mask: Tensor | None = None
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the cache and the sequence seen so far."""
        self._cache = None
        self._seen: Tensor | None = None  # (B, S) tokens in the cache
        self._key_mask: Tensor | None = None  # (B, S) 1 for real tokens in the cache
        self._prompt_length = 0
        self.state_logits = []

    def begin(self, attention_mask: Tensor | None) -> "LenVMLogitsProcessor":
        """Start a new generation whose prompt has this (B, P) attention mask (0 = left padding)."""
        self.reset()
        self._prompt_mask = None if attention_mask is None else attention_mask.detach().long()
        return self

    @property
    def _device(self) -> torch.device:
        return next(self.lenvm.parameters()).device

    def _check_vocab(self, scores: Tensor) -> None:
        lenvm_vocab = self.lenvm.config.vocab_size
        if not self.vocab_checked and scores.shape[-1] != lenvm_vocab:
            raise ValueError(
                f"the policy scores {scores.shape[-1]} tokens but the LenVM's vocabulary has {lenvm_vocab} "
                f"({self.lenvm.config.name_or_path!r}); the LenVM must share the policy's vocabulary "
                "(pass policy_tokenizer= and lenvm_tokenizer= to check by tokenizer when only the padding differs)"
            )

    def _start(self, input_ids: Tensor) -> None:
        self.reset()
        mask = self._prompt_mask
        if mask is None or tuple(mask.shape) != tuple(input_ids.shape):
            mask = torch.ones_like(input_ids)
            if self.pad_token_id is not None:  # leading pad tokens are left padding
                mask = ((input_ids != self.pad_token_id).long().cumsum(-1) > 0).long()
        self._prompt_length = input_ids.shape[1]
        self._key_mask = mask.to(input_ids.device).long()
        self._prompt_mask = None

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        self._check_vocab(scores)
        cfg = self.config
        ids, logprobs, mask = select_candidates(scores / cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                                                min_p=cfg.min_p)
        if int(ids.max()) >= self.lenvm.config.vocab_size:
            raise ValueError(
                f"candidate token {int(ids.max())} is outside the LenVM's vocabulary of "
                f"{self.lenvm.config.vocab_size} (the policy scores {scores.shape[-1]})"
            )
        continuing = (
            self._seen is not None
            and input_ids.shape[0] == self._seen.shape[0]
            and input_ids.shape[1] == self._seen.shape[1] + 1
            and torch.equal(input_ids[:, : self._seen.shape[1]], self._seen)
        )
        if self._seen is None or not continuing:
            self._start(input_ids)
            new_ids = input_ids
        else:
            new_ids = input_ids[:, -1:]
            self._key_mask = torch.cat([self._key_mask, torch.ones_like(new_ids)], dim=1)
        self._seen = input_ids
        with self._prepacked or nullcontext():
            if self.scoring == "cached":
                lenvm_logits = self._score_cached(new_ids, ids)
            else:
                lenvm_logits = self._score_naive(input_ids, ids)
        guided = self._guide(logprobs, mask, ids, lenvm_logits, generated=input_ids.shape[1] - self._prompt_length)
        self.last_step = GuidanceStep(ids=ids, logprobs=logprobs, mask=mask, lenvm_logits=lenvm_logits, guided=guided)
        out = torch.full_like(scores, -math.inf)
        return out.scatter(1, ids.to(scores.device), guided.to(out.dtype))

    def _guide(self, logprobs: Tensor, mask: Tensor, ids: Tensor, lenvm_logits: Tensor, generated: int) -> Tensor:
        cfg, gamma = self.config, self.lenvm.gamma
        terminal = torch.isin(ids, self.eos_token_ids.to(ids.device))
        u = torch.where(terminal, 0.0, torch.sigmoid(lenvm_logits))
        if cfg.constraint is None:
            return tilt(logprobs, u, mask, cfg.beta)
        remaining = float(cfg.target - (generated + 1))  # tokens after the candidate, to reach the target
        if cfg.constraint == "soft_equal":
            target_u = length_to_value(torch.tensor(max(remaining, 0.0)), gamma, convention="u")
            return soft_equal(logprobs, u, mask, target_u)
        lengths = torch.where(terminal, 0.0, logits_to_length(lenvm_logits, gamma))
        allowed = constraint_mask(lengths, mask, cfg.constraint, remaining)
        return torch.log_softmax(logprobs.masked_fill(~allowed, -math.inf), dim=-1)

    # ------------------------------------------------------------------ scoring
    def _score_cached(self, new_ids: Tensor, cand: Tensor) -> Tensor:
        """LenVM logits (B, K) of ``s_t + x``: ``new_ids`` (B, m) extend the cache, candidates ride along."""
        out = score_extensions(self.lenvm, new_ids, cand, self._key_mask, cache=self._cache, use_cache=True)
        self._cache = out.cache
        self.state_logits.append(out.new_logits[:, -1].float().cpu())
        return out.candidate_logits

    def _score_naive(self, input_ids: Tensor, cand: Tensor) -> Tensor:
        """LenVM logits (B, K) of ``s_t + x``, re-encoding the whole prefix for every candidate."""
        key_mask = self._key_mask.to(input_ids.device).bool()
        prefixes = [row[real].tolist() for row, real in zip(input_ids, key_mask)]
        logits = naive_extension_logits(self.lenvm, prefixes, cand.tolist(), batch_size=input_ids.shape[0])
        return torch.stack(logits).to(self._device)
