"""One-token extensions scored in one forward: the LenVM logit ``z`` of ``prefix + c`` for many candidates ``c``.

:func:`score_extensions` runs ``m`` new tokens (extending an optional KV cache of the prefix) and ``K``
candidates in **one** trunk forward. The candidates sit side by side at the same position, the one
after the last real token, under a 4D attention mask: each sees the real prefix tokens and itself,
never another candidate or padding. With ``use_cache=True`` the cache keeps the ``m`` new tokens and
is cropped back so no candidate stays in it. :func:`naive_extension_logits` re-encodes every
``prefix + c`` instead: the reference the one-forward path is tested against, and the benchmark's
baseline. :class:`~lenvm_rl.decoding.LenVMLogitsProcessor` scores its candidates with :func:`score_extensions`
on its own cache, ``lenvm-rl serve`` answers ``/tree_value`` with :func:`tree_values`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lenvm_rl.data.rollouts import pad_token_ids
from lenvm_rl.modeling import LenVM
from lenvm_rl.modeling.lenvm import _cache_argument, base_causal_lm, run_trunk

__all__ = ["ExtensionScores", "StaticTrunk", "compile_options", "extension_forward", "keep_candidate",
           "naive_extension_logits", "score_extensions", "static_generate_kwargs", "tree_values"]


@dataclass
class ExtensionScores:
    """``new_logits`` (B, m): ``z`` after each new token (0 at padding); ``candidate_logits`` (B, K): ``z`` of
    ``prefix + c_k``; ``cache``: the cache extended by the new tokens only (``None`` unless ``use_cache``)."""

    new_logits: Tensor
    candidate_logits: Tensor
    cache: object | None = None


def _extension_mask(key_mask: Tensor, m: int, k: int, dtype: torch.dtype, width: int | None = None) -> Tensor:
    """Additive (B, 1, m + k, width) mask: the ``m`` new tokens are causal over the real keys, each of the
    ``k`` candidates sees every real key of the prefix and itself. ``width`` (default ``S + k``) is the key
    length the attention sees: a static cache's full length; keys past ``S + k`` are masked."""
    batch, total = key_mask.shape  # total = past + m
    past = total - m
    width = total + k if width is None else width
    device = key_mask.device
    keys = torch.arange(width, device=device)
    query_at = past + torch.arange(m + k, device=device)
    real_key = torch.cat([key_mask.bool(), key_mask.new_zeros(batch, width - total, dtype=torch.bool)], dim=1)
    visible = torch.cat([keys[None, :] <= query_at[:m, None], (keys[None, :] < total).expand(k, -1)], dim=0)
    allowed = (visible[None] & real_key[:, None, :]) | (keys[None, :] == query_at[:, None])[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@torch.no_grad()
def extension_forward(
    model,
    new_ids: Tensor,
    candidates: Tensor,
    key_mask: Tensor,
    *,
    cache=None,
    use_cache: bool = False,
    keep_candidates: bool = False,
    width: int | None = None,
    trunk=None,
) -> tuple[Tensor, object | None]:
    """Final hidden states (B, m + K, H) of a causal LM's trunk over ``m`` new tokens and ``K`` candidates at once.

    The layout of :func:`score_extensions` on any causal LM ``model`` (a :class:`LenVM`'s backbone, or the policy
    itself when the LenVM is a head on its trunk, see :mod:`lenvm_rl.decoding.shared_trunk`).

    Args:
        new_ids: (B, m) tokens that extend ``cache``; ``m`` may be 0 when a cache holds the whole prefix.
        candidates, key_mask, cache, use_cache: as in :func:`score_extensions`.
        keep_candidates: leave the ``K`` candidates in the returned cache (:func:`keep_candidate` then keeps
            one per row); by default they are cropped off.
        width: the key length the attention sees, for a ``StaticCache`` its ``max_cache_len`` (default: the
            cache's length after this forward).
        trunk: a callable standing in for the trunk module (e.g. ``torch.compile(trunk)``), called with its
            keyword arguments.
    Returns:
        ``(hidden, cache)``; ``cache`` is ``None`` unless ``use_cache`` or a cache was given.
    """
    device = next(model.parameters()).device
    new_ids, candidates, key_mask = new_ids.to(device), candidates.to(device), key_mask.to(device).long()
    batch, m = new_ids.shape
    k = candidates.shape[1]
    if (m < 1 and cache is None) or key_mask.shape != (batch, key_mask.shape[1]) or key_mask.shape[1] < max(m, 1):
        raise ValueError(f"need new_ids (B, m >= 1, or m = 0 on a cache) and key_mask (B, past + m); got "
                         f"{tuple(new_ids.shape)} and {tuple(key_mask.shape)}")
    positions = key_mask.cumsum(-1) - 1
    new_positions = positions[:, positions.shape[1] - m :].clamp(min=0)
    candidate_positions = (positions[:, -1] + 1)[:, None].expand(batch, k)  # just after the last real token
    use_cache = use_cache or cache is not None
    module = base_causal_lm(model).base_model
    inputs = (torch.cat([new_ids, candidates], dim=1),
              _extension_mask(key_mask, m, k, next(module.parameters()).dtype, width),
              torch.cat([new_positions, candidate_positions], dim=1))
    if trunk is None:
        hidden, cache = run_trunk(model, *inputs, cache=cache, use_cache=use_cache)
    else:
        cache_arg = _cache_argument(type(module))
        outputs = trunk(input_ids=inputs[0], attention_mask=inputs[1], position_ids=inputs[2], use_cache=use_cache,
                        **{cache_arg: cache})
        hidden, cache = outputs.last_hidden_state, outputs[cache_arg] if use_cache else None
    if use_cache and k and not keep_candidates:
        cache.crop(-k)
    return hidden, cache


def compile_options(compile: bool | dict, device: torch.device | str) -> dict:
    """``torch.compile`` keyword arguments for ``compile=True`` (a dict given overrides them): shapes fixed
    (``dynamic=False``: one graph per batch size and cache bucket) and, on CUDA, ``mode="reduce-overhead"``
    (CUDA graphs, which replace the step's kernel launches by one replay)."""
    defaults = {"dynamic": False, "mode": "reduce-overhead" if torch.device(device).type == "cuda" else "default"}
    return defaults | (compile if isinstance(compile, dict) else {})


def static_generate_kwargs(compile: bool | dict, device: torch.device | str) -> dict:
    """``generate``'s arguments for the policy's static cache and compiled decode step (:func:`compile_options`)."""
    from transformers import CompileConfig

    config = CompileConfig(**compile_options(compile, device))
    if torch.device(device).type != "cuda":
        config._compile_all_devices = True  # generate compiles on CUDA-like devices only unless told
    return {"cache_implementation": "static", "compile_config": config}


class StaticTrunk:
    """A causal LM's trunk on a static KV cache, its decode-shaped forwards compiled (``guided_generate(compile=...)``).

    The cache is a ``transformers`` ``StaticCache`` whose length is rounded up to a multiple of :attr:`BUCKET`,
    and every forward sees all of it through the 4D mask of :func:`extension_forward` (``width``), so a
    decode step (the chosen token and the candidates) has the same shapes at every step: the compiled
    graph (on CUDA, a CUDA graph) is captured once per batch size and bucket and replayed. A prefill runs
    eagerly. Cropping a static cache moves its write position back, and :func:`keep_candidate` works on it in
    place. One object serves one generation at a time (it reuses its cache).

    Args:
        model: the causal LM whose trunk runs (a :class:`LenVM`'s backbone, or the policy).
        options: ``torch.compile`` keyword arguments (:func:`compile_options`).
    """

    BUCKET = 64

    def __init__(self, model, options: dict):
        self.model = model
        self.options = dict(options)
        lm = base_causal_lm(model)
        self._config = lm.config
        self._compiled = torch.compile(lm.base_model, **self.options)
        self._cuda_graphs = self.options.get("mode") in ("reduce-overhead", "max-autotune")
        self._cache = None

    def new_cache(self, batch: int, length: int):
        """An empty ``StaticCache`` for ``batch`` rows of at least ``length`` positions. The last one is reused
        (reset) when it fits exactly, so its tensors keep their addresses and captured CUDA graphs replay."""
        from transformers import StaticCache

        key = (batch, -(-length // self.BUCKET) * self.BUCKET)
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, StaticCache(config=self._config, max_cache_len=key[1]))
        self._cache[1].reset()
        return self._cache[1]

    def forward_kwargs(self, cache, step: bool) -> dict:
        """``width`` and ``trunk`` for :func:`extension_forward` (or :func:`score_extensions`) on ``cache`` (a
        :meth:`new_cache`): the compiled trunk for a decode ``step``, the eager one for a prefill. A step's
        outputs stay valid until the next step (CUDA graphs reuse their output memory)."""
        if step and self._cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the previous replay's outputs are no longer read
        return {"width": cache.layers[0].max_cache_len, "trunk": self._compiled if step else None}


def keep_candidate(cache, past: int, columns: Tensor, k: int) -> None:
    """Keep one of the ``k`` candidates a :func:`extension_forward` left in ``cache`` after its ``past`` positions.

    Row ``b``'s candidate ``columns[b]`` moves to position ``past`` and the others are cropped off, in place: the
    cache then holds the prefix and the chosen token, as if that token had been run on its own (its keys and values
    saw exactly the prefix and itself). Works on dynamic and static caches (layers with ``keys`` and ``values`` of
    shape (B, heads, length, head_dim)).
    """
    rows = torch.arange(columns.shape[0], device=columns.device)
    for layer in cache.layers:
        for states in (layer.keys, layer.values):
            at = (past + columns).to(states.device)
            states[:, :, past] = states[rows.to(states.device), :, at]
    if k > 1:
        cache.crop(-(k - 1))


@torch.no_grad()
def score_extensions(
    lenvm: LenVM,
    new_ids: Tensor,
    candidates: Tensor,
    key_mask: Tensor,
    *,
    cache=None,
    use_cache: bool = False,
    width: int | None = None,
    trunk=None,
) -> ExtensionScores:
    """LenVM logits of every one-token extension ``prefix + c``, in one forward over a (cached) prefix.

    Args:
        lenvm: the length value model.
        new_ids: (B, m) tokens that extend ``cache`` (the whole prefix when there is no cache), m >= 1.
        candidates: (B, K) candidate tokens; row ``b``'s candidates extend row ``b``'s prefix.
        key_mask: (B, past + m), 1 for real tokens of the cache and ``new_ids``; padding (0) may sit
            anywhere, so left- and right-padded prefixes both work.
        cache: a ``transformers`` cache of the first ``past`` positions, or ``None``.
        use_cache: return the cache extended by ``new_ids`` (candidates cropped off).
        width, trunk: for a static cache and a compiled trunk, see :func:`extension_forward`.

    Returns:
        :class:`ExtensionScores`, float32. ``candidate_logits[b, k]`` equals the last logit of the
        full forward of ``prefix_b + [candidates[b, k]]`` (up to kernel round-off).
    """
    if new_ids.shape[1] < 1:
        raise ValueError(f"need new_ids (B, m >= 1), got {tuple(new_ids.shape)}")
    use_cache = use_cache or cache is not None
    hidden, cache = extension_forward(lenvm.backbone, new_ids, candidates, key_mask, cache=cache,
                                      use_cache=use_cache, width=width, trunk=trunk)
    m = new_ids.shape[1]
    new_out = lenvm.head(hidden[:, :m], key_mask[:, -m:].to(hidden.device))
    candidate_logits = lenvm.v_head(hidden[:, m:]).float()
    return ExtensionScores(new_logits=new_out.logits, candidate_logits=candidate_logits,
                           cache=cache if use_cache else None)


def tree_values(lenvm: LenVM, prefixes: list[list[int]], candidates: list[list[int]]) -> list[Tensor]:
    """``z(prefix_i + c)`` for every candidate ``c`` of every prefix, all prefixes in one forward (no cache kept).

    Prefixes are left-padded to a common width and candidate lists to a common ``K``; the padding is
    masked out and dropped. Returns float32 CPU tensors, ``result[i]`` of shape (len(candidates[i]),).
    """
    if len(prefixes) != len(candidates):
        raise ValueError(f"{len(prefixes)} prefixes but {len(candidates)} candidate lists")
    if not prefixes:
        return []
    if any(len(p) == 0 for p in prefixes):
        raise ValueError("every prefix needs at least one token")
    ids, mask = pad_token_ids(prefixes, 0, padding_side="left")
    cand, _ = pad_token_ids(candidates, 0)
    z = score_extensions(lenvm, ids, cand, mask).candidate_logits.cpu()
    return [z[row, : len(cs)].clone() for row, cs in enumerate(candidates)]


def naive_extension_logits(
    lenvm: LenVM, prefixes: list[list[int]], candidates: list[list[int]], *, batch_size: int = 1
) -> list[Tensor]:
    """The reference for :func:`tree_values`: re-encode every ``prefix + c`` and keep its last logit."""
    sequences = [list(prefix) + [int(c)] for prefix, cs in zip(prefixes, candidates) for c in cs]
    last = [out.logits[-1] for out in lenvm.score(sequences, batch_size=batch_size)]
    result, start = [], 0
    for cs in candidates:
        result.append(torch.stack(last[start : start + len(cs)]) if cs else torch.zeros(0))
        start += len(cs)
    return result
