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

__all__ = ["ExtensionScores", "naive_extension_logits", "score_extensions", "tree_values"]


@dataclass
class ExtensionScores:
    """``new_logits`` (B, m): ``z`` after each new token (0 at padding); ``candidate_logits`` (B, K): ``z`` of
    ``prefix + c_k``; ``cache``: the cache extended by the new tokens only (``None`` unless ``use_cache``)."""

    new_logits: Tensor
    candidate_logits: Tensor
    cache: object | None = None


def _extension_mask(key_mask: Tensor, m: int, k: int, dtype: torch.dtype) -> Tensor:
    """Additive (B, 1, m + k, S + k) mask: the ``m`` new tokens are causal over the real keys, each of the
    ``k`` candidates sees every real key of the prefix and itself."""
    batch, total = key_mask.shape  # total = past + m
    past = total - m
    device = key_mask.device
    keys = torch.arange(total + k, device=device)
    query_at = past + torch.arange(m + k, device=device)
    real_key = torch.cat([key_mask.bool(), key_mask.new_zeros(batch, k, dtype=torch.bool)], dim=1)
    visible = torch.cat([keys[None, :] <= query_at[:m, None], (keys[None, :] < total).expand(k, -1)], dim=0)
    allowed = (visible[None] & real_key[:, None, :]) | (keys[None, :] == query_at[:, None])[None]
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask[:, None]


@torch.no_grad()
def score_extensions(
    lenvm: LenVM,
    new_ids: Tensor,
    candidates: Tensor,
    key_mask: Tensor,
    *,
    cache=None,
    use_cache: bool = False,
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

    Returns:
        :class:`ExtensionScores`, float32. ``candidate_logits[b, k]`` equals the last logit of the
        full forward of ``prefix_b + [candidates[b, k]]`` (up to kernel round-off).
    """
    device = next(lenvm.parameters()).device
    new_ids, candidates, key_mask = new_ids.to(device), candidates.to(device), key_mask.to(device).long()
    batch, m = new_ids.shape
    k = candidates.shape[1]
    if m < 1 or key_mask.shape != (batch, key_mask.shape[1]) or key_mask.shape[1] < m:
        raise ValueError(f"need new_ids (B, m >= 1) and key_mask (B, past + m); got {tuple(new_ids.shape)} "
                         f"and {tuple(key_mask.shape)}")
    positions = key_mask.cumsum(-1) - 1
    new_positions = positions[:, -m:].clamp(min=0)
    candidate_positions = (positions[:, -1] + 1)[:, None].expand(batch, k)  # just after the last real token
    dtype = next(lenvm.backbone.parameters()).dtype
    use_cache = use_cache or cache is not None
    hidden, cache = lenvm.trunk(
        torch.cat([new_ids, candidates], dim=1),
        _extension_mask(key_mask, m, k, dtype),
        torch.cat([new_positions, candidate_positions], dim=1),
        cache=cache,
        use_cache=use_cache,
    )
    if use_cache and k:
        cache.crop(-k)
    new_out = lenvm.head(hidden[:, :m], key_mask[:, -m:])
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
