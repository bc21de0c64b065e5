"""Trunk features of rollout records, cached on disk: the hidden state of every value target state.

A record with ``P = len(prompt_ids)`` prompt tokens and ``L = completion_length`` completion tokens has the
target states ``s_0 .. s_L`` of :func:`~lenvm_rl.core.monte_carlo_targets` (``s_t`` at full-sequence position
``P - 1 + t``: ``s_0`` the last prompt token, ``s_L`` the EOS). A *features* dict holds one row per kept state,
the rows of a record together (``s_0`` first, then ``s_1 .. s_L`` in order), with the tensors of
:data:`FEATURE_KEYS`:

- ``hidden`` ``(N, H)``: the trunk's final hidden state (``LenVM.trunk``), float16 or float32;
- ``targets`` ``(N,)`` float32: the Monte Carlo return ``G_t = -(1 - gamma**(L - t))`` (``censored="infinite"``:
  ``-1`` for a completion cut at ``max_new_tokens``);
- ``is_s0``, ``terminated`` ``(N,)`` bool: the row is ``s_0``; the record ended with EOS;
- ``prompt_index``, ``sample_index``, ``record`` ``(N,)`` long: the record's prompt, sample, and line in its
  rollout file.

:func:`extract_features` writes them resumably, chunk by chunk, under a cache folder whose ``meta.json`` must
match the settings; :func:`load_features` reads one folder back.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from lenvm_rl.core import boundary_weights, monte_carlo_targets

__all__ = ["FEATURE_DTYPES", "FEATURE_KEYS", "boundary_rows", "concat_features", "extract_chunk", "extract_features",
           "load_features", "record_steps", "state_weights", "trunk_tokens"]

FEATURE_KEYS = ("hidden", "targets", "is_s0", "terminated", "prompt_index", "sample_index", "record")
FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32}
"""Storage dtypes of the cached hidden states, by name."""


def _sequence(record: dict, positions: str) -> list[int]:
    """The tokens the trunk runs over: prompt and completion, or the prompt alone for ``boundary``."""
    completion = list(record["completion_ids"]) if positions == "all" else []
    return list(record["prompt_ids"]) + completion


def trunk_tokens(records: list[dict], positions: str) -> int:
    """Tokens the trunk runs over for ``records`` at ``positions``: each distinct sequence once."""
    return sum(len(s) for s in {tuple(_sequence(r, positions)) for r in records})


def _trunk_states(model, sequences: list[tuple[int, ...]], *, batch_size: int, bf16: bool,
                  dtype: torch.dtype) -> list[torch.Tensor]:
    """The trunk's float32 ``(len(s), H)`` hidden states of each token sequence (on the CPU), from a
    :class:`~lenvm_rl.vllm.scoring.VLLMLenVM`'s engine (its ``hidden_states``) or a ``LenVM``'s trunk
    (:func:`_padded_trunk_states`); refuses states beyond the float16 range for ``dtype`` float16."""
    from lenvm_rl.vllm.scoring import VLLMLenVM  # does not import vLLM

    if isinstance(model, VLLMLenVM):
        states = model.hidden_states([list(s) for s in sequences])
    else:
        states = _padded_trunk_states(model, sequences, batch_size=batch_size, bf16=bf16)
    if dtype == torch.float16 and any(s.abs().max() > torch.finfo(torch.float16).max for s in states):
        raise ValueError("hidden states exceed the float16 range; use --feature-dtype float32")
    return states


def _padded_trunk_states(model, sequences: list[tuple[int, ...]], *, batch_size: int,
                         bf16: bool) -> list[torch.Tensor]:
    """``model.trunk``'s float32 ``(len(s), H)`` CPU states of each sequence, longest first in batches of
    ``batch_size`` right-padded sequences, under bf16 autocast with ``bf16``."""
    from lenvm_rl.data.rollouts import pad_token_ids

    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    states: list[torch.Tensor | None] = [None] * len(sequences)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        input_ids, attention_mask = pad_token_ids([sequences[i] for i in batch], 0)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden, _ = model.trunk(input_ids.to(device), attention_mask.to(device))
        hidden = hidden.float().cpu()
        for row, i in enumerate(batch):
            states[i] = hidden[row, :len(sequences[i])]
    return states


@torch.no_grad()
def extract_chunk(model, records: list[dict], record_ids: list[int], *, positions: str, gamma: float,
                  batch_size: int, bf16: bool = False, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Trunk hidden states and value targets at the kept states of ``records``, rows record by record.

    ``positions="all"`` keeps every target state ``s_0 .. s_L`` of ``core.monte_carlo_targets``
    (``censored="infinite"``) in order, ``"boundary"`` only ``s_0`` (and runs the trunk on the prompt alone:
    causal attention makes the last prompt token's state independent of the completion). Each distinct token
    sequence runs once, longest first, ``batch_size`` at a time, under bf16 autocast with ``bf16``; ``hidden`` is
    stored in ``dtype``. ``record_ids`` label the rows (``record``). Returns a features dict (module docstring).
    ``model`` is a ``LenVM`` or a :class:`~lenvm_rl.vllm.scoring.VLLMLenVM`, whose engine runs every distinct
    sequence unpadded in its own dtype (``batch_size`` and ``bf16`` do not apply).
    """
    prompt_lengths = torch.tensor([len(r["prompt_ids"]) for r in records])
    completion_lengths = torch.tensor([r["completion_length"] for r in records])
    terminated = torch.tensor([r["finish_reason"] == "eos" for r in records])
    full_lengths = prompt_lengths + completion_lengths
    full_mask = torch.arange(int(full_lengths.max()))[None, :] < full_lengths[:, None]  # right-padded full sequences
    targets, target_mask = monte_carlo_targets(full_mask, prompt_lengths, completion_lengths, terminated, gamma,
                                               censored="infinite")
    # s_0 is the state boundary_weights weighs differently: weight 0 there, 1 at every other target state.
    is_s0 = target_mask & (boundary_weights(target_mask, 0.0) == 0)
    keep = target_mask if positions == "all" else is_s0

    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(_sequence(r, positions)), len(distinct)) for r in records]
    states = _trunk_states(model, list(distinct), batch_size=batch_size, bf16=bf16, dtype=dtype)

    rows = {key: [] for key in FEATURE_KEYS}
    for b, (record, record_id) in enumerate(zip(records, record_ids)):
        columns = keep[b].nonzero().squeeze(1)  # full-sequence positions of the kept states
        n = len(columns)
        rows["hidden"].append(states[which[b]][columns].to(dtype))
        rows["targets"].append(targets[b, columns])
        rows["is_s0"].append(is_s0[b, columns])
        rows["terminated"].append(terminated[b].repeat(n))
        rows["prompt_index"].append(torch.full((n,), record["prompt_index"], dtype=torch.long))
        rows["sample_index"].append(torch.full((n,), record.get("sample_index", 0), dtype=torch.long))
        rows["record"].append(torch.full((n,), record_id, dtype=torch.long))
    return {key: torch.cat(value).contiguous() for key, value in rows.items()}


def _check_meta(directory: Path, meta: dict) -> None:
    """Write ``directory/meta.json``, or refuse one written for other settings."""
    meta_path = directory / "meta.json"
    if meta_path.is_file():
        found = json.loads(meta_path.read_text())
        if found != meta:
            differ = sorted(k for k in meta.keys() | found.keys() if found.get(k) != meta.get(k))
            raise ValueError(f"{meta_path} was written for other settings ({', '.join(differ)} differ: "
                             f"{ {k: found.get(k) for k in differ} } vs { {k: meta.get(k) for k in differ} }); "
                             "pass another --cache-dir or delete that folder")
    else:
        directory.mkdir(parents=True, exist_ok=True)
        meta_path.write_text(json.dumps(meta, indent=2) + "\n")


def extract_features(load_model, rollout_path, cache_root, *, positions: str, gamma: float, model_name: str,
                     batch_size: int = 8, chunk_records: int = 64, bf16: bool = False,
                     feature_dtype: str = "float16", progress: bool = True) -> Path:
    """Cache the features of one rollout file under ``cache_root/<file name>.<positions>``; resumable.

    Records are sorted by sequence length (longest first) and written ``chunk_records`` at a time as
    ``ranks-<start>-<end>.safetensors`` (:func:`extract_chunk`); a chunk file exists only once complete, so a
    killed run resumes at the first missing chunk. ``meta.json`` (the file's SHA-256, ``model_name``, ``gamma``,
    dtype, chunking) must match the settings or it raises ``ValueError``. Missing chunks only are computed;
    ``load_model()`` (a no-argument callable returning a ``LenVM`` or a ``VLLMLenVM``) is called only if one is
    missing. Returns the folder.
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    from lenvm_rl.data import group_by_prompt, read_rollouts

    if positions not in ("all", "boundary"):
        raise ValueError(f"positions must be 'all' or 'boundary', got {positions!r}")
    rollout_path = Path(rollout_path)
    records = read_rollouts(rollout_path)
    group_by_prompt(records)  # validates every record
    directory = Path(cache_root) / f"{rollout_path.name}.{positions}"
    meta = {"rollouts": rollout_path.name, "sha256": hashlib.sha256(rollout_path.read_bytes()).hexdigest(),
            "model": str(model_name), "gamma": float(gamma), "positions": positions, "censored": "infinite",
            "feature_dtype": feature_dtype, "bf16": bool(bf16), "chunk_records": int(chunk_records),
            "num_records": len(records)}
    _check_meta(directory, meta)

    order = sorted(range(len(records)), key=lambda i: (-len(_sequence(records[i], positions)), i))
    chunks = [order[start:start + chunk_records] for start in range(0, len(order), chunk_records)]
    paths = [directory / f"ranks-{k * chunk_records:06d}-{k * chunk_records + len(c):06d}.safetensors"
             for k, c in enumerate(chunks)]
    tokens = [trunk_tokens([records[i] for i in c], positions) for c in chunks]
    todo = [k for k, path in enumerate(paths) if not path.is_file()]
    if not todo:
        return directory
    model = load_model()
    bar = tqdm(total=sum(tokens), initial=sum(tokens) - sum(tokens[k] for k in todo), unit="tok", unit_scale=True,
               desc=f"features {rollout_path.name} ({positions}, {len(todo)}/{len(chunks)} chunks to do)",
               disable=not progress, mininterval=1 if sys.stderr.isatty() else 30)
    for k in todo:
        chunk = chunks[k]
        tensors = extract_chunk(model, [records[i] for i in chunk], chunk, positions=positions, gamma=gamma,
                                batch_size=batch_size, bf16=bf16, dtype=FEATURE_DTYPES[feature_dtype])
        partial = paths[k].with_suffix(".tmp")
        save_file(tensors, partial, metadata={key: str(value) for key, value in meta.items()})
        os.replace(partial, paths[k])  # a chunk file exists only once complete
        bar.update(tokens[k])
    bar.close()
    return directory


def load_features(directory) -> dict[str, torch.Tensor]:
    """All chunks of one cached rollout file, concatenated in rank order; refuses an incomplete cache."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / "meta.json").read_text())
    step, total = meta["chunk_records"], meta["num_records"]
    names = [f"ranks-{start:06d}-{min(start + step, total):06d}.safetensors" for start in range(0, total, step)]
    missing = [name for name in names if not (directory / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory}: {len(missing)} of {len(names)} chunks missing (first {missing[0]}); "
                                "run the extraction again to resume it")
    return concat_features([load_file(directory / name) for name in names])


def concat_features(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Features dicts concatenated row-wise, in order (the rows of a record stay together)."""
    return {key: torch.cat([part[key] for part in parts]) for key in FEATURE_KEYS}


def record_steps(features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cached row: the index of its record's block of rows (0, 1, ... in cache order) and its state ``t``.

    ``extract_chunk`` writes the rows of a record together, ``s_0`` first and then ``s_1 .. s_L`` in order (one row
    with ``positions="boundary"``), so a block starts at each ``is_s0`` row, also in concatenated caches.
    Returns two ``(N,)`` long tensors.
    """
    is_s0 = features["is_s0"]
    if len(is_s0) and not bool(is_s0[0]):
        raise ValueError("cached rows do not start at an s_0 row: not the layout of extract_chunk")
    block = is_s0.long().cumsum(0) - 1
    return block, torch.arange(len(is_s0)) - is_s0.nonzero().squeeze(1)[block]


def state_weights(is_s0: torch.Tensor, boundary_weight: float) -> torch.Tensor:
    """Loss weight of each cached state ``(N,)``: ``boundary_weight`` at ``s_0``, 1 elsewhere (float32).

    On the cached states of whole trajectories this is ``core.boundary_weights(target_mask, w)[target_mask]``.
    """
    return torch.where(is_s0, float(boundary_weight), 1.0)


def boundary_rows(features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ``s_0`` row per prompt, in ascending ``prompt_index`` (the order of ``group_by_prompt``).

    Returns ``(prompt_index, row, mean_target)``, each ``(prompts,)``: ``row`` indexes ``features`` at the ``s_0``
    of the prompt's lowest ``sample_index`` (the state ``evaluate_lenvm`` reads), ``mean_target`` is the mean
    ``s_0`` target over the prompt's samples (float32).
    """
    s0 = features["is_s0"].nonzero().squeeze(1)
    prompt, sample = features["prompt_index"][s0], features["sample_index"][s0]
    order = torch.argsort(prompt * (int(sample.max()) + 1) + sample)
    first = torch.ones(len(order), dtype=torch.bool)
    first[1:] = prompt[order][1:] != prompt[order][:-1]
    prompts, inverse, counts = torch.unique(prompt, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(prompts)).index_add_(0, inverse, features["targets"][s0].float())
    return prompts, s0[order[first]], sums / counts
