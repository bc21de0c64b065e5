"""Rollout records -> value-pretraining examples, and the collator that pads them and adds targets.

Every position from the last prompt token ``s_0`` through the EOS ``s_L`` gets the Monte-Carlo
target ``G_t = -(1 - gamma**(L - t))`` (the EOS itself 0), computed per batch by
:func:`lenvm_rl.core.monte_carlo_targets`, so any padding side gives the same targets.

Censored completions (cut at the length limit, true ``L`` unknown) follow an explicit policy:

- ``"infinite"`` (default, as the reference code): every state of a cut completion gets target
  ``-1``, i.e. "at least as long as the cap". Its bias is long, and small where it matters: with
  ``gamma`` from the 99th-percentile rule, ``gamma**cap`` is about 0.01, so ``-1`` is within ~0.01
  of the true value at the start of the completion; near the cut the true value is less negative
  than ``-1`` (the completion may have ended soon after the cap).
- ``"drop"``: cut completions are left out. Every kept length is below the cap, so the model
  learns lengths conditioned on finishing in time: biased short, the more so the more is cut.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from lenvm_rl.core import gamma_from_lengths, monte_carlo_targets
from lenvm_rl.data.rollouts import RolloutEncoding, check_record, pad_token_ids, rollout_encoding

__all__ = ["CensoredPolicy", "ValueDataCollator", "build_value_dataset", "dataset_encoding", "gamma_from_records"]

ENCODING_COLUMN = "prompt_encoding"

CensoredPolicy = Literal["infinite", "drop"]


def _check_censored(censored: str) -> None:
    if censored not in ("infinite", "drop"):
        raise ValueError(f"censored must be 'infinite' or 'drop', got {censored!r}")


def build_value_dataset(records: list[dict], *, censored: CensoredPolicy = "infinite"):
    """Tokenized examples, one per completion.

    Columns: ``input_ids`` (prompt then completion ids, exactly as the records store them), ``prompt_length``,
    ``completion_length`` (``L``, EOS included), ``terminated`` (ended with EOS), ``prompt_index``, ``length``
    (``len(input_ids)``, for length-grouped batching), and ``prompt_encoding``: the records'
    :class:`~lenvm_rl.data.rollouts.RolloutEncoding` as JSON, which :class:`~lenvm_rl.LenVMTrainer` checks
    against the tokenizer and records in the checkpoint (:func:`dataset_encoding`). Records of image prompts add
    ``images``, each row's image references (:class:`~lenvm_rl.data.images.VisionValueDataCollator` reads them).
    """
    import datasets

    from lenvm_rl.data.images import IMAGES_COLUMN, image_refs, jsonable_prompt

    _check_censored(censored)
    if not records:
        raise ValueError("records is empty: sample rollouts first (lenvm-rl rollout)")
    rows = {k: [] for k in ("input_ids", "prompt_length", "completion_length", "terminated", "prompt_index", "length")}
    images = []
    for record in records:
        check_record(record)
        terminated = record["finish_reason"] == "eos"
        if not terminated and censored == "drop":
            continue
        input_ids = list(record["prompt_ids"]) + list(record["completion_ids"])
        rows["input_ids"].append(input_ids)
        rows["prompt_length"].append(len(record["prompt_ids"]))
        rows["completion_length"].append(record["completion_length"])
        rows["terminated"].append(terminated)
        rows["prompt_index"].append(record["prompt_index"])
        rows["length"].append(len(input_ids))
        images.append(image_refs(jsonable_prompt(record.get("prompt"))))
    if not rows["input_ids"]:
        raise ValueError("every completion was cut at the length limit and censored='drop' left none; "
                         "use censored='infinite' or sample with a larger max_new_tokens")
    rows[ENCODING_COLUMN] = [json.dumps(asdict(rollout_encoding(records)))] * len(rows["input_ids"])
    if any(images):
        rows[IMAGES_COLUMN] = images
    return datasets.Dataset.from_dict(rows)


def dataset_encoding(dataset) -> RolloutEncoding | None:
    """The :class:`~lenvm_rl.data.rollouts.RolloutEncoding` of a :func:`build_value_dataset` dataset; ``None`` for
    a dataset without the column. ``ValueError`` when its rows disagree (datasets of mixed origin)."""
    if dataset is None or ENCODING_COLUMN not in getattr(dataset, "column_names", ()):
        return None
    values = dataset.unique(ENCODING_COLUMN)
    if len(values) > 1:
        raise ValueError(f"the dataset's rows were encoded in {len(values)} different ways ({values}); a LenVM "
                         "learns one way of building s_0 from one tokenizer")
    return RolloutEncoding(**json.loads(values[0]))


def gamma_from_records(records: list[dict], *, quantile: float = 0.99) -> float:
    """``gamma = 0.01 ** (1 / L_q)`` from completion lengths (docs/method.md#choosing-gamma).

    Cut completions count at their cut length, a lower bound of their true length, so a data set
    with many cut completions gets a ``gamma`` that is too small; sample with a larger limit.
    """
    if not records:
        raise ValueError("records is empty: cannot derive gamma")
    return gamma_from_lengths(torch.tensor([r["completion_length"] for r in records]), quantile=quantile)


@dataclass
class ValueDataCollator:
    """Pads examples and adds their value targets.

    Returns ``input_ids`` and ``attention_mask`` (B, S), ``targets`` float32 and ``target_mask``
    bool (B, S) from :func:`lenvm_rl.core.monte_carlo_targets`, and ``terminated`` (B,).
    """

    gamma: float
    pad_token_id: int = 0
    padding_side: Literal["right", "left"] = "right"
    censored: CensoredPolicy = "infinite"
    pad_to_multiple_of: int | None = None

    def __post_init__(self):
        _check_censored(self.censored)
        if self.padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {self.padding_side!r}")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_token_ids([f["input_ids"] for f in features], self.pad_token_id,
                                                  padding_side=self.padding_side,
                                                  pad_to_multiple_of=self.pad_to_multiple_of or None)
        terminated = torch.tensor([bool(f["terminated"]) for f in features])
        targets, target_mask = monte_carlo_targets(
            attention_mask,
            torch.tensor([f["prompt_length"] for f in features]),
            torch.tensor([f["completion_length"] for f in features]),
            terminated,
            self.gamma,
            censored=self.censored,
        )
        return {"input_ids": input_ids, "attention_mask": attention_mask, "targets": targets,
                "target_mask": target_mask, "terminated": terminated}
