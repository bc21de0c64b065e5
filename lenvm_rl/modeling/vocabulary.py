"""The one vocabulary check: does a LenVM read the same token ids as the policy, the tokenizer or the rollouts?

A LenVM scores token ids, so its vocabulary must map every string to the same id as the policy's. The check
compares token-to-id maps (``tokenizer.get_vocab()``), or their hashes (:func:`vocabulary_hash`), which a
LenVM checkpoint records in ``config.json`` (``lenvm_vocabulary_hash``) and rollout records in their
``sampler``. It serves the critic (:class:`~lenvm_rl.LenVMCritic`), guided decoding
(:class:`~lenvm_rl.decoding.LenVMLogitsProcessor`) and value pretraining (:class:`~lenvm_rl.LenVMTrainer`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import NamedTuple

__all__ = ["check_vocabulary", "saved_tokenizer", "vocabulary_hash"]

logger = logging.getLogger(__name__)

ADVICE = ("a LenVM only scores the token ids of the vocabulary it was trained on: pretrain one on the policy's "
          "own rollouts (lenvm-rl rollout, then lenvm-rl pretrain)")


def vocabulary_hash(tokenizer) -> str:
    """A short hash of the token-to-id map ``tokenizer.get_vocab()`` (added tokens included)."""
    return _hash(_tokenizer(tokenizer).get_vocab())


def saved_tokenizer(path):
    """The tokenizer saved in a model directory (offline), or ``None`` when it holds none."""
    if not path or not os.path.isdir(path):
        return None
    if not any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def check_vocabulary(tokenizer, reference, *, names: tuple[str, str] = ("the policy tokenizer", "the LenVM tokenizer"),
                     advice: str = ADVICE) -> None:
    """Raise ``ValueError`` naming both sides unless ``tokenizer`` and ``reference`` map tokens to the same ids.

    Args:
        tokenizer: a tokenizer (or a processor holding one), a vocabulary hash (:func:`vocabulary_hash`), a
            ``(name, hash)`` pair, or ``None``.
        reference: the same kinds, or a :class:`~lenvm_rl.LenVM`: its recorded ``vocabulary_hash``, else the
            tokenizer saved in its checkpoint directory (``config.name_or_path``).
        names: how the error calls the two sides.
        advice: the error's last sentence, how to fix it.

    Nothing is checked when a side is ``None`` (unknown: written before vocabularies were recorded). A LenVM
    with neither a recorded vocabulary nor a saved tokenizer (one built in memory) can only be checked by
    size: a tokenizer with more tokens than its embedding table is refused, and a warning says the
    vocabulary itself went unchecked.
    """
    a, b = _side(tokenizer), _side(reference)
    if a is None or b is None:
        return
    if a.rows is not None or b.rows is not None:  # a LenVM that records no vocabulary: its size only
        (tok, label), lenvm = ((a, names[0]), b) if b.rows is not None else ((b, names[1]), a)
        if tok.vocab is None:
            return
        if len(tok.vocab) > lenvm.rows:
            raise ValueError(f"{label} {tok.name!r} has {len(tok.vocab)} tokens but the LenVM {lenvm.name!r} has a "
                             f"vocabulary of {lenvm.rows}: {advice}")
        logger.warning("the LenVM %r records no vocabulary and its directory holds no tokenizer: only checked that "
                       "the %d tokens of %r fit its %d embeddings; save it with LenVMTrainer (or save its tokenizer "
                       "beside it) to check the token-to-id map", lenvm.name, len(tok.vocab), tok.name, lenvm.rows)
        return
    if a.vocab is not None and b.vocab is not None:
        if a.vocab != b.vocab:
            examples = sorted(set(a.vocab.items()) ^ set(b.vocab.items()))[:3]
            raise ValueError(f"{a.label(names[0])} ({len(a.vocab)} tokens) and {b.label(names[1])} "
                             f"({len(b.vocab)} tokens) differ (e.g. {examples}): {advice}")
    elif a.digest != b.digest:
        raise ValueError(f"{a.label(names[0])} ({a.describe()}) and {b.label(names[1])} ({b.describe()}) differ: "
                         f"{advice}")


class _Vocabulary(NamedTuple):
    """One side of the check: a token-to-id map, or only its hash, or (a LenVM recording neither) its rows."""

    name: str
    vocab: dict | None = None
    recorded: str | None = None
    rows: int | None = None

    @property
    def digest(self) -> str:
        return self.recorded or _hash(self.vocab)

    def label(self, role: str) -> str:
        return f"{role} {self.name!r}" if self.name else role

    def describe(self) -> str:
        return f"{len(self.vocab)} tokens" if self.vocab is not None else f"vocabulary hash {self.recorded}"


def _tokenizer(processing_class):
    return getattr(processing_class, "tokenizer", processing_class)  # a processor wraps one


def _hash(vocab: dict) -> str:
    return hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]


def _side(side) -> _Vocabulary | None:
    """What is known of one side's vocabulary; ``None`` when nothing is (unknown)."""
    from lenvm_rl.modeling.lenvm import LenVM

    if side is None:
        return None
    if isinstance(side, str):
        return _Vocabulary("", recorded=side)
    if isinstance(side, tuple):
        name, digest = side
        return None if digest is None else _Vocabulary(str(name), recorded=digest)
    if isinstance(side, LenVM):
        name = side.config.name_or_path or type(side.backbone).__name__
        if side.vocabulary_hash is not None:
            return _Vocabulary(name, recorded=side.vocabulary_hash)
        saved = saved_tokenizer(side.config.name_or_path)
        if saved is not None:
            return _Vocabulary(name, vocab=saved.get_vocab())
        return _Vocabulary(name, rows=side.config.get_text_config().vocab_size)  # a VL config: its text_config
    tokenizer = _tokenizer(side)
    name = getattr(side, "name_or_path", None) or getattr(tokenizer, "name_or_path", None) or type(side).__name__
    return _Vocabulary(name, vocab=tokenizer.get_vocab())
