"""Prompts: sources (a ``datasets.Dataset``, a JSONL file or a Hub dataset id) and the one encoder of ``s_0``.

A prompt follows TRL's convention (``trl.data_utils.is_conversational``): a plain string is raw text,
tokenized as is with the tokenizer's special tokens; a list of chat messages
(``[{"role": ..., "content": ...}]``) goes through the chat template with its generation prompt. Every part
of the library that turns a prompt into tokens (rollouts, prediction, guided decoding, the server) calls
:func:`encode_prompt`, so a LenVM is asked about the same state ``s_0`` that TRL's GRPO builds for the same
dataset row. To send a string through the chat template, make it a user message first (:func:`to_messages`,
or ``--prompt_format chat`` on the command line).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Literal

__all__ = ["PROMPT_FORMATS", "PromptFormat", "append_to_prompt", "apply_prompt_format", "chat_template_hash",
           "check_prompt", "encode_prompt", "format_mismatch", "load_prompts", "prompt_format", "prompt_mismatch",
           "resolve_prompt_format", "to_messages"]

PromptFormat = Literal["raw", "chat"]
PROMPT_FORMATS = ("raw", "chat")
"""How the states ``s_0`` of a data set were built: ``"raw"`` text, or ``"chat"`` messages under a chat template.
A LenVM checkpoint records one of them, or ``"unknown"`` when it was written before formats were recorded."""


def _is_message(message) -> bool:
    return isinstance(message, dict) and "role" in message and "content" in message


def check_prompt(prompt):
    """``prompt`` itself if it is a string or a non-empty list of chat messages (dicts with ``role`` and
    ``content``); ``TypeError`` otherwise."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_message(m) for m in prompt)):
        return prompt
    raise TypeError(
        f"a prompt must be a string or a list of chat messages with 'role' and 'content', got {prompt!r:.80}"
    )


def prompt_format(prompt) -> PromptFormat:
    """``"raw"`` for a string, ``"chat"`` for chat messages (``trl.data_utils.is_conversational``: a list whose
    first item has a ``role``); ``TypeError`` for anything else."""
    from trl.data_utils import is_conversational

    if isinstance(prompt, str):
        return "raw"
    if isinstance(prompt, list) and prompt and is_conversational({"prompt": prompt}):
        return "chat"
    return check_prompt(prompt)  # raises, naming what a prompt must be


def to_messages(prompt) -> list[dict]:
    """A prompt as chat messages: a string becomes one user message; messages pass through unchanged.

    The explicit way to put string prompts through the chat template (``--prompt_format chat``); nothing
    converts them implicitly.
    """
    return [{"role": "user", "content": prompt}] if prompt_format(prompt) == "raw" else prompt


def append_to_prompt(prompt, text: str):
    """``prompt`` with ``text`` after a blank line, at the end of its (last) message; its format is kept."""
    if prompt_format(prompt) == "raw":
        return f"{prompt}\n\n{text}"
    return [*prompt[:-1], {**prompt[-1], "content": f"{prompt[-1]['content']}\n\n{text}"}]


def resolve_prompt_format(string_format: str | None, lenvm=None, tokenizer=None) -> PromptFormat:
    """How to format string prompts for a LenVM: ``string_format`` when given (``"raw"`` or ``"chat"``), else
    the LenVM's recorded ``prompt_format``, else (``"unknown"``: a checkpoint written before formats were
    recorded, or no LenVM) ``"chat"`` when the tokenizer has a chat template, the format every string prompt was
    given before, and ``"raw"`` otherwise."""
    if string_format is not None:
        if string_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS} or None, got {string_format!r}")
        return string_format
    recorded = getattr(lenvm, "prompt_format", "unknown")
    if recorded in PROMPT_FORMATS:
        return recorded
    return "chat" if getattr(tokenizer, "chat_template", None) else "raw"


def apply_prompt_format(prompt, string_format: PromptFormat):
    """A string prompt as one user message when ``string_format == "chat"``; anything else unchanged."""
    return to_messages(prompt) if string_format == "chat" else prompt


def encode_prompt(tokenizer, prompt, *, tools: list | None = None, chat_template_kwargs: dict | None = None
                  ) -> list[int]:
    """Token ids of the state ``s_0`` for ``prompt``, as TRL's GRPO tokenizes it.

    Built on ``trl.data_utils.maybe_apply_chat_template`` with the example ``{"prompt": prompt}``: chat
    messages are rendered with the chat template and its generation prompt (``tools`` and
    ``chat_template_kwargs`` pass through to it) and tokenized without adding special tokens again; a
    string is tokenized as is, with the tokenizer's special tokens.
    """
    from trl.data_utils import maybe_apply_chat_template

    if prompt_format(prompt) == "raw":
        return tokenizer(prompt)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"chat messages need a tokenizer with a chat template, and {_name(tokenizer)!r} has none; "
                         "pass the prompt as a plain string (raw text) instead")
    text = maybe_apply_chat_template({"prompt": prompt}, tokenizer, tools=tools, **(chat_template_kwargs or {}))
    return tokenizer(text["prompt"], add_special_tokens=False)["input_ids"]


def chat_template_hash(tokenizer, *, chat_template: str | None = None,
                       chat_template_kwargs: dict | None = None) -> str | None:
    """A short hash of the chat template (``chat_template`` overrides the tokenizer's) and its keyword arguments,
    which together decide how chat messages become ``s_0``; ``None`` when there is no template."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        return None
    blob = json.dumps({"chat_template": template, "chat_template_kwargs": chat_template_kwargs or {}},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_DESCRIBED = {"raw": "raw-text prompts (a string tokenized as is)",
              "chat": "chat prompts (messages under the chat template)"}


def format_mismatch(lenvm, data_format: str, data_chat_template_hash: str | None = None) -> str | None:
    """Why ``lenvm`` would score states ``s_0`` built unlike its training prompts, or ``None`` when they agree.

    Compares the LenVM's recorded ``prompt_format`` and ``chat_template_hash`` with those of the data. Nothing
    is reported when either format is ``"unknown"`` (a checkpoint or records written before formats were
    recorded) or either template hash is missing.
    """
    if "unknown" in (lenvm.prompt_format, data_format):
        return None
    name = getattr(lenvm.config, "name_or_path", "") or "in memory"
    if lenvm.prompt_format != data_format:
        return (f"the LenVM ({name}) was pretrained on {_DESCRIBED[lenvm.prompt_format]}, but these are "
                f"{_DESCRIBED[data_format]}: it scores states s_0 it never saw, without an error, only wrong values. "
                "Pretrain it on rollouts of prompts formatted like these (TRL's convention: a string is raw text, "
                "chat messages use the chat template; lenvm-rl rollout --prompt_format)")
    if data_format == "chat" and None not in (lenvm.chat_template_hash, data_chat_template_hash) \
            and lenvm.chat_template_hash != data_chat_template_hash:
        return (f"the LenVM ({name}) was pretrained on chat prompts rendered by another chat template or other "
                f"chat_template_kwargs (hash {lenvm.chat_template_hash}) than these (hash {data_chat_template_hash}): "
                "the states s_0 differ from those it learned")
    return None


def prompt_mismatch(lenvm, prompt, tokenizer=None, *, chat_template: str | None = None,
                    chat_template_kwargs: dict | None = None) -> str | None:
    """:func:`format_mismatch` of one prompt of a data set (its format, and for chat messages the hash of the
    chat template that ``tokenizer`` or ``chat_template`` renders them with)."""
    data_format = prompt_format(prompt)
    template = chat_template_hash(tokenizer, chat_template=chat_template, chat_template_kwargs=chat_template_kwargs) \
        if data_format == "chat" else None
    return format_mismatch(lenvm, data_format, template)


def _name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


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
                 offset: int = 0) -> list[str | list[dict]]:
    """Load prompts as they are stored: strings stay raw text, chat messages stay messages (TRL's convention,
    see :func:`encode_prompt`).

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
            prompts.append(check_prompt(row[column]))
        except TypeError as err:
            raise ValueError(f"{name} row {i} (0-based): {err}") from None
    return prompts
