"""Reward functions for GRPO-style training on GSM8K-format answers, plus TRL's length-shaping rewards.

Every reward function has TRL's GRPO reward-function signature ``f(completions, **kwargs) -> list[float | None]``
and returns one float per completion. ``completions`` is either a list of strings (standard format) or a list of
message lists such as ``[{"role": "assistant", "content": "..."}]`` (conversational format); for a conversational
completion the text scored is the content of its *last* message, whose content may be a string or a list of
``{"type": "text", "text": ...}`` parts. Dataset columns arrive as keyword lists (e.g. ``answer=[...]``); the
other keywords the trainer passes (``prompts``, ``completion_ids``, ``trainer_state``, ``log_extra``,
``log_metric``, ...) are accepted and ignored unless stated.

What each reward counts:

- :func:`gsm8k_correctness_reward`: ``1.0`` when the number after the completion's last ``####`` marker equals the
  gold answer exactly (as a decimal number), else ``0.0``. A completion with no parseable answer scores ``0.0``; a
  gold answer that cannot be parsed raises ``ValueError`` naming its row (it is never silently scored ``0.0``).
- :func:`gsm8k_format_reward`: ``1.0`` when the completion contains a parseable ``#### N`` answer, else ``0.0``
  (whether or not ``N`` is right).
- :func:`get_soft_overlong_punishment` (re-exported from ``trl.rewards``): builds a reward of ``0`` up to
  ``max_completion_len - soft_punish_cache`` completion *tokens*, falling linearly to ``-1`` at
  ``max_completion_len`` and ``-1`` beyond it (DAPO, Eq. 13). It reads ``completion_ids`` only.
- :func:`get_cosine_scaled_reward` (re-exported from ``trl.rewards``): builds a reward that scales TRL's
  ``math_verify``-based correctness by completion length on a cosine schedule. It reads a ``solution`` column (not
  ``answer``), indexes ``completion[0]["content"]`` (conversational completions only) and needs the optional
  ``math_verify`` package; it does not use :func:`extract_answer`.

Answer parsing. :func:`extract_answer` is the single parser for final answers, used by the rewards here and by
evaluation. It reads the whitespace-delimited token right after the *last* ``####`` in the text (so ``"#### 72
apples"`` gives ``"72"``, while ``"#### The answer is 72"``, ``"#### 72apples"`` and ``"#### **72**"`` give
``None``). The token may carry a sign (``-``/``+``), a leading ``$`` (``"-$5"`` and ``"$-5"`` both work), commas as
thousands separators in correct 3-digit groups (``"1,234,567"``; ``"12,34"`` is rejected), a decimal part and one
trailing ``.`` (sentence end). The result is a canonical decimal string with no sign for zero, no leading zeros,
no trailing fractional zeros and no exponent (``"72.00"`` -> ``"72"``, ``"$1,234.50"`` -> ``"1234.5"``,
``"-0"`` -> ``"0"``, ``".5"`` -> ``"0.5"``), so numerically equal answers give identical strings. The
canonicalisation is done on the digit string, so it is exact for numbers of any size (no decimal-context rounding).

>>> extract_answer("She has 3 + 4 = 7 apples.\\n#### 7")
'7'
>>> extract_answer("#### $1,234.50")
'1234.5'
>>> gsm8k_correctness_reward(["... #### 72.0", "... #### 71"], answer=["... #### 72", "72"])
[1.0, 0.0]
>>> gsm8k_format_reward([[{"role": "assistant", "content": "#### 72"}], "no marker"])
[1.0, 0.0]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from trl.rewards import get_cosine_scaled_reward, get_soft_overlong_punishment

__all__ = [
    "extract_answer",
    "get_cosine_scaled_reward",
    "get_soft_overlong_punishment",
    "gsm8k_correctness_reward",
    "gsm8k_format_reward",
]

ANSWER_MARKER = "####"

# One number token: optional sign and "$" (either order), an integer part that is either plain digits or
# comma-grouped thousands, an optional fractional part (a bare ".5" is allowed), and one optional trailing ".".
_NUMBER_RE = re.compile(
    r"""
    (?:(?P<sign>[+-])?\$?|\$(?P<sign_after_dollar>[+-]))
    (?:
        (?P<int>[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.(?P<frac>[0-9]+))?
      | \.(?P<frac_only>[0-9]+)
    )
    \.?
    """,
    re.VERBOSE,
)
# After the marker: any whitespace, then the token, which runs to the next whitespace or the end of the text.
_TOKEN_AFTER_MARKER_RE = re.compile(r"\s*(\S*)")


def _canonical_number(token: str) -> str | None:
    """The canonical decimal string of one number token (see the module docstring), or None if it is not one."""
    match = _NUMBER_RE.fullmatch(token)
    if match is None:
        return None
    sign = match.group("sign") or match.group("sign_after_dollar") or ""
    integer = (match.group("int") or "").replace(",", "").lstrip("0") or "0"
    fraction = (match.group("frac") or match.group("frac_only") or "").rstrip("0")
    number = f"{integer}.{fraction}" if fraction else integer
    if number == "0" or sign != "-":
        return number
    return f"-{number}"


def extract_answer(text: str) -> str | None:
    """The number after the last ``####`` in ``text``, in canonical form, or None.

    None when ``text`` has no ``####`` or when the token right after the last one is not a number (there is no
    fallback to an earlier marker). See the module docstring for the accepted number syntax and the canonical form.

    >>> extract_answer("#### 5\\nOn second thought:\\n#### -1,000.")
    '-1000'
    >>> extract_answer("The answer is 72") is None
    True
    """
    position = text.rfind(ANSWER_MARKER)
    if position < 0:
        return None
    token = _TOKEN_AFTER_MARKER_RE.match(text, position + len(ANSWER_MARKER)).group(1)
    return _canonical_number(token)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = []
        for part in content:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and part.get("type", "text") == "text":
                texts.append(part.get("text") or "")
        return "".join(texts)
    raise TypeError(f"unsupported message content of type {type(content).__name__}: {content!r}")


def _completion_text(completion: Any) -> str:
    """The text of one completion: the string itself, or the content of the last message of a conversation."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):  # a single message rather than a list of them
        return _content_text(completion.get("content"))
    if isinstance(completion, Sequence):
        if len(completion) == 0:
            return ""
        last = completion[-1]
        if isinstance(last, dict):
            return _content_text(last.get("content"))
    raise TypeError(
        "a completion must be a string or a list of messages like [{'role': 'assistant', 'content': ...}], "
        f"got {type(completion).__name__}: {completion!r}"
    )


def _parse_gold(gold: Any, row: int) -> str:
    """The canonical gold answer from a full GSM8K solution ("... #### 72") or a bare number ("72", 72)."""
    parsed: str | None = None
    if isinstance(gold, str):
        parsed = extract_answer(gold) if ANSWER_MARKER in gold else _canonical_number(gold.strip())
    elif isinstance(gold, (int, float, Decimal)) and not isinstance(gold, bool):
        try:
            number = Decimal(str(gold))
        except InvalidOperation:
            number = None
        if number is not None and number.is_finite():
            parsed = _canonical_number(format(number, "f"))
    if parsed is None:
        raise ValueError(f"gold answer at row {row} cannot be parsed as a number: {gold!r}")
    return parsed


def gsm8k_correctness_reward(
    completions: list[str] | list[list[dict[str, Any]]],
    answer: list[str],
    log_extra: Callable[[str, list], None] | None = None,
    **kwargs: Any,
) -> list[float]:
    """1.0 per completion whose :func:`extract_answer` equals its gold ``answer`` exactly as a decimal, else 0.0.

    Args:
        completions: completions in standard (strings) or conversational (message lists) format.
        answer: the gold answers, one per completion, each a full GSM8K solution ending in ``#### N`` or a bare
            number (a string such as ``"1,234"`` or an int/float/Decimal).
        log_extra: given by TRL's GRPO trainer; when set, the parsed gold and predicted answers are logged as the
            ``gsm8k_gold`` and ``gsm8k_pred`` columns of the completions table (``""`` for no parseable answer).
        **kwargs: any other trainer keyword (``prompts``, ``completion_ids``, ``trainer_state``, ...), ignored.

    Raises:
        ValueError: ``answer`` and ``completions`` differ in length, or a gold answer cannot be parsed (the message
            names its row index and text).
    """
    if len(answer) != len(completions):
        raise ValueError(f"got {len(completions)} completions but {len(answer)} gold answers")
    golds = [_parse_gold(gold, row) for row, gold in enumerate(answer)]
    preds = [extract_answer(_completion_text(completion)) for completion in completions]
    rewards = [float(pred is not None and Decimal(pred) == Decimal(gold)) for pred, gold in zip(preds, golds)]
    if log_extra is not None:
        log_extra("gsm8k_gold", golds)
        log_extra("gsm8k_pred", [pred if pred is not None else "" for pred in preds])
    return rewards


def gsm8k_format_reward(completions: list[str] | list[list[dict[str, Any]]], **kwargs: Any) -> list[float]:
    """1.0 per completion that contains a parseable ``#### N`` answer (:func:`extract_answer` is not None), else 0.0.

    Args:
        completions: completions in standard (strings) or conversational (message lists) format.
        **kwargs: any trainer keyword (``prompts``, ``completion_ids``, ``answer``, ...), ignored.
    """
    return [float(extract_answer(_completion_text(completion)) is not None) for completion in completions]
