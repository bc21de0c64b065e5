"""Request validation for the LenVM server: every bad request becomes a :class:`RequestError` (a 4xx).

The request bodies follow the reference serving protocol (the LenVM SGLang fork):

- ``/encode``: ``{"input_ids": [[...], ...]}`` (a batch) or ``{"input_ids": [...]}`` (one sequence);
  ``bypass_cache`` and other SGLang fields are accepted and ignored. The fork's image requests (``{"text": ...,
  "image_data": "data:image/png;base64,..."}``) are refused with a 422: this engine batches token ids and runs
  no vision encoder, so neither ``image_data`` nor image placeholder ids of a vision-language LenVM are served.
- ``/tree_value`` and ``/candidate_value``: ``{"input_ids": [prefix, ...], "candidate_ids": [[c_1, ..., c_k],
  ...]}``, or one flat ``prefix`` with one flat candidate list.
- ``/token_value`` takes the body of ``/encode``.
- ``/predict`` (lenvm_rl's own): ``{"prompts": [text or messages, ...]}``, ``{"prompt": text}`` or
  ``{"messages": [{"role": ..., "content": ...}, ...]}``.
"""

from __future__ import annotations

import json

__all__ = ["RequestError", "check_budget", "check_placeholders", "parse_body", "parse_encode", "parse_predict",
           "parse_tree_value"]

IMAGE_FIELDS = ("image_data", "video_data")
"""The reference fork's multimodal request fields, which this server refuses."""
IMAGE_ADVICE = ("this server scores token ids only and runs no vision encoder; score image prompts in Python "
                "(LengthPredictor.predict / trace) or with lenvm-rl predict --image")


class RequestError(Exception):
    """A bad request: ``status`` (400 malformed, 413 over the token budget, 422 invalid) and a message."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.message = message
        self.status = status


def parse_body(raw: bytes) -> dict:
    """The JSON object of a request body (400 when it is not JSON, 422 when it is not an object)."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"the request body is not valid JSON: {err}", status=400) from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(body).__name__}")
    return body


def _is_id(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _ids(value, name: str, vocab_size: int) -> list[int]:
    """A non-empty list of token ids in ``[0, vocab_size)``."""
    if not isinstance(value, list):
        raise RequestError(f"{name} must be a list of token ids, got {type(value).__name__}")
    if not value:
        raise RequestError(f"{name} is empty; a state needs at least one token")
    for j, x in enumerate(value):
        if not _is_id(x):
            raise RequestError(f"{name}[{j}] must be an integer token id, got {x!r}")
        if not 0 <= x < vocab_size:
            raise RequestError(f"{name}[{j}] = {x} is outside the vocabulary [0, {vocab_size})")
    return value


def _batch(body: dict, field: str, vocab_size: int) -> tuple[list[list[int]], bool]:
    """``body[field]`` as a list of id lists, and whether it was given as a single flat list."""
    if field not in body:
        raise RequestError(f"missing field {field!r}")
    value = body[field]
    if not isinstance(value, list) or not value:
        raise RequestError(f"{field} must be a non-empty list of token ids or of token-id lists")
    if all(_is_id(x) for x in value):
        return [_ids(value, field, vocab_size)], True
    return [_ids(seq, f"{field}[{i}]", vocab_size) for i, seq in enumerate(value)], False


def check_budget(tokens: int, budget: int) -> None:
    if tokens > budget:
        raise RequestError(f"the request holds {tokens} tokens, over the server's batch budget of {budget} "
                           "(--max_batch_tokens); split it into smaller requests", status=413)


def _refuse_images(body: dict) -> None:
    for name in IMAGE_FIELDS:
        if body.get(name) is not None:
            raise RequestError(f"{name} is not supported: {IMAGE_ADVICE}")


def check_placeholders(sequences: list[list[int]], placeholder_ids: set[int]) -> None:
    """Refuse sequences holding image placeholder ids (a vision-language LenVM's), whose pixels cannot be sent."""
    for i, seq in enumerate(sequences):
        found = placeholder_ids.intersection(seq)
        if found:
            raise RequestError(f"sequence {i} holds image placeholder token ids {sorted(found)}: {IMAGE_ADVICE}")


def parse_encode(body: dict, *, vocab_size: int, max_tokens: int) -> tuple[list[list[int]], bool]:
    """Sequences of an ``/encode`` request and whether it was a single flat sequence."""
    _refuse_images(body)
    if "input_ids" not in body and "text" in body:
        raise RequestError("this server takes input_ids only; tokenize the text, or call /predict with prompts")
    sequences, single = _batch(body, "input_ids", vocab_size)
    check_budget(sum(map(len, sequences)), max_tokens)
    return sequences, single


def parse_tree_value(
    body: dict, *, vocab_size: int, max_tokens: int
) -> tuple[list[tuple[list[int], list[int]]], bool]:
    """``(prefix, candidates)`` rows of a ``/tree_value`` request and whether it holds a single prefix.

    A single prefix, flat or a batch of one, is answered with one object, as the reference server does.
    """
    _refuse_images(body)
    prefixes, single = _batch(body, "input_ids", vocab_size)
    candidates, single_candidates = _batch(body, "candidate_ids", vocab_size)
    if single != single_candidates:
        raise RequestError("input_ids and candidate_ids must both be flat lists (one prefix) or both lists of "
                           "lists (one candidate list per prefix)")
    if len(prefixes) != len(candidates):
        raise RequestError(f"input_ids has {len(prefixes)} prefixes but candidate_ids has {len(candidates)} "
                           "candidate lists; give one candidate list per prefix")
    check_budget(sum(len(p) + len(c) for p, c in zip(prefixes, candidates)), max_tokens)
    return list(zip(prefixes, candidates)), len(prefixes) == 1


def _prompt(value, name: str):
    if isinstance(value, str):
        if not value:
            raise RequestError(f"{name} is an empty string")
        return value
    if isinstance(value, list) and value and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return value
    raise RequestError(f"{name} must be a non-empty string or a non-empty list of "
                       '{"role": str, "content": str} messages')


def parse_predict(body: dict) -> list:
    """Prompts of a ``/predict`` request: ``prompts`` (a list), ``prompt`` or ``messages`` (one)."""
    given = [key for key in ("prompts", "prompt", "messages") if key in body]
    if len(given) != 1:
        raise RequestError('give exactly one of "prompts" (a list of texts or message lists), "prompt" (a text) '
                           f'or "messages" (a chat); got {given or "none"}')
    if given[0] != "prompts":
        return [_prompt(body[given[0]], given[0])]
    prompts = body["prompts"]
    if not isinstance(prompts, list) or not prompts:
        raise RequestError("prompts must be a non-empty list of texts or message lists")
    return [_prompt(p, f"prompts[{i}]") for i, p in enumerate(prompts)]
