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

import logging
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor
from transformers import LogitsProcessor

from lenvm_rl.core import (
    CONSTRAINTS,
    add_end_candidate,
    constraint_mask,
    length_to_value,
    logits_to_length,
    logits_to_value,
    remaining_target,
    select_candidates,
    soft_equal,
    tilt,
)
from lenvm_rl.decoding.scoring import StaticTrunk, compile_options, naive_extension_logits, score_extensions
from lenvm_rl.modeling import LenVM, PrepackedLinears
from lenvm_rl.modeling.vocabulary import check_vocabulary

__all__ = ["GuidanceConfig", "GuidanceStep", "LenVMLogitsProcessor", "check_vocabulary"]

logger = logging.getLogger(__name__)


HARD_CONSTRAINTS = ("equal", "at_most", "at_least")
"""The constraints that keep one candidate per step (``"at_least"`` only until its target is met)."""
ONE_HOT_CONSTRAINTS = ("equal", "at_most")
"""The constraints under which decoding is deterministic: sampling never has more than one candidate."""
HARD_CONSTRAINT_MIN_P = 0.1
"""``min_p`` when a hard constraint is given without one: keeps the candidates plausible (see ``GuidanceConfig``)."""


@dataclass(frozen=True)
class GuidanceConfig:
    """What the guidance does at each step (each field's ``help`` metadata says what it means).

    Fields left at ``None`` are resolved in ``__post_init__``: ``min_p`` becomes
    ``HARD_CONSTRAINT_MIN_P`` (0.1) under a hard constraint and 0 otherwise.
    """

    constraint: Literal["equal", "at_most", "at_least", "soft_equal"] | None = field(default=None, metadata={
        "help": "None for exponential tilting with beta; 'equal', 'at_most' or 'at_least' for a hard constraint on "
                "the completion length target: it keeps one candidate per step (at_least: until the target is met), "
                "so with 'equal' and 'at_most' decoding is deterministic and sampling changes nothing (the "
                "reference's hard constraints are one-hot too); 'soft_equal' tilts so the expected u hits the "
                "target's."})
    target: int | None = field(default=None, metadata={
        "help": "Completion length in tokens, EOS included, > 0; required by (and only allowed with) a constraint. "
                "The reference's target_length T is target T + 1 here (see lenvm_rl.core.remaining_target). Under "
                "'equal' and 'at_most' the most probable EOS joins the candidates once the target is reached, so "
                "the completion can always end there."})
    beta: float = field(default=0.0, metadata={
        "help": "Tilt strength for constraint=None: p'(x) ∝ p(x) exp(beta u(x)) with u = -V; beta < 0 favours "
                "shorter continuations, beta = 0 is the base model."})
    top_k: int = field(default=16, metadata={
        "help": "Candidates scored per step (see lenvm_rl.core.select_candidates)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus threshold within the top-k candidates, in (0, 1]."})
    min_p: float | None = field(default=None, metadata={
        "help": "Min-p threshold within the top-k candidates, in [0, 1]. None (default): 0.1 under a hard constraint "
                "(equal, at_most, at_least), else 0. A hard constraint picks by length alone, so it needs a "
                "plausible candidate set: with top-16 and min_p 0 it produced word salad, with 0.1 fluent text."})
    temperature: float = field(default=1.0, metadata={
        "help": "Applied to the policy's scores before the candidate set and the mode; leave generate's own "
                "temperature at 1.0. Under 'equal' and 'at_most' it only reshapes the candidate set."})

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
        if self.min_p is None:
            object.__setattr__(self, "min_p", HARD_CONSTRAINT_MIN_P if self.constraint in HARD_CONSTRAINTS else 0.0)
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    def warn_if_sampling_ignored(self, do_sample: bool = False) -> None:
        """Warn (once) when sampling settings are given with a constraint that leaves one candidate per step.

        Under ``"equal"`` and ``"at_most"`` the output is deterministic: ``do_sample`` and its seed change
        nothing, and ``temperature`` and ``top_p`` only reshape the candidate set.
        """
        if self.constraint not in ONE_HOT_CONSTRAINTS:
            return
        settings = {"do_sample=True": do_sample, f"temperature={self.temperature:g}": self.temperature != 1.0,
                    f"top_p={self.top_p:g}": self.top_p != 1.0}
        given = [name for name, on in settings.items() if on]
        if given:
            warnings.warn(
                f"constraint={self.constraint!r} keeps one candidate per step, so decoding is deterministic: "
                f"{', '.join(given)} given, but sampling (and its seed) changes nothing; temperature and top_p only "
                "reshape the candidate set. For varied lengths use constraint='soft_equal' or tilting (beta).",
                UserWarning, stacklevel=2)


@dataclass
class GuidanceStep:
    """One step's candidates, all (B, K): token ids, base log-probs, set mask, LenVM logits ``z`` of
    ``s_t + x`` (before the terminal-EOS override), and the guided log-probs (``-inf`` outside).

    Under ``"equal"`` and ``"at_most"`` with EOS ids there is one more column, the end token of
    :func:`~lenvm_rl.core.add_end_candidate` (in the set once the target is reached; not scored by the
    LenVM: its logit is ``-inf``, the terminal value). The shared-trunk decoder leaves candidates out of the
    set of every row unscored too (``-inf``)."""

    ids: Tensor
    logprobs: Tensor
    mask: Tensor
    lenvm_logits: Tensor
    guided: Tensor


class LenVMLogitsProcessor(LogitsProcessor):
    """Re-weights the policy's next-token scores with a :class:`LenVM` (docs/method.md#guided-decoding).

    Returns scores whose softmax is the guided distribution over the candidate set (``-inf``
    elsewhere), so greedy and sampling ``generate`` both work. Hard constraints leave one candidate,
    so under ``"equal"`` and ``"at_most"`` sampling changes nothing (``guided_generate`` warns).

    Args:
        lenvm: the length value model; it may be smaller than the policy but must share its vocabulary.
        config: a :class:`GuidanceConfig` (or give its fields as keyword arguments).
        eos_token_id: EOS id(s); a candidate EOS reaches the terminal state, whose value is 0 by
            definition, so its ``u`` and remaining length are set to exactly 0.
        pad_token_id: the left-padding id, used to find padding when :meth:`begin` was not called.
        scoring: ``"cached"`` (one forward per step on the LenVM's KV cache) or ``"naive"``
            (re-encode ``prefix + x`` for every candidate; slow, the reference).
        policy_tokenizer: the policy's tokenizer. When given, the LenVM's vocabulary must be the same
            (:func:`lenvm_rl.modeling.vocabulary.check_vocabulary` against ``lenvm_tokenizer``, else the
            vocabulary the LenVM's checkpoint records or the tokenizer saved beside it); without it nothing
            can be checked (a warning says so) beyond each candidate id fitting the LenVM's embedding table.
        lenvm_tokenizer: the LenVM's tokenizer, when the LenVM itself records no vocabulary.
        cpu_prepack: run the LenVM's linear layers on oneDNN-packed weights during scoring
            (:class:`~lenvm_rl.modeling.PrepackedLinears`: about 2x faster on CPU for ``1 + K`` tokens,
            the same float32 math, one extra copy of the LenVM's linear weights in memory).
            ``None`` (default) turns it on when the LenVM is float32 on the CPU and oneDNN is
            available; ``True`` requires it; ``False`` keeps PyTorch's default kernels.
        compile: score on a static KV cache with the decode step ``torch.compile``'d
            (:class:`~lenvm_rl.decoding.scoring.StaticTrunk`; on CUDA with CUDA graphs); ``True`` or a dict of
            ``torch.compile`` arguments. The first steps of each batch size compile (seconds to minutes); the
            cache's size must be known: call ``begin(attention_mask, max_new_tokens=N)``. Not with
            ``cpu_prepack``, which it turns off by default; ``scoring="cached"`` only.

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
        compile: bool | dict = False,
        **config_kwargs,
    ):
        if config is not None and config_kwargs:
            raise ValueError(f"give either config or its fields, not both (got {sorted(config_kwargs)})")
        self.config = config if config is not None else GuidanceConfig(**config_kwargs)
        if scoring not in ("cached", "naive"):
            raise ValueError(f"scoring must be 'cached' or 'naive', got {scoring!r}")
        if policy_tokenizer is not None:
            check_vocabulary(policy_tokenizer, lenvm_tokenizer if lenvm_tokenizer is not None else lenvm)
        else:
            logger.warning("LenVMLogitsProcessor without policy_tokenizer=: the LenVM's vocabulary is not checked "
                           "against the policy's; pass the policy's tokenizer")
        self.lenvm = lenvm.eval()
        self.scoring = scoring
        if cpu_prepack and not PrepackedLinears.available(lenvm):
            raise ValueError("cpu_prepack=True needs a float32 LenVM on the CPU and a PyTorch built with oneDNN "
                             f"(torch.backends.mkldnn.is_available() is {torch.backends.mkldnn.is_available()}); "
                             "pass cpu_prepack=None to use it only where it applies")
        if compile and (cpu_prepack or scoring != "cached"):
            raise ValueError(f"compile needs scoring='cached' and no cpu_prepack (got scoring={scoring!r}, "
                             f"cpu_prepack={cpu_prepack!r}): the compiled step has its own kernels")
        self.compile = compile
        self._static = StaticTrunk(lenvm.backbone, compile_options(compile, self._device)) if compile else None
        if compile:
            cpu_prepack = False
        self.cpu_prepack = PrepackedLinears.available(lenvm) if cpu_prepack is None else cpu_prepack
        self._prepacked = PrepackedLinears(lenvm, rows=self.config.top_k + 1) if self.cpu_prepack else None
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        self.eos_token_ids = torch.tensor(eos, dtype=torch.long)
        self.pad_token_id = pad_token_id
        self.last_step: GuidanceStep | None = None
        self.state_logits: list[Tensor] = []  # cached scoring: LenVM logit of s_t at each step, (B,) each
        self._prompt_mask: Tensor | None = None
        self._max_new_tokens: int | None = None
        self.reset()

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget the cache and the sequence seen so far."""
        self._cache = None
        self._seen: Tensor | None = None  # (B, S) tokens in the cache
        self._key_mask: Tensor | None = None  # (B, S) 1 for real tokens in the cache
        self._prompt_length = 0
        self.state_logits = []

    def begin(self, attention_mask: Tensor | None, max_new_tokens: int | None = None) -> "LenVMLogitsProcessor":
        """Start a new generation whose prompt has this (B, P) attention mask (0 = left padding), of at most
        ``max_new_tokens`` tokens (needed with ``compile``: it sizes the static cache)."""
        self.reset()
        self._prompt_mask = None if attention_mask is None else attention_mask.detach().long()
        self._prompt_length = 0 if attention_mask is None else attention_mask.shape[1]
        self._max_new_tokens = max_new_tokens
        return self

    @property
    def _device(self) -> torch.device:
        return next(self.lenvm.parameters()).device

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
        return self.guide(input_ids, scores, self._score)

    @torch.no_grad()
    def guide(self, input_ids: Tensor, scores: Tensor, score_candidates) -> Tensor:
        """One step: the guided scores (B, V) given the policy's ``scores`` (B, V) after ``input_ids`` (B, S).

        ``score_candidates(input_ids, ids, mask)`` returns the LenVM logits (B, K) of the candidates ``ids``
        (B, K) (those out of the set, ``mask`` False, may be left ``-inf``: they never change the output):
        :meth:`__call__` passes the LenVM's own scoring (``scoring``), the shared-trunk decoder the policy's
        candidate forward (:mod:`lenvm_rl.decoding.shared_trunk`). The generated length counts from the
        prompt :meth:`begin` was given (or the first ``input_ids`` seen).
        """
        cfg = self.config
        scaled = scores / cfg.temperature
        ids, logprobs, mask = select_candidates(scaled, top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p)
        if int(ids.max()) >= self.lenvm.config.vocab_size:
            raise ValueError(
                f"candidate token {int(ids.max())} is outside the LenVM's vocabulary of "
                f"{self.lenvm.config.vocab_size} (the policy scores {scores.shape[-1]})"
            )
        lenvm_logits = score_candidates(input_ids, ids, mask)
        remaining = None
        if cfg.constraint is not None:
            remaining = remaining_target(cfg.target, input_ids.shape[1] - self._prompt_length)
        if cfg.constraint in ONE_HOT_CONSTRAINTS and self.eos_token_ids.numel():  # the target can always end
            ids, logprobs, mask = add_end_candidate(scaled, ids, logprobs, mask, self.eos_token_ids, remaining <= 0)
            lenvm_logits = torch.cat([lenvm_logits, lenvm_logits.new_full((ids.shape[0], 1), -math.inf)], dim=1)
        guided = self._guide(logprobs, mask, ids, lenvm_logits, remaining)
        self.last_step = GuidanceStep(ids=ids, logprobs=logprobs, mask=mask, lenvm_logits=lenvm_logits, guided=guided)
        out = torch.full_like(scores, -math.inf)  # amax: a repeated id out of the set (-inf) never overwrites
        return out.scatter_reduce(1, ids.to(scores.device), guided.to(out.dtype), reduce="amax")

    def _guide(self, logprobs: Tensor, mask: Tensor, ids: Tensor, lenvm_logits: Tensor, remaining: int | None
               ) -> Tensor:
        cfg, gamma = self.config, self.lenvm.gamma
        terminal = torch.isin(ids, self.eos_token_ids.to(ids.device))
        u = torch.where(terminal, 0.0, logits_to_value(lenvm_logits, convention="u"))
        if cfg.constraint is None:
            return tilt(logprobs, u, mask, cfg.beta)
        remaining = float(remaining)
        if cfg.constraint == "soft_equal":
            target_u = length_to_value(torch.tensor(max(remaining, 0.0)), gamma, convention="u")
            return soft_equal(logprobs, u, mask, target_u)
        lengths = torch.where(terminal, 0.0, logits_to_length(lenvm_logits, gamma))
        allowed = constraint_mask(lengths, mask, cfg.constraint, remaining)
        return torch.log_softmax(logprobs.masked_fill(~allowed, -math.inf), dim=-1)

    # ------------------------------------------------------------------ scoring
    def _score(self, input_ids: Tensor, cand: Tensor, _mask: Tensor) -> Tensor:
        """LenVM logits (B, K) of ``s_t + x`` by ``scoring``, on the LenVM's cache when ``input_ids`` extend it."""
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
                return self._score_cached(new_ids, cand)
            return self._score_naive(input_ids, cand)

    def _score_cached(self, new_ids: Tensor, cand: Tensor) -> Tensor:
        """LenVM logits (B, K) of ``s_t + x``: ``new_ids`` (B, m) extend the cache, candidates ride along."""
        static = {}
        if self._static is not None:
            prefill = self._cache is None
            if prefill:
                if self._max_new_tokens is None:
                    raise ValueError("compile needs the generation's length: call begin(attention_mask, "
                                     "max_new_tokens=N) before generate")
                self._cache = self._static.new_cache(cand.shape[0],
                                                     self._prompt_length + self._max_new_tokens + cand.shape[1] + 1)
            static = self._static.forward_kwargs(self._cache, step=not prefill)
        out = score_extensions(self.lenvm, new_ids, cand, self._key_mask, cache=self._cache, use_cache=True,
                               **static)
        self._cache = out.cache
        self.state_logits.append(out.new_logits[:, -1].float().cpu())
        return out.candidate_logits

    def _score_naive(self, input_ids: Tensor, cand: Tensor) -> Tensor:
        """LenVM logits (B, K) of ``s_t + x``, re-encoding the whole prefix for every candidate."""
        key_mask = self._key_mask.to(input_ids.device).bool()
        prefixes = [row[real].tolist() for row, real in zip(input_ids, key_mask)]
        logits = naive_extension_logits(self.lenvm, prefixes, cand.tolist(), batch_size=input_ids.shape[0])
        return torch.stack(logits).to(self._device)
