"""Value pretraining on real rollouts: batching throughput, then MRE against the constant baseline.

    # rollouts first (hours on 2 CPU cores; resumable):
    lenvm-rl rollout --model smollm2-135m --prompts ../shared/data/gsm8k/train.jsonl --prompt-column question \
        --limit 200 -n 8 --temperature 0.7 --max-new-tokens 512 --output rollouts/train.jsonl
    lenvm-rl rollout --model smollm2-135m --prompts ../shared/data/gsm8k/test.jsonl --prompt-column question \
        --limit 50 -n 16 --temperature 0.7 --max-new-tokens 512 --output rollouts/eval.jsonl
    python bench/bench_pretrain.py throughput --train-rollouts rollouts/train.jsonl
    python bench/bench_pretrain.py pretrain --train-rollouts rollouts/train.jsonl --eval-rollouts rollouts/eval.jsonl

``throughput`` trains the same LenVM (SmolLM2-135M-Instruct, full fine-tune, fp32; the trainer's
loss, a plain AdamW step) for a few steps on the trainer's length-grouped batches and on plain
random padded batches, alternating rounds in one process, and prints real (non-padding) training
tokens/s, the ratio, and each sampler's padding fraction over a whole epoch. ``pretrain`` trains
on all training rollouts and prints the held-out report (value MSE, prompt MRE, positionwise RE) of
the LenVM beside the constant baseline.

``variants`` explores head-only fits on a *frozen* backbone cheaply: the trunk runs once over every
rollout and its final hidden states are cached; each variant is then a fresh ``ValueHead`` (an MLP)
trained on those fixed features, and evaluated on the cached held-out prompt boundaries::

    TRAIN="bench/rollouts/gsm8k_train200_n8_t0.7.rows0-139.jsonl \
        bench/rollouts/gsm8k_train200_n8_t0.7.rows140-199.jsonl"
    EVAL="bench/rollouts/gsm8k_test50_n16_t0.7.jsonl bench/rollouts/gsm8k_test50-199_n8_t0.7.vllm.jsonl"
    # 1. features (resumable; re-run the same command after a kill): every state of the training
    #    completions, only the prompt boundary s_0 of the held-out ones
    OMP_NUM_THREADS=1 python bench/bench_pretrain.py variants --train-rollouts $TRAIN --eval-rollouts $EVAL \
        --positions all --eval-positions boundary --bf16 --extract-only
    # 2. the variant grid on the cached features (the extraction is skipped when it is complete; the
    #    file lists, --positions, --eval-positions and --bf16 must be those of step 1)
    python bench/bench_pretrain.py variants --train-rollouts $TRAIN --eval-rollouts $EVAL \
        --positions all --eval-positions boundary --bf16 --boundary-weights 1 10 100 --learning-rates 1e-3 3e-4 \
        --epochs 1 3 --s0-learning-rates 1e-3 3e-4 1e-4 3e-5 --s0-epochs 3 10 30 100 300 \
        --output bench/results/variants-gsm8k.json

Features. For every record the trunk (``LenVM.trunk``, no grad, float32 or ``--bf16`` autocast) runs
over ``prompt_ids + completion_ids`` and keeps the hidden state of each target state ``s_0 .. s_L``
(last prompt token through the completion's last token, the layout of ``core.monte_carlo_targets``),
with its target (``censored="infinite"``, the pretraining default; ``gamma = 0.01 ** (1 / L99)`` of
the training records) and a flag for ``s_0``. ``--positions boundary`` keeps ``s_0`` only and runs
the trunk on the prompt alone, once per distinct prompt (causal attention: the last prompt token's
state does not depend on the completion; equal up to float noise from padding). Records are sorted by
sequence length (longest first) and batched ``--batch-size`` at a time; chunks of ``--chunk-records``
records of that order are written as ``ranks-<start>-<end>.safetensors`` (tensors ``hidden``,
``targets``, ``is_s0``, ``terminated``, ``prompt_index``, ``sample_index``, ``record`` = line in the
rollout file), so a killed run resumes at the first missing chunk. The cache is
``--cache-dir`` (default ``bench/results/features/<model>-<hash of the rollout file names>/``), one
folder per rollout file and positions mode, whose ``meta.json`` (file SHA-256, model, gamma, dtype...)
must match or the run stops. Hidden states are stored in float16 by default (``--feature-dtype``):
half the disk (about 0.45 GB for the 1,600 training completions), a relative rounding of ~1e-3 that
training and evaluation both see (none at all for ``--bf16`` states, whose 8-bit mantissa float16
holds exactly; a state beyond the float16 range stops the run). On this project's loaded 2-core
machine, one thread ran the SmolLM2-135M trunk at about 250 tokens/s with ``--bf16`` and 2.4x slower
in float32: about 35 min for the 532k tokens of the training set.

Variants. A fresh ``ValueHead(hidden_size)`` (seeded by ``--seed``) is trained with AdamW at a
constant learning rate (so the head after epoch ``e`` of a longer run is exactly the head of an
``e``-epoch run: each ``--epochs`` list is one run, evaluated after each listed epoch) on
``core.value_regression_loss`` with per-position weights ``--boundary-weights`` at ``s_0`` and 1
elsewhere (``core.boundary_weights`` on the trajectory layout), normalised by the weight sum of each
minibatch. Minibatches of ``--head-batch-size`` positions are drawn from all positions shuffled
together, across prompts and completions (the paper shuffles trajectories across prompts; with a
fixed trunk, shuffling positions only decorrelates the minibatches further). The ``s_0 only`` variant
trains on one row per training prompt, its ``s_0`` state with target the mean over its samples of
``G_0 = -(1 - gamma**L)`` (in squared error the same fit as one row per sample with its own target),
and the ridge probe is the closed-form linear fit of that target on standardised ``s_0`` states. Every
variant is evaluated on the held-out prompts (prompt MRE ± SE over prompts, as ``evaluate_lenvm``:
``V(s_0)`` of a prompt from its lowest ``sample_index``; value MSE over all held-out states when those
were cached with ``--eval-positions all``), beside the constant baseline, the prompt-length regression,
the split-half MRE and the noise floor, per held-out file and on all of them. All variants are chosen
on the held-out set: read the best row as optimistic.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch


def padding_fraction(trainer) -> float:
    real = total = 0
    for batch in trainer.get_train_dataloader():
        real += int(batch["attention_mask"].sum())
        total += batch["attention_mask"].numel()
    return 1 - real / total


def throughput(args) -> None:
    from transformers import AutoTokenizer

    from lenvm_rl.data import build_value_dataset, gamma_from_records, read_rollouts
    from lenvm_rl.modeling import LenVM, resolve_model_path
    from lenvm_rl.trainers import LenVMConfig, LenVMTrainer

    records = read_rollouts(args.train_rollouts)
    dataset = build_value_dataset(records)
    gamma = gamma_from_records(records)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model))
    model = LenVM.from_backbone(args.model, gamma=gamma)
    trainers = {}
    for strategy in ("group_by_length", "random"):
        config = LenVMConfig(output_dir=f"/tmp/bench-{strategy}", use_cpu=True, max_steps=args.steps,
                             per_device_train_batch_size=args.batch_size, train_sampling_strategy=strategy,
                             save_strategy="no", report_to="none", disable_tqdm=True, seed=0, logging_steps=10**6)
        trainers[strategy] = LenVMTrainer(model, config, train_dataset=dataset, processing_class=tokenizer)
    pads = {name: padding_fraction(t) for name, t in trainers.items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    rates = {name: [] for name in trainers}
    model.train()
    for round_index in range(args.repeats):
        for name, trainer in trainers.items():
            loader = iter(trainer.get_train_dataloader())
            for _ in range(round_index * args.steps):  # each round trains on the next batches
                next(loader)
            batches = [next(loader) for _ in range(args.steps)]
            start = time.perf_counter()
            for batch in batches:  # the trainer's own loss; a plain AdamW step
                trainer.compute_loss(model, batch).backward()
                optimizer.step()
                optimizer.zero_grad()
            rates[name].append(sum(int(b["attention_mask"].sum()) for b in batches) / (time.perf_counter() - start))
    print(f"model={args.model} records={len(records)} batch_size={args.batch_size} steps/round={args.steps} "
          f"rounds={args.repeats} threads={torch.get_num_threads()}")
    print(f"{'batching':<18} {'real tokens/s':>14} {'ratio':>7} {'padding':>8}")
    base = statistics.median(rates["random"])
    for name in trainers:
        rate = statistics.median(rates[name])
        print(f"{name:<18} {rate:>14.1f} {rate / base:>6.2f}x {pads[name]:>8.1%}")


def pretrain(args) -> None:
    from transformers.trainer_utils import get_last_checkpoint
    from trl import ModelConfig

    from lenvm_rl.scripts.pretrain import PretrainScriptArguments, main
    from lenvm_rl.trainers import LenVMConfig

    # Resumable: a checkpoint every --save-steps; re-running the same command continues from the last.
    resume = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
    if args.epochs is not None and len(args.epochs) != 1:
        raise SystemExit(f"pretrain takes one --epochs value, got {args.epochs}")
    epochs = args.epochs[0] if args.epochs else 2.0
    config = LenVMConfig(output_dir=args.output_dir, use_cpu=True, num_train_epochs=epochs,
                         learning_rate=args.learning_rate, per_device_train_batch_size=args.batch_size,
                         per_device_eval_batch_size=args.batch_size, save_strategy="steps", save_steps=args.save_steps,
                         save_total_limit=1, resume_from_checkpoint=resume, logging_steps=10, report_to="none",
                         seed=0, freeze_backbone=args.freeze_backbone, bf16=args.bf16)
    script = PretrainScriptArguments(train_rollouts=args.train_rollouts, eval_rollouts=args.eval_rollouts)
    start = time.perf_counter()
    main(script, config, ModelConfig(model_name_or_path=args.model))
    run = f"resumed from {resume}" if resume else "fresh"
    print(f"train + evaluation: {time.perf_counter() - start:.0f} s ({run}; {torch.get_num_threads()} threads, "
          f"bf16={args.bf16}, freeze_backbone={args.freeze_backbone})")


# ------------------------------------------------------------------- variants: head-only fits on cached trunk states

FEATURE_KEYS = ("hidden", "targets", "is_s0", "terminated", "prompt_index", "sample_index", "record")
FEATURE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def feature_cache_root(model: str, rollout_paths) -> Path:
    """The default cache: ``bench/results/features/<model>-<hash of the rollout file names>``."""
    names = "\n".join(sorted(Path(p).name for p in rollout_paths))
    return Path("bench/results/features") / f"{Path(str(model)).name}-{hashlib.sha256(names.encode()).hexdigest()[:10]}"


def _sequence(record: dict, positions: str) -> list[int]:
    """The tokens the trunk runs over: prompt and completion, or the prompt alone for ``boundary``."""
    completion = list(record["completion_ids"]) if positions == "all" else []
    return list(record["prompt_ids"]) + completion


def _chunk_tokens(records: list[dict], positions: str) -> int:
    """Tokens the trunk runs over for one chunk: each distinct sequence once."""
    return sum(len(s) for s in {tuple(_sequence(r, positions)) for r in records})


@torch.no_grad()
def extract_chunk(model, records: list[dict], record_ids: list[int], *, positions: str, gamma: float,
                  batch_size: int, bf16: bool = False, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Trunk hidden states and value targets at the kept states of ``records``, rows record by record.

    ``positions="all"`` keeps every target state ``s_0 .. s_L`` of ``core.monte_carlo_targets``
    (``censored="infinite"``) in order, ``"boundary"`` only ``s_0``. Each distinct token sequence runs
    once, longest first, ``batch_size`` at a time. ``record_ids`` label the rows (``record``).
    """
    from lenvm_rl.core import boundary_weights, monte_carlo_targets

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
    sequences = list(distinct)
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    states: list[torch.Tensor | None] = [None] * len(sequences)
    device = next(model.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        input_ids = torch.zeros(len(batch), len(sequences[batch[0]]), dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for row, i in enumerate(batch):
            input_ids[row, :len(sequences[i])] = torch.tensor(sequences[i])
            attention_mask[row, :len(sequences[i])] = 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden, _ = model.trunk(input_ids.to(device), attention_mask.to(device))
        hidden = hidden.float().cpu()
        if dtype == torch.float16 and hidden.abs().max() > torch.finfo(torch.float16).max:
            raise ValueError("hidden states exceed the float16 range; use --feature-dtype float32")
        for row, i in enumerate(batch):
            states[i] = hidden[row, :len(sequences[i])]

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


def extract_features(load_model, rollout_path, cache_root, *, positions: str, gamma: float, model_name: str,
                     batch_size: int = 8, chunk_records: int = 64, bf16: bool = False,
                     feature_dtype: str = "float16", progress: bool = True) -> Path:
    """Cache the features of one rollout file under ``cache_root/<file name>.<positions>``; resumable.

    Missing chunks only are computed; ``load_model()`` (a no-argument callable returning a ``LenVM``)
    is called only if one is missing. Returns the folder.
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

    order = sorted(range(len(records)), key=lambda i: (-len(_sequence(records[i], positions)), i))
    chunks = [order[start:start + chunk_records] for start in range(0, len(order), chunk_records)]
    paths = [directory / f"ranks-{k * chunk_records:06d}-{k * chunk_records + len(c):06d}.safetensors"
             for k, c in enumerate(chunks)]
    tokens = [_chunk_tokens([records[i] for i in c], positions) for c in chunks]
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
    chunks = [load_file(directory / name) for name in names]
    return {key: torch.cat([chunk[key] for chunk in chunks]) for key in FEATURE_KEYS}


def _concat_features(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {key: torch.cat([part[key] for part in parts]) for key in FEATURE_KEYS}


def boundary_rows(features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One ``s_0`` row per prompt, in ascending ``prompt_index`` (the order of ``group_by_prompt``).

    Returns ``(prompt_index, row, mean_target)``: ``row`` indexes ``features`` at the ``s_0`` of the
    prompt's lowest ``sample_index`` (the state ``evaluate_lenvm`` reads), ``mean_target`` is the mean
    ``s_0`` target over the prompt's samples.
    """
    s0 = features["is_s0"].nonzero().squeeze(1)
    prompt, sample = features["prompt_index"][s0], features["sample_index"][s0]
    order = torch.argsort(prompt * (int(sample.max()) + 1) + sample)
    first = torch.ones(len(order), dtype=torch.bool)
    first[1:] = prompt[order][1:] != prompt[order][:-1]
    prompts, inverse, counts = torch.unique(prompt, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(prompts)).index_add_(0, inverse, features["targets"][s0].float())
    return prompts, s0[order[first]], sums / counts


@torch.no_grad()
def head_values(head, hidden: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """``V = -sigmoid(z)`` of a ``ValueHead`` on (N, H) states, as ``LenVM.head``; float32 (N,)."""
    return torch.cat([-torch.sigmoid(head(part)) for part in hidden.split(batch_size)]) if len(hidden) else \
        torch.zeros(0)


def fit_value_head(hidden: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor, *, learning_rate: float,
                   epochs: list[int], batch_size: int, seed: int = 0, weight_decay: float = 0.0, evaluate=None):
    """A fresh ``ValueHead`` fitted on fixed states with AdamW at a constant learning rate.

    Each step draws ``batch_size`` positions of a fresh random permutation per epoch and minimises
    ``core.value_regression_loss`` with per-position ``weights`` (``sum w (V - G)**2 / sum w`` over the
    minibatch). After each epoch in ``epochs`` the head (eval mode) goes to ``evaluate(head)``. Returns
    ``[(epoch, mean training loss of that epoch, evaluate(head) or None, seconds so far), ...]``.
    """
    from lenvm_rl.core import value_regression_loss
    from lenvm_rl.modeling import ValueHead

    torch.manual_seed(seed)
    head = ValueHead(hidden.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    targets, weights = targets.float(), weights.float()
    results, start = [], time.perf_counter()
    for epoch in range(1, max(epochs) + 1):
        head.train()
        losses = []
        for index in torch.randperm(len(targets), generator=generator).split(batch_size):
            values = -torch.sigmoid(head(hidden[index]))
            every = torch.ones(1, len(index), dtype=torch.bool)
            loss = value_regression_loss(values[None], targets[index][None], every, weights=weights[index][None])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        if epoch in epochs:
            head.eval()
            results.append((epoch, statistics.fmean(losses), evaluate(head) if evaluate else None,
                            time.perf_counter() - start))
    return results


def fit_ridge(hidden: torch.Tensor, targets: torch.Tensor, alpha: float):
    """Closed-form ridge regression of ``targets`` on standardised ``hidden`` (unpenalised intercept), float64.

    Returns ``predict(hidden) -> values`` clamped into the range of the training targets: a linear probe
    is unbounded, and a value at or below -1 would predict an infinite length.
    """
    x = hidden.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    y = targets.double() - targets.double().mean()
    coef = torch.linalg.solve(z.T @ z + alpha * torch.eye(z.shape[1], dtype=torch.float64), z.T @ y)
    intercept = targets.double().mean()
    low, high = targets.min().item(), targets.max().item()

    def predict(states: torch.Tensor) -> torch.Tensor:
        return (((states.double() - mean) / std) @ coef + intercept).clamp(low, high).float()

    return predict


class HeldOut:
    """One held-out set: its records, and its cached states for evaluating value predictors."""

    def __init__(self, name: str, records: list[dict], features: dict[str, torch.Tensor], all_positions: bool,
                 gamma: float):
        from lenvm_rl.data import group_by_prompt

        self.name, self.records, self.gamma = name, records, gamma
        self.groups = group_by_prompt(records)
        prompts, rows, _ = boundary_rows(features)
        if prompts.tolist() != list(self.groups):
            raise ValueError(f"{name}: the cached prompts differ from those of the rollout records; delete the cache")
        self.s0_hidden = features["hidden"][rows]
        self.all_positions = all_positions
        if all_positions:  # value MSE over the states of EOS-terminated completions, as evaluate_lenvm
            ended = features["terminated"]
            self.hidden, self.targets = features["hidden"][ended], features["targets"][ended]

    def evaluate_values(self, s0_values: torch.Tensor, all_values: torch.Tensor | None = None) -> dict:
        """Prompt MRE ± SE from ``V(s_0)`` per prompt, and value MSE from values at every cached state.

        ``num_infinite`` counts prompts predicted at ``V(s_0) = -1`` (a saturated head): an infinite length,
        so an infinite MRE.
        """
        from lenvm_rl.core import value_regression_loss, value_to_length
        from lenvm_rl.evaluation import _prompt_mre

        lengths = value_to_length(s0_values, self.gamma)
        mre, se = _prompt_mre(lengths, self.groups, self.gamma)
        mse = math.nan
        if all_values is not None and len(self.targets):
            mse = value_regression_loss(all_values[None], self.targets[None].float(),
                                        torch.ones(1, len(self.targets), dtype=torch.bool)).item()
        return {"prompt_mre": mre, "prompt_mre_se": se, "value_mse": mse,
                "num_infinite": int(torch.isinf(lengths).sum())}

    def evaluate_head(self, head) -> dict:
        return self.evaluate_values(head_values(head, self.s0_hidden),
                                    head_values(head, self.hidden) if self.all_positions else None)


def _baselines(train_records: list[dict], held_out: HeldOut, gamma: float) -> dict[str, dict]:
    from lenvm_rl.evaluation import (
        constant_baseline_value,
        evaluate_constant,
        evaluate_prompt_length_baseline,
        noise_floor,
        prompt_length_baseline,
        split_half_mre,
    )

    constant = evaluate_constant(constant_baseline_value(train_records, gamma), held_out.records, gamma)
    regression = evaluate_prompt_length_baseline(prompt_length_baseline(train_records, gamma), held_out.records)
    rows = {name: {"prompt_mre": row.prompt_mre, "prompt_mre_se": row.prompt_mre_se, "value_mse": row.value_mse}
            for name, row in (("constant baseline", constant), ("prompt-length regression", regression))}
    for name, (mre, se) in (("split-half (K/2 vs K/2)", split_half_mre(held_out.records, gamma)),
                            ("noise floor (oracle vs K samples)", noise_floor(held_out.records, gamma))):
        rows[name] = {"prompt_mre": mre, "prompt_mre_se": se, "value_mse": math.nan}
    return rows


def format_variants_table(rows: list[dict], sets: list[HeldOut]) -> str:
    """Markdown: one row per variant or reference, prompt MRE ± SE per held-out set, value MSE on the last set."""
    def mre(cell):
        if math.isinf(cell["prompt_mre"]):
            return f"∞ ({cell.get('num_infinite', '?')} prompts at V = -1)"
        return f"{cell['prompt_mre']:.1%} ± {cell['prompt_mre_se']:.1%}".replace("%", " %")

    def mse(cell):
        return "—" if math.isnan(cell["value_mse"]) else f"{cell['value_mse']:.4f}"

    titles = [f"prompt MRE ± SE, {s.name} ({len(s.groups)} prompts)" for s in sets]
    lines = ["| variant | " + " | ".join(titles) + f" | value MSE, {sets[-1].name} | train loss |",
             "|---|" + "---:|" * (len(sets) + 2)]
    for row in rows:
        loss = "" if row.get("train_loss") is None else f"{row['train_loss']:.4f}"
        cells = [mre(row["eval"][s.name]) for s in sets] + [mse(row["eval"][sets[-1].name]), loss]
        lines.append(f"| {row['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_lenvm(model_name: str, gamma: float, device: str):
    from lenvm_rl.modeling import LenVM

    return LenVM.from_backbone(model_name, gamma=gamma, device=device).eval()


def variants(args) -> None:
    from lenvm_rl.data import gamma_from_records, read_rollouts

    if args.epochs is not None and any(e != int(e) or e < 1 for e in args.epochs):
        raise SystemExit(f"variants takes whole --epochs >= 1, got {args.epochs}")
    epochs = sorted({int(e) for e in args.epochs}) if args.epochs else [1, 3]
    eval_paths = args.eval_rollouts or []
    train_records = read_rollouts(args.train_rollouts)
    gamma = gamma_from_records(train_records)
    root = Path(args.cache_dir) if args.cache_dir else feature_cache_root(args.model, args.train_rollouts + eval_paths)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    load_model = functools.cache(lambda: _load_lenvm(args.model, gamma, device))
    settings = dict(gamma=gamma, model_name=args.model, batch_size=args.batch_size, chunk_records=args.chunk_records,
                    bf16=args.bf16, feature_dtype=args.feature_dtype)
    start = time.perf_counter()
    train_dirs = [extract_features(load_model, p, root, positions=args.positions, **settings)
                  for p in args.train_rollouts]
    eval_dirs = [extract_features(load_model, p, root, positions=args.eval_positions, **settings) for p in eval_paths]
    print(f"features under {root} (gamma={gamma:.6f}, {time.perf_counter() - start:.0f} s; "
          f"{torch.get_num_threads()} threads)", flush=True)
    if args.extract_only:
        return
    if not eval_paths:
        raise SystemExit("variants needs --eval-rollouts to evaluate the variants (or pass --extract-only)")

    train = _concat_features([load_features(d) for d in train_dirs])
    eval_parts = [load_features(d) for d in eval_dirs]
    all_positions = args.eval_positions == "all"
    sets = [HeldOut(Path(p).name, read_rollouts(p), part, all_positions, gamma)
            for p, part in zip(eval_paths, eval_parts)]
    if len(sets) > 1:
        sets.append(HeldOut("all held-out", read_rollouts(eval_paths), _concat_features(eval_parts), all_positions,
                            gamma))

    def evaluate(head):
        return {s.name: s.evaluate_head(head) for s in sets}

    rows = []

    def report(name, kind, params, epoch, loss, result, seconds):
        rows.append({"name": name, "kind": kind, **params, "epochs": epoch, "train_loss": loss, "eval": result,
                     "train_seconds": seconds})
        cells = ", ".join(f"{n}: {r['prompt_mre']:.1%} ± {r['prompt_mre_se']:.1%}" for n, r in result.items())
        print(f"{name}: train loss {loss:.4f}, {cells} ({seconds:.0f} s)", flush=True)

    hidden, targets, is_s0 = train["hidden"], train["targets"], train["is_s0"]
    print(f"training states: {len(targets)} ({int(is_s0.sum())} s_0); held-out prompts: "
          + ", ".join(f"{s.name} {len(s.groups)}" for s in sets), flush=True)
    for boundary_weight in args.boundary_weights:
        # = core.boundary_weights(target_mask, w)[target_mask]: w at s_0, 1 at every other state
        weights = torch.where(is_s0, float(boundary_weight), 1.0)
        for lr in args.learning_rates:
            for epoch, loss, result, seconds in fit_value_head(
                    hidden, targets, weights, learning_rate=lr, epochs=epochs, batch_size=args.head_batch_size,
                    seed=args.seed, weight_decay=args.weight_decay, evaluate=evaluate):
                report(f"head, {args.positions} states, s_0 weight {boundary_weight:g}, lr {lr:g}, {epoch} ep",
                       "head", {"boundary_weight": boundary_weight, "learning_rate": lr}, epoch, loss, result, seconds)

    _, s0_rows, s0_targets = boundary_rows(train)
    s0_hidden = hidden[s0_rows]
    for lr in args.s0_learning_rates or args.learning_rates:
        for epoch, loss, result, seconds in fit_value_head(
                s0_hidden, s0_targets, torch.ones(len(s0_targets)), learning_rate=lr,
                epochs=sorted(set(args.s0_epochs)), batch_size=args.s0_batch_size, seed=args.seed,
                weight_decay=args.weight_decay, evaluate=evaluate):
            report(f"head, s_0 only, prompt-mean target, lr {lr:g}, {epoch} ep", "s0_head", {"learning_rate": lr},
                   epoch, loss, result, seconds)
    for alpha in args.ridge_alphas:
        predict = fit_ridge(s0_hidden, s0_targets, alpha)
        result = {s.name: s.evaluate_values(predict(s.s0_hidden), predict(s.hidden) if s.all_positions else None)
                  for s in sets}
        loss = torch.mean((predict(s0_hidden) - s0_targets) ** 2).item()
        report(f"ridge probe on s_0, prompt-mean target, alpha {alpha:g}", "ridge", {"alpha": alpha}, None, loss,
               result, 0.0)

    baselines = {s.name: _baselines(train_records, s, gamma) for s in sets}
    references = [{"name": name, "kind": "reference", "eval": {s.name: baselines[s.name][name] for s in sets}}
                  for name in baselines[sets[0].name]]
    print()
    print(f"gamma = {gamma:.6f}; train: {len(train_records)} completions, "
          f"{len(set(r['prompt_index'] for r in train_records))} prompts; features: {root}")
    print(format_variants_table(rows + references, sets))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "command": " ".join(sys.argv), "gamma": gamma, "train_rollouts": args.train_rollouts,
        "eval_rollouts": eval_paths, "cache_dir": str(root), "positions": args.positions,
        "eval_positions": args.eval_positions, "feature_dtype": args.feature_dtype, "bf16": args.bf16,
        "head_batch_size": args.head_batch_size, "s0_batch_size": args.s0_batch_size,
        "weight_decay": args.weight_decay, "seed": args.seed,
        "held_out": {s.name: {"prompts": len(s.groups), "completions": len(s.records)} for s in sets},
        "variants": rows, "references": references,
    }, indent=2, default=float) + "\n")
    print(f"wrote {output}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["throughput", "pretrain", "variants"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--train-rollouts", required=True, nargs="+", help="rollout file(s); shards are merged")
    parser.add_argument("--eval-rollouts", nargs="+", help="held-out rollout file(s) (pretrain, variants)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per trunk batch (all parts)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per round (throughput)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds (throughput)")
    parser.add_argument("--epochs", type=float, nargs="+",
                        help="pretrain: one value (default 2, the reference); variants: the list of whole epochs "
                             "after which each head is evaluated (default 1 3)")
    parser.add_argument("--learning-rate", type=float, default=2e-5, help="(pretrain; reference: 2e-5)")
    parser.add_argument("--output-dir", default="bench/results/lenvm-gsm8k", help="(pretrain)")
    parser.add_argument("--bf16", action="store_true",
                        help="(pretrain, variants) bf16 autocast of the backbone; the head stays fp32")
    parser.add_argument("--save-steps", type=int, default=50, help="(pretrain) checkpoint interval, for resuming")
    parser.add_argument("--freeze-backbone", action="store_true",
                        help="(pretrain) train the value head only: hours faster on a CPU than a full fine-tune")
    variant = parser.add_argument_group("variants: head-only fits on cached trunk states")
    variant.add_argument("--cache-dir", help="feature cache (default bench/results/features/<model>-<hash of the "
                                             "rollout file names>)")
    variant.add_argument("--positions", choices=["all", "boundary"], default="all",
                         help="states cached from the training rollouts: every s_0..s_L, or s_0 only")
    variant.add_argument("--eval-positions", choices=["all", "boundary"], default="boundary",
                         help="states cached from the held-out rollouts (all: value MSE too)")
    variant.add_argument("--chunk-records", type=int, default=64, help="records per cache chunk (resume unit)")
    variant.add_argument("--feature-dtype", choices=list(FEATURE_DTYPES), default="float16",
                         help="storage dtype of the cached hidden states")
    variant.add_argument("--device", help="trunk device (default cuda if available, else cpu)")
    variant.add_argument("--extract-only", action="store_true", help="cache the features and stop")
    variant.add_argument("--boundary-weights", type=float, nargs="+", default=[1.0, 10.0, 100.0],
                         help="loss weight of s_0 (1 = the plain token mean)")
    variant.add_argument("--learning-rates", type=float, nargs="+", default=[1e-3, 3e-4], help="AdamW, constant")
    variant.add_argument("--head-batch-size", type=int, default=1024, help="positions per step")
    variant.add_argument("--s0-epochs", type=int, nargs="+", default=[10, 30, 100, 300],
                         help="epochs of the s_0-only head (one row per training prompt)")
    variant.add_argument("--s0-learning-rates", type=float, nargs="+",
                         help="AdamW learning rates of the s_0-only head (default: --learning-rates)")
    variant.add_argument("--s0-batch-size", type=int, default=16, help="prompts per step of the s_0-only head")
    variant.add_argument("--ridge-alphas", type=float, nargs="*", default=[10.0, 100.0, 1000.0],
                         help="ridge penalties of the linear probe on standardised s_0 states (none: skip)")
    variant.add_argument("--weight-decay", type=float, default=0.0, help="AdamW weight decay (LenVMConfig's: 0)")
    variant.add_argument("--seed", type=int, default=0, help="head initialisation and shuffling")
    variant.add_argument("--output", default="bench/results/variants-gsm8k.json", help="JSON of the variant table")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    {"throughput": throughput, "pretrain": pretrain, "variants": variants}[arguments.part](arguments)
