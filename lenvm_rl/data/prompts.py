"""Prompt sources: a ``datasets.Dataset``, a JSONL file or a Hub dataset id, as chat messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["encode_prompt", "load_prompts", "to_messages"]


def _is_message(message) -> bool:
    return isinstance(message, dict) and "role" in message and "content" in message


def to_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string becomes one user message; messages pass through."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt and all(_is_message(m) for m in prompt):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise TypeError(
        f"a prompt must be a string or a list of chat messages with 'role' and 'content', got {prompt!r:.80}"
    )


def encode_prompt(tokenizer, prompt) -> list[int]:
    """Token ids of the state ``s_0`` for ``prompt`` (text or chat messages).

    With a chat template: the template with its generation prompt, tokenized without adding
    special tokens again. Without one: plain text with the tokenizer's special tokens.
    """
    if isinstance(prompt, str) and not tokenizer.chat_template:
        return tokenizer(prompt)["input_ids"]
    messages = to_messages(prompt)
    if not tokenizer.chat_template:
        raise ValueError("chat messages need a tokenizer with a chat template; pass a plain string instead")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def read_jsonl(path: Path, *, torn_tail_ok: bool = False) -> list[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of a JSONL file.

    Errors name the file and line. With ``torn_tail_ok`` an unparsable last line (an interrupted
    append) is skipped instead.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            if torn_tail_ok and lineno == len(lines):
                break
            raise ValueError(f"{path} line {lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path} line {lineno}: expected a JSON object")
        rows.append((lineno, row))
    return rows


def load_prompts(source, *, prompt_column: str | None = None, split: str = "train", limit: int | None = None,
                 offset: int = 0) -> list[list[dict]]:
    """Load prompts as chat messages.

    Args:
        source: a ``datasets.Dataset``, a path to a ``.jsonl`` file, or a Hub dataset id.
        prompt_column: the column holding the prompt (text or chat messages). By default
            ``messages`` if present, else ``prompt``.
        split: the split to load for a Hub id (a Hub id may carry a config: ``openai/gsm8k:main``).
        limit, offset: take rows ``offset .. offset + limit``.
    """
    import datasets

    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix == ".jsonl" or path.is_file():
            if not path.is_file():
                raise FileNotFoundError(f"prompt file not found: {path}")
            rows = [row for _, row in read_jsonl(path)]
            name = str(path)
        else:
            repo, _, config = str(source).partition(":")
            rows = datasets.load_dataset(repo, config or None, split=split)
            name = str(source)
    elif isinstance(source, datasets.Dataset):
        rows, name = source, "the dataset"
    else:
        raise TypeError(
            f"prompts must come from a datasets.Dataset, a JSONL path or a Hub id, got {type(source).__name__}"
        )

    if len(rows) == 0:
        raise ValueError(f"{name} is empty: no prompts to sample")
    columns = set(rows.column_names) if isinstance(rows, datasets.Dataset) else set().union(*(r.keys() for r in rows))
    column = prompt_column or ("messages" if "messages" in columns else "prompt")
    if column not in columns:
        raise ValueError(f"{name} has no column {column!r} (columns: {sorted(columns)}); pass prompt_column=")
    stop = None if limit is None else offset + limit
    selected = [rows[i] for i in range(len(rows))[offset:stop]]
    if not selected:
        raise ValueError(f"{name} has no rows in the range offset={offset}, limit={limit}")
    prompts = []
    for i, row in enumerate(selected, start=offset):
        if column not in row:
            raise ValueError(f"{name} row {i} (0-based) has no column {column!r}")
        try:
            prompts.append(to_messages(row[column]))
        except TypeError as err:
            raise ValueError(f"{name} row {i} (0-based): {err}") from None
    return prompts
