"""Value pretraining on real rollouts: batching throughput, then MRE against the constant baseline.

    # rollouts first (hours on 2 CPU cores; resumable):
    lenvm-rl rollout --model smollm2-135m --prompts ../shared/data/gsm8k/train.jsonl --prompt_column question \
        --prompt_format chat --limit 200 -n 8 --temperature 0.7 --max_new_tokens 512 --output rollouts/train.jsonl
    lenvm-rl rollout --model smollm2-135m --prompts ../shared/data/gsm8k/test.jsonl --prompt_column question \
        --prompt_format chat --limit 50 -n 16 --temperature 0.7 --max_new_tokens 512 --output rollouts/eval.jsonl
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

``curve`` is the learning curve of issue 9 (item 3): fixed head recipes, fitted on boundary features
(``s_0`` only, cheap: the trunk runs on each distinct prompt once) of growing training subsets, and
evaluated on the same held-out prompts::

    R=bench/rollouts
    TRAIN="$R/gsm8k_train200_n8_t0.7.rows0-139.jsonl $R/gsm8k_train200_n8_t0.7.rows140-199.jsonl \
        $R/gsm8k_train200-799_n2_t0.7.vllm.jsonl $R/gsm8k_train800-1599_n1_t0.7.vllm.jsonl \
        $R/gsm8k_train1600-3199_n1_t0.7.vllm.jsonl"
    EVAL="$R/gsm8k_test50_n16_t0.7.jsonl $R/gsm8k_test50-199_n8_t0.7.vllm.jsonl"
    # features (resumable; about 20 min for the 3,400 distinct prompts on one loaded core), then the table
    OMP_NUM_THREADS=1 python bench/bench_pretrain.py curve --train-rollouts $TRAIN --eval-rollouts $EVAL --bf16 \
        --cache-dir bench/results/features/smollm2-135m-curve --extract-only
    OMP_NUM_THREADS=1 python bench/bench_pretrain.py curve --train-rollouts $TRAIN --eval-rollouts $EVAL --bf16 \
        --cache-dir bench/results/features/smollm2-135m-curve --rows 200x8 800x2 1600x1 200x1 400x1 800x1 3200x1 \
        --output bench/results/curve-gsm8k.json --plot docs/learning_curve_gsm8k.png

A row ``PxK`` takes samples ``0 .. K-1`` of the questions ``prompt_index 0 .. P-1`` (``curve_mask``; it stops if
any is missing, e.g. a file still being sampled), so 200x8, 800x2 and 1600x1 hold 1,600 completions each and
a ``Px1`` row contains the smaller ones. One ``gamma`` for all rows (of all the training rollouts; each row's
own is in the JSON). ``--gamma`` fixes it instead, so that a file sampled later joins without re-extracting the
others (their ``meta.json`` holds the gamma). The README's table adds ``gsm8k_train3200-6399_n1_t0.7.vllm.jsonl`` and
``gsm8k_train6400-7472_n1_t0.7.vllm.jsonl`` (``bench/rollouts/sample_issue9.sh``) to ``TRAIN`` and runs
``--recipe-positions all --gamma 0.9910458562488609 --rows 200x8 800x2 1600x1 200x1 400x1 800x1 3200x1 6400x1
7473x1``. Per row: the ``s_0`` head (the ``variants`` row ``s_0 only``: ``--head-lr`` 3e-5,
``--head-epochs`` 30, ``--s0-batch-size`` 16, seed ``--seed``; the same run is also evaluated after
``--head-also-epochs`` for the JSON), its mean over ``--head-seeds``, the ridge probe (``--ridge-alpha``
1e3), and, fitted on the row's records, the constant baseline and the prompt-length regression of
``lenvm_rl.evaluation`` (a line in value space, ``CURVE_PREDICTORS``); the split-half MRE and noise floor of
each held-out set. Each gets the held-out prompt MRE ± SE over prompts, the value MSE at ``s_0`` and the RE at
0 % of the trajectory (both over the EOS-terminated held-out completions, as ``evaluate_lenvm``). The RE at
25/50/75 % is not measured for them: these predictors see ``s_0`` only. ``paired`` (JSON; also printed) is each
of ``PAIRED_PREDICTORS``' MRE minus the prompt-length regression's, paired by held-out prompt, ± the SE of that
paired mean (``paired_difference``). The slope is the least-squares change of
the MRE per doubling of the prompts over the ``Px1`` rows; the JSON also gives where that line reaches
``--target-mre`` on the first held-out file. The head recipe and the ridge penalty were picked on the
held-out set (``variants``); the curve holds them fixed.

``--recipe-positions all`` adds, per row, the recipe that won item 2 on the validation split (``variants``' all-states
head, kept fixed across rows): a fresh ``ValueHead`` (seed ``--seed``) on the frozen trunk's states at *every*
position ``s_0 .. s_L`` of the row's training completions (the same ``curve_mask`` records, selected at their ``s_0``
rows: ``curve_state_mask``), loss weight ``--recipe-boundary-weight`` 100 at ``s_0`` and 1 elsewhere, AdamW lr
``--recipe-lr`` 3e-4 decaying linearly to 0 (``--recipe-lr-scheduler-type``, the ``Trainer``'s default),
``--recipe-epochs`` 3, ``--head-batch-size`` 1024 states (``fit_value_head``, as ``variants``, whose grid kept the lr
constant); also for each of ``--recipe-seeds`` (mean and sd over seeds). It is evaluated at every state of the
held-out completions: prompt MRE ± SE (``V(s_0)`` per prompt), RE at 0/25/50/75 % of the trajectory and value MSE over
the EOS-terminated completions (as ``evaluate_lenvm``). The constant baseline (``V`` the constant at every state, as
``evaluate_constant``) gets the same columns; the prompt-length regression predicts at ``s_0`` only (its RE at 0 %
from ``V(s_0)``, the rest ``—``). This needs the all-state features ``<file>.all`` beside the boundary ones in the
same cache: of the held-out files, and of the training files that hold records of the ``--rows`` (about 0.27 GB per
1,000 completions in float16; the trunk runs over 650k tokens for the 2,000 held-out completions, 45 min at 250
tokens/s, and 1.7M for all five training files). The extraction takes the held-out files first, then the training
files in the order of the smallest row that needs them (``recipe_train_files``), so a partial run completes whole rows
early; it resumes like the boundary one. Caches of the same settings (``meta.json``: gamma, dtype, bf16, chunking) can
be shared by a symlink, e.g. the ``variants`` caches of the 200 x 8 files::

    C=bench/results/features/smollm2-135m-curve; V=../smollm2-135m-e18d83e22d
    for f in gsm8k_train200_n8_t0.7.rows0-139.jsonl gsm8k_train200_n8_t0.7.rows140-199.jsonl; do
        ln -s $V/$f.all $C/$f.all; done
    OMP_NUM_THREADS=1 nice -n 19 python bench/bench_pretrain.py curve --train-rollouts $TRAIN --eval-rollouts $EVAL \
        --bf16 --cache-dir $C --recipe-positions all --extract-only
    # a row runs as soon as its files' all-state features are cached (the other files' are not read):
    OMP_NUM_THREADS=1 python bench/bench_pretrain.py curve --train-rollouts $TRAIN --eval-rollouts $EVAL --bf16 \
        --cache-dir $C --recipe-positions all --rows 200x8 --output bench/results/curve-recipe-200x8.json

The second table printed has, per row, the recipe head, the constant and the prompt-length regression: prompt MRE
± SE on the first held-out file / all of them, RE at 0/25/50/75 % and value MSE on all of them.
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


def record_steps(features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per cached row: the index of its record's block of rows (0, 1, ... in cache order) and its state ``t``.

    ``extract_chunk`` writes the rows of a record together, ``s_0`` first and then ``s_1 .. s_L`` in order (one row
    with ``positions="boundary"``), so a block starts at each ``is_s0`` row, also in concatenated caches.
    """
    is_s0 = features["is_s0"]
    if len(is_s0) and not bool(is_s0[0]):
        raise ValueError("cached rows do not start at an s_0 row: not the layout of extract_chunk")
    block = is_s0.long().cumsum(0) - 1
    return block, torch.arange(len(is_s0)) - is_s0.nonzero().squeeze(1)[block]


def state_weights(is_s0: torch.Tensor, boundary_weight: float) -> torch.Tensor:
    """Loss weight of each cached state: ``boundary_weight`` at ``s_0``, 1 elsewhere.

    On the cached states of whole trajectories this is ``core.boundary_weights(target_mask, w)[target_mask]``.
    """
    return torch.where(is_s0, float(boundary_weight), 1.0)


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
                   epochs: list[int], batch_size: int, seed: int = 0, weight_decay: float = 0.0,
                   lr_scheduler_type: str = "constant", evaluate=None):
    """A fresh ``ValueHead`` fitted on fixed states with AdamW.

    Each step draws ``batch_size`` positions of a fresh random permutation per epoch and minimises
    ``core.value_regression_loss`` with per-position ``weights`` (``sum w (V - G)**2 / sum w`` over the
    minibatch). The learning rate follows ``transformers.get_scheduler(lr_scheduler_type)`` without warmup over
    ``max(epochs)`` epochs, as the ``Trainer``'s: ``"constant"`` makes the head after epoch ``e`` of a longer run
    exactly the head of an ``e``-epoch run; ``"linear"`` (``LenVMConfig``'s default) decays to 0 at the last
    epoch. After each epoch in ``epochs`` the head (eval mode) goes to ``evaluate(head)``. Returns
    ``[(epoch, mean training loss of that epoch, evaluate(head) or None, seconds so far), ...]``.
    """
    from transformers import get_scheduler

    from lenvm_rl.core import value_regression_loss
    from lenvm_rl.modeling import ValueHead

    torch.manual_seed(seed)
    head = ValueHead(hidden.shape[1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=learning_rate, weight_decay=weight_decay)
    scheduler = get_scheduler(lr_scheduler_type, optimizer, num_warmup_steps=0,
                              num_training_steps=max(epochs) * math.ceil(len(targets) / batch_size))
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
            scheduler.step()
            losses.append(loss.item())
        if epoch in epochs:
            head.eval()
            results.append((epoch, statistics.fmean(losses), evaluate(head) if evaluate else None,
                            time.perf_counter() - start))
    return results


def fit_ridge(hidden: torch.Tensor, targets: torch.Tensor, alpha: float):
    """Closed-form ridge regression of ``targets`` on standardised ``hidden`` (unpenalised intercept), float64.

    Returns ``predict(hidden) -> values`` clamped into the range of the training targets above -1: a linear
    probe is unbounded, and a value at or below -1 would predict an infinite length. (A target of -1 is a
    censored completion's, ``censored="infinite"``; with one sample per prompt there are such targets, and a
    clamp at -1 would let the probe predict infinite lengths. Clamped at the lowest finite-length target, it
    predicts at most the longest completion it was fitted on.)
    """
    x = hidden.double()
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mean) / std
    y = targets.double() - targets.double().mean()
    coef = torch.linalg.solve(z.T @ z + alpha * torch.eye(z.shape[1], dtype=torch.float64), z.T @ y)
    intercept = targets.double().mean()
    finite = targets[targets > -1]
    low, high = (finite.min().item() if len(finite) else -1.0), targets.max().item()

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
        # the EOS-terminated completions (their prompt's position in ``groups``, their length L) for the s_0 metrics
        ended = [(i, rec["completion_length"]) for i, group in enumerate(self.groups.values()) for rec in group
                 if rec["finish_reason"] == "eos"]
        self.ended_prompt = torch.tensor([i for i, _ in ended], dtype=torch.long)
        self.ended_length = torch.tensor([n for _, n in ended], dtype=torch.long)
        self.all_positions = all_positions
        if all_positions:  # value MSE and positionwise RE over the EOS-terminated completions, as evaluate_lenvm
            ended = features["terminated"]
            self.hidden, self.targets = features["hidden"][ended], features["targets"][ended]
            # the completion-aligned layout of those states: row -> (completion b, state t), and each L_b
            block, step = (part[ended] for part in record_steps(features))
            _, block, states = torch.unique(block, return_inverse=True, return_counts=True)
            self.state_block, self.state_step, self.state_length = block, step, states - 1  # s_0 .. s_L: L + 1

    def evaluate_values(self, s0_values: torch.Tensor, all_values: torch.Tensor | None = None) -> dict:
        """Prompt MRE ± SE from ``V(s_0)`` per prompt, and value MSE from values at every cached state.

        Also from ``V(s_0)`` alone, over the EOS-terminated completions (as ``evaluate_lenvm``'s value MSE and
        RE; a censored completion's target is unknown): ``s0_value_mse``, ``mean (V(s_0) - G_0)**2`` with
        ``G_0 = -(1 - gamma**L)``, and ``re_at_0``, ``evaluate_lenvm``'s positionwise RE at 0 % of the trajectory
        (``core.positionwise_relative_error`` at fraction 0). ``num_infinite`` counts prompts predicted at
        ``V(s_0) = -1`` (a saturated head): an infinite length, so an infinite MRE.

        With values at every cached state (``all_positions``), ``positionwise_re`` is ``evaluate_lenvm``'s
        positionwise RE, ``{str(f): RE}`` for ``f`` in ``evaluation.FRACTIONS`` (0, 0.25, 0.5, 0.75), from
        ``V(s_k)`` of each EOS-terminated completion's own states (``k = floor(f * L)``); NaN otherwise.
        """
        from lenvm_rl.core import (
            length_to_value,
            mean_and_standard_error,
            positionwise_relative_error,
            value_regression_loss,
            value_to_length,
        )
        from lenvm_rl.evaluation import FRACTIONS, _prompt_errors

        lengths = value_to_length(s0_values, self.gamma)
        prompt_errors = _prompt_errors(lengths, self.groups, self.gamma)
        mre, se = mean_and_standard_error(prompt_errors)
        mse = math.nan
        positionwise = dict.fromkeys(map(str, FRACTIONS), math.nan)
        if all_values is not None and len(self.targets):
            mse = value_regression_loss(all_values[None], self.targets[None].float(),
                                        torch.ones(1, len(self.targets), dtype=torch.bool)).item()
            # completion-aligned V(s_t), t = 0 .. L-1 (every state but the EOS one), as evaluate_lenvm
            steps = self.state_step < self.state_length[self.state_block]
            block, step = self.state_block[steps], self.state_step[steps]
            values = torch.zeros(len(self.state_length), int(self.state_length.max()))
            mask = torch.zeros(values.shape, dtype=torch.bool)
            values[block, step], mask[block, step] = all_values.float()[steps], True
            errors = positionwise_relative_error(values, mask, FRACTIONS, gamma=self.gamma)
            positionwise = dict(zip(map(str, FRACTIONS), errors.tolist()))
        s0_mse = re_at_0 = math.nan
        if len(self.ended_length):
            v0 = s0_values.float()[self.ended_prompt]
            s0_mse = torch.mean((v0 - length_to_value(self.ended_length, self.gamma).float()) ** 2).item()
            # completion-aligned values V(s_t) = V(s_0) for t < L: only the fraction-0 step is read
            steps = torch.arange(int(self.ended_length.max()))[None, :] < self.ended_length[:, None]
            re_at_0 = positionwise_relative_error(v0[:, None].expand(steps.shape), steps, (0.0,),
                                                  gamma=self.gamma).item()
        return {"prompt_mre": mre, "prompt_mre_se": se, "value_mse": mse, "s0_value_mse": s0_mse,
                "re_at_0": re_at_0, "positionwise_re": positionwise, "num_infinite": int(torch.isinf(lengths).sum()),
                "prompt_errors": prompt_errors.tolist()}

    def evaluate_head(self, head) -> dict:
        return self.evaluate_values(head_values(head, self.s0_hidden),
                                    head_values(head, self.hidden) if self.all_positions else None)


def _baselines(train_records: list[dict], held_out: HeldOut, gamma: float) -> dict[str, dict]:
    from lenvm_rl.evaluation import (
        constant_baseline_value,
        evaluate_constant,
        evaluate_prompt_length_baseline,
        prompt_length_baseline,
    )

    constant = evaluate_constant(constant_baseline_value(train_records, gamma), held_out.records, gamma)
    regression = evaluate_prompt_length_baseline(prompt_length_baseline(train_records, gamma), held_out.records)
    rows = {name: {"prompt_mre": row.prompt_mre, "prompt_mre_se": row.prompt_mre_se, "value_mse": row.value_mse}
            for name, row in (("constant baseline", constant), ("prompt-length regression", regression))}
    return rows | _references(held_out, gamma)


def _references(held_out: HeldOut, gamma: float) -> dict[str, dict]:
    """The split-half MRE and the noise floor of a held-out set (``lenvm_rl.evaluation``), as table cells."""
    from lenvm_rl.evaluation import NOISE_FLOOR_ROW, SPLIT_HALF_ROW, noise_floor, split_half_mre

    return {name: {"prompt_mre": mre, "prompt_mre_se": se, "value_mse": math.nan}
            for name, (mre, se) in ((SPLIT_HALF_ROW, split_half_mre(held_out.records, gamma)),
                                    (NOISE_FLOOR_ROW, noise_floor(held_out.records, gamma)))}


def _baseline_s0_values(train_records: list[dict], held_out: HeldOut, gamma: float) -> dict[str, torch.Tensor]:
    """``V(s_0)`` per held-out prompt of the constant baseline and the prompt-length regression fitted on
    ``train_records`` (``lenvm_rl.evaluation``), for ``HeldOut.evaluate_values``."""
    from lenvm_rl.core import length_to_value
    from lenvm_rl.evaluation import constant_baseline_value, prompt_length_baseline

    regression = prompt_length_baseline(train_records, gamma)
    return {"constant baseline": torch.full((len(held_out.groups),), constant_baseline_value(train_records, gamma)),
            "prompt-length regression": length_to_value(regression.predict_lengths(held_out.records), gamma)}


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


def _extract_all(args, gamma: float, positions: str, eval_positions: str, train_paths=None, eval_first=False):
    """Cache (resumably) the features of every ``--train-rollouts`` (or ``train_paths``, in that order) and
    ``--eval-rollouts`` file; the training files first, or the held-out ones with ``eval_first``.

    Returns ``(cache root, training folders, held-out folders)``; the trunk is loaded only if a chunk is missing.
    The cache root depends on all of ``--train-rollouts``, whatever ``train_paths``.
    """
    eval_paths = args.eval_rollouts or []
    train_paths = args.train_rollouts if train_paths is None else train_paths
    root = Path(args.cache_dir) if args.cache_dir else feature_cache_root(args.model, args.train_rollouts + eval_paths)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    load_model = functools.cache(lambda: _load_lenvm(args.model, gamma, device))
    settings = dict(gamma=gamma, model_name=args.model, batch_size=args.batch_size, chunk_records=args.chunk_records,
                    bf16=args.bf16, feature_dtype=args.feature_dtype)
    start = time.perf_counter()

    def extract(paths, mode):
        return [extract_features(load_model, p, root, positions=mode, **settings) for p in paths]

    if eval_first:
        eval_dirs = extract(eval_paths, eval_positions)
        train_dirs = extract(train_paths, positions)
    else:
        train_dirs = extract(train_paths, positions)
        eval_dirs = extract(eval_paths, eval_positions)
    print(f"features under {root} (gamma={gamma:.6f}, {time.perf_counter() - start:.0f} s; "
          f"{torch.get_num_threads()} threads)", flush=True)
    return root, train_dirs, eval_dirs


def _held_out_sets(eval_paths, eval_dirs, all_positions: bool, gamma: float) -> list[HeldOut]:
    """One ``HeldOut`` per held-out file and, with several files, one more named ``all held-out`` for their union."""
    from lenvm_rl.data import read_rollouts

    eval_parts = [load_features(d) for d in eval_dirs]
    sets = [HeldOut(Path(p).name, read_rollouts(p), part, all_positions, gamma)
            for p, part in zip(eval_paths, eval_parts)]
    if len(sets) > 1:
        sets.append(HeldOut("all held-out", read_rollouts(eval_paths), _concat_features(eval_parts), all_positions,
                            gamma))
    return sets


def variants(args) -> None:
    from lenvm_rl.data import gamma_from_records, read_rollouts

    if args.epochs is not None and any(e != int(e) or e < 1 for e in args.epochs):
        raise SystemExit(f"variants takes whole --epochs >= 1, got {args.epochs}")
    epochs = sorted({int(e) for e in args.epochs}) if args.epochs else [1, 3]
    eval_paths = args.eval_rollouts or []
    train_records = read_rollouts(args.train_rollouts)
    gamma = gamma_from_records(train_records)
    root, train_dirs, eval_dirs = _extract_all(args, gamma, args.positions, args.eval_positions)
    if args.extract_only:
        return
    if not eval_paths:
        raise SystemExit("variants needs --eval-rollouts to evaluate the variants (or pass --extract-only)")

    train = _concat_features([load_features(d) for d in train_dirs])
    sets = _held_out_sets(eval_paths, eval_dirs, args.eval_positions == "all", gamma)

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
        weights = state_weights(is_s0, boundary_weight)
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


# ------------------------------------------------------------------- curve: accuracy against the number of prompts

def parse_curve_row(text: str) -> tuple[int, int]:
    """``"800x2"`` -> ``(800, 2)``: that many prompts (rows ``0 .. P-1``) times samples per prompt."""
    try:
        prompts, samples = (int(part) for part in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise ValueError(f"a curve row is PROMPTSxSAMPLES, e.g. 800x2; got {text!r}") from None
    if prompts < 2 or samples < 1:
        raise ValueError(f"a curve row needs at least 2 prompts and 1 sample per prompt; got {text!r}")
    return prompts, samples


def curve_mask(prompt_index: torch.Tensor, sample_index: torch.Tensor, prompts: int, samples: int) -> torch.Tensor:
    """The records (or cached rows) of one curve row: ``prompt_index < prompts`` and ``sample_index < samples``.

    A row of ``P x K`` takes the first ``K`` samples of each of the prompts ``0 .. P-1`` (``prompt_index`` is the
    question's row in the data set), so rows with the same number of completions differ only in how they are split
    and a growing row contains the smaller ones. Raises ``ValueError`` unless every one of the ``P x K`` (prompt,
    sample) pairs is present exactly once.
    """
    prompt_index, sample_index = torch.as_tensor(prompt_index), torch.as_tensor(sample_index)
    mask = (prompt_index >= 0) & (prompt_index < prompts) & (sample_index >= 0) & (sample_index < samples)
    keys = prompt_index[mask] * samples + sample_index[mask]
    distinct = torch.unique(keys)
    if len(distinct) != len(keys):
        raise ValueError(f"{prompts}x{samples}: {len(keys) - len(distinct)} duplicate (prompt_index, sample_index) "
                         "pairs; pass each rollout file once")
    if len(distinct) != prompts * samples:
        found = torch.zeros(prompts * samples, dtype=torch.bool)
        found[distinct] = True
        first = int((~found).nonzero()[0, 0])
        raise ValueError(f"{prompts}x{samples}: {prompts * samples - len(distinct)} of the {prompts * samples} "
                         f"completions are missing (first: prompt_index {first // samples}, sample_index "
                         f"{first % samples}); sample them first")
    return mask


def curve_state_mask(features: dict[str, torch.Tensor], prompts: int, samples: int) -> torch.Tensor:
    """``curve_mask`` on cached features: the records are selected (and checked) at their ``s_0`` rows, one per
    record, and the mask extends to every cached state of the selected records (``record_steps``)."""
    block, _ = record_steps(features)
    s0 = features["is_s0"]
    return curve_mask(features["prompt_index"][s0], features["sample_index"][s0], prompts, samples)[block]


def recipe_train_files(paths, rows_spec) -> list[str]:
    """The training rollout files that hold records of the curve rows ``[(P, K), ...]``, ordered by the smallest
    row (fewest completions, then prompts) that needs each, so an extraction in this order completes small rows
    first; files that no row needs are left out."""
    from lenvm_rl.data import read_rollouts

    first_needed = {}
    for path in paths:
        records = read_rollouts(path)
        rows = [(prompts * samples, prompts) for prompts, samples in rows_spec
                if any(r["prompt_index"] < prompts and r.get("sample_index", 0) < samples for r in records)]
        if rows:
            first_needed[path] = min(rows)
    return sorted(first_needed, key=first_needed.get)


def fit_slope(prompts, mres) -> dict:
    """Least squares ``MRE = slope * log2(prompts) + intercept``: the MRE change per doubling of the prompts.

    ``slope_se`` is the textbook standard error from the residuals (NaN with 2 points); the points share one
    held-out set, so their errors are correlated and it is only a rough guide.
    """
    x = torch.tensor([math.log2(p) for p in prompts], dtype=torch.float64)
    y = torch.tensor(list(mres), dtype=torch.float64)
    if len(x) < 2 or bool((x == x[0]).all()):
        raise ValueError(f"a slope needs at least 2 distinct numbers of prompts, got {list(prompts)}")
    dx = x - x.mean()
    slope = float((dx * (y - y.mean())).sum() / (dx ** 2).sum())
    intercept = float(y.mean() - slope * x.mean())
    residuals = y - (slope * x + intercept)
    se = math.sqrt(float((residuals ** 2).sum()) / (len(x) - 2) / float((dx ** 2).sum())) if len(x) > 2 else math.nan
    return {"slope": slope, "slope_se": se, "intercept": intercept}


def prompts_for_target(fit: dict, target: float) -> float:
    """The number of prompts at which the fitted line reaches ``target`` (inf if it never does: slope >= 0)."""
    if fit["slope"] >= 0:
        return math.inf
    try:
        return 2.0 ** ((target - fit["intercept"]) / fit["slope"])
    except OverflowError:  # a slope barely below 0: beyond any float
        return math.inf


SEED_MEAN = "s_0 head, mean of seeds"
CURVE_PREDICTORS = ("s_0 head", SEED_MEAN, "ridge probe", "constant baseline", "prompt-length regression")
"""The curve's predictors. ``s_0 head`` is the run of ``--seed``; ``prompt-length regression`` is
``lenvm_rl.evaluation.prompt_length_baseline``, the least-squares line of the prompt-mean ``V(s_0)`` target on the
prompt's token count (fitted in value space, so unbiased whatever the samples per prompt)."""
RECIPE_HEAD = "recipe head (all states)"
"""With ``--recipe-positions all``: the item-2 recipe, a ``ValueHead`` fitted on every state of the row's training
completions (``variants``' all-states head), evaluated at every held-out state."""
RECIPE_SEED_MEAN = "recipe head, mean of seeds"
RECIPE_TABLE = (RECIPE_HEAD, RECIPE_SEED_MEAN, "constant baseline", "prompt-length regression")


def seed_mean(cells: list[dict]) -> dict:
    """One cell from the cells of several seeds: means (NaN where a seed's is), and ``seed_sd`` (standard deviation
    of the MRE over seeds)."""
    mres = [cell["prompt_mre"] for cell in cells]
    mean = {key: statistics.fmean(cell[key] for cell in cells)
            for key in ("prompt_mre", "prompt_mre_se", "s0_value_mse", "re_at_0", "value_mse")}
    positionwise = {f: statistics.fmean(cell["positionwise_re"][f] for cell in cells)
                    for f in cells[0]["positionwise_re"]}
    errors = torch.tensor([cell["prompt_errors"] for cell in cells], dtype=torch.float64).mean(0).tolist()
    return mean | {"seed_sd": statistics.stdev(mres) if len(mres) > 1 else math.nan, "seeds": len(cells),
                   "num_infinite": max(cell["num_infinite"] for cell in cells), "positionwise_re": positionwise,
                   "prompt_errors": errors}


def paired_difference(cell: dict, reference: dict) -> dict:
    """The prompt MRE of ``cell`` minus that of ``reference`` on the same held-out prompts, paired by prompt:
    ``{"difference": mean_p (e_p - r_p), "se": its standard error over prompts}``. Pairing removes the spread of
    the prompts' difficulty that both predictors share, which the unpaired SEs of the two MREs both carry."""
    from lenvm_rl.core import mean_and_standard_error

    difference, se = mean_and_standard_error(torch.tensor(cell["prompt_errors"], dtype=torch.float64)
                                             - torch.tensor(reference["prompt_errors"], dtype=torch.float64))
    return {"difference": difference, "se": se}


PAIRED_REFERENCE = "prompt-length regression"
PAIRED_PREDICTORS = (SEED_MEAN, "ridge probe", RECIPE_SEED_MEAN)


def format_paired_table(rows: list[dict], sets: list[str]) -> str:
    """Markdown: per training row, the paired difference of each predictor of ``PAIRED_PREDICTORS`` found in the
    rows to ``PAIRED_REFERENCE``, in percentage points ± SE over prompts, on each of ``sets`` separated by ``/``."""
    names = [name for name in PAIRED_PREDICTORS if name in rows[0]["paired"]]
    head = ["prompts × samples"] + [f"{name} − {PAIRED_REFERENCE}" for name in names]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * len(names)]
    for row in rows:
        cells = [f"{row['prompts']} × {row['samples']}"]
        for name in names:
            pairs = [row["paired"][name][s] for s in sets]
            cells.append(" / ".join(f"{100 * pair['difference']:+.1f} ± {100 * pair['se']:.1f}" for pair in pairs))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


MSE_PREDICTORS = ("s_0 head", "ridge probe", "constant baseline", "prompt-length regression")


def format_curve_table(rows: list[dict], sets: list[str], mse_set: str) -> str:
    """Markdown: one line per training row; per predictor ``MRE ± SE`` (percent, SE over prompts) on each of
    ``sets`` separated by ``/`` (the seed mean: ``MRE (sd over seeds)``); then the value MSE at ``s_0`` on
    ``mse_set`` of the predictors of ``MSE_PREDICTORS``."""
    def mre(cell):
        if math.isinf(cell["prompt_mre"]):
            return f"∞ ({cell['num_infinite']} at V = -1)"
        spread = cell["seed_sd"] if "seed_sd" in cell else cell["prompt_mre_se"]
        return f"{100 * cell['prompt_mre']:.1f} {'(' if 'seed_sd' in cell else '± '}{100 * spread:.1f}" + \
            (")" if "seed_sd" in cell else "")

    head = ["prompts × samples", "completions"] + list(CURVE_PREDICTORS)
    head += [f"value MSE at s_0, {mse_set}: " + " / ".join(MSE_PREDICTORS)]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [f"{row['prompts']} × {row['samples']}", str(row["completions"])]
        cells += [" / ".join(mre(row["eval"][name][s]) for s in sets) for name in CURVE_PREDICTORS]
        cells.append(" / ".join(f"{row['eval'][name][mse_set]['s0_value_mse']:.4f}" for name in MSE_PREDICTORS))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_recipe_table(rows: list[dict], sets: list[str], re_set: str) -> str:
    """Markdown of ``--recipe-positions all``: per training row and predictor of ``RECIPE_TABLE``, the prompt MRE
    ± SE (percent) on each of ``sets`` separated by ``/``; the RE at 0/25/50/75 % of the trajectory and the value
    MSE over all states, both on ``re_set``'s EOS-terminated completions. The prompt-length regression predicts
    at ``s_0`` only: its RE at 0 % is ``re_at_0`` and the rest ``—``."""
    def mre(cell):
        if math.isinf(cell["prompt_mre"]):
            return f"∞ ({cell['num_infinite']} at V = -1)"
        if "seed_sd" in cell:
            return f"{100 * cell['prompt_mre']:.1f} ({100 * cell['seed_sd']:.1f})"
        return f"{100 * cell['prompt_mre']:.1f} ± {100 * cell['prompt_mre_se']:.1f}"

    def number(x, spec):
        return "—" if math.isnan(x) else format(x, spec)

    def errors(cell):
        found = list(cell["positionwise_re"].values())
        found[0] = cell["re_at_0"] if math.isnan(found[0]) else found[0]
        return " / ".join(number(100 * e, ".1f") for e in found)

    head = ["prompts × samples", "completions"]
    for name in RECIPE_TABLE:
        head += [f"{name}: prompt MRE", f"{name}: RE at 0/25/50/75 %", f"{name}: value MSE"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in rows:
        cells = [f"{row['prompts']} × {row['samples']}", str(row["completions"])]
        for name in RECIPE_TABLE:
            by_set = row["eval"][name]
            cells += [" / ".join(mre(by_set[s]) for s in sets), errors(by_set[re_set]),
                      number(by_set[re_set]["value_mse"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_curve(result: dict, path) -> None:
    """MRE against the number of training prompts (log x), one panel per held-out set in ``result["table_sets"]``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = result["table_sets"]
    growing = sorted((r for r in result["rows"] if r["samples"] == 1), key=lambda r: r["prompts"])
    fixed = [r for r in result["rows"] if r["samples"] > 1 or r["completions"] == result["fixed_completions"]]
    figure, axes = plt.subplots(1, len(sets), figsize=(6 * len(sets), 4.5), sharey=True, squeeze=False)
    styles = {SEED_MEAN: ("C0", "o"), "s_0 head": ("C9", "."), "ridge probe": ("C1", "s"),
              "constant baseline": ("C7", "^"), "prompt-length regression": ("C2", "v"),
              RECIPE_SEED_MEAN: ("C4", "D")}
    styles = {predictor: style for predictor, style in styles.items() if predictor in result["slopes"]}
    for ax, name in zip(axes[0], sets):
        for predictor, (color, marker) in styles.items():
            x = [r["prompts"] for r in growing]
            y = [100 * r["eval"][predictor][name]["prompt_mre"] for r in growing]
            e = [100 * r["eval"][predictor][name]["prompt_mre_se"] for r in growing]
            label = predictor if predictor != "s_0 head" else f"s_0 head, seed {result['recipes']['s_0 head']['seed']}"
            ax.errorbar(x, y, yerr=e, color=color, marker=marker, capsize=3, label=f"{label} (P × 1)",
                        alpha=0.5 if predictor == "s_0 head" else 1.0)
            for r in fixed:
                if r["samples"] > 1:
                    ax.plot(r["prompts"], 100 * r["eval"][predictor][name]["prompt_mre"], color=color,
                            marker=marker, markerfacecolor="none", markersize=9, linestyle="none")
                    if predictor in (SEED_MEAN, RECIPE_SEED_MEAN):
                        ax.annotate(f"{r['prompts']}×{r['samples']}", (r["prompts"],
                                    100 * r["eval"][predictor][name]["prompt_mre"]), textcoords="offset points",
                                    xytext=(6, 4), fontsize=8, color=color)
            fit = result["slopes"][predictor][name]
            xs = [min(x), max(x)]
            ax.plot(xs, [100 * (fit["slope"] * math.log2(v) + fit["intercept"]) for v in xs], color=color,
                    linestyle=":", linewidth=1)
        for label, (mre, _) in result["references"][name].items():
            ax.axhline(100 * mre, color="k", linestyle="--" if "noise" in label else "-.", linewidth=1, label=label)
        if name == sets[0] and result.get("target_mre"):
            ax.axhline(100 * result["target_mre"], color="C3", linewidth=1,
                       label=f"target {100 * result['target_mre']:.1f} %")
        ax.set_xscale("log", base=2)
        ax.set_xticks([r["prompts"] for r in growing], [str(r["prompts"]) for r in growing], rotation=45)
        ax.set_xlabel("training prompts (log scale); hollow markers: P × K with K > 1")
        ax.set_title(f"{name} ({result['held_out'][name]['prompts']} prompts)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("held-out prompt MRE (%), ± SE over prompts")
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="lower center", ncol=4, fontsize=8)
    figure.suptitle("Prompt-boundary length prediction vs training prompts (SmolLM2-135M-Instruct trunk, GSM8K, "
                    "T 0.7); dotted: least-squares lines over the P × 1 rows", fontsize=10)
    figure.tight_layout(rect=(0, 0.13, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def curve(args) -> None:
    from lenvm_rl.data import gamma_from_records, read_rollouts

    rows_spec = [parse_curve_row(text) for text in args.rows]
    eval_paths = args.eval_rollouts or []
    train_records = read_rollouts(args.train_rollouts)
    # one gamma for every row: that of all the training rollouts, or --gamma (keeps the caches of a shorter list)
    gamma = args.gamma if args.gamma is not None else gamma_from_records(train_records)
    root, train_dirs, eval_dirs = _extract_all(args, gamma, "boundary", "boundary")
    recipe = args.recipe_positions == "all"
    if recipe:  # every state: the held-out files first, then the training files of the smallest rows first
        recipe_paths = recipe_train_files(args.train_rollouts, rows_spec)
        _, recipe_train_dirs, recipe_eval_dirs = _extract_all(args, gamma, "all", "all", train_paths=recipe_paths,
                                                              eval_first=True)
    if args.extract_only:
        return
    if not eval_paths:
        raise SystemExit("curve needs --eval-rollouts (or pass --extract-only)")
    train = _concat_features([load_features(d) for d in train_dirs])
    sets = _held_out_sets(eval_paths, eval_dirs, False, gamma)
    predictors = CURVE_PREDICTORS
    if recipe:
        train_states = _concat_features([load_features(d) for d in recipe_train_dirs])
        # the same held-out files at every state; they also give the baselines' RE and value MSE at every state
        state_sets = _held_out_sets(eval_paths, recipe_eval_dirs, True, gamma)
        predictors = CURVE_PREDICTORS + (RECIPE_HEAD, RECIPE_SEED_MEAN)
    baseline_sets = state_sets if recipe else sets  # the s_0 metrics of a baseline are the same on either
    record_prompt = torch.tensor([r["prompt_index"] for r in train_records])
    record_sample = torch.tensor([r.get("sample_index", 0) for r in train_records])
    references = {s.name: {name: (cell["prompt_mre"], cell["prompt_mre_se"])
                           for name, cell in _references(s, gamma).items()} for s in sets}
    epochs = sorted({args.head_epochs, *args.head_also_epochs})

    rows = []
    for prompts, samples in rows_spec:
        start = time.perf_counter()
        keep = curve_mask(record_prompt, record_sample, prompts, samples).tolist()
        row_records = [r for r, k in zip(train_records, keep) if k]
        cached = curve_state_mask(train, prompts, samples)
        part = {key: value[cached] for key, value in train.items()}
        _, s0_rows, s0_targets = boundary_rows(part)
        s0_hidden = part["hidden"][s0_rows]

        def fit_head(hidden, targets, seed, at):
            return {epoch: {s.name: result for s, result in zip(sets, results)}
                    for epoch, _, results, _ in fit_value_head(
                        hidden, targets, torch.ones(len(targets)), learning_rate=args.head_lr, epochs=at,
                        batch_size=args.s0_batch_size, seed=seed, weight_decay=args.weight_decay,
                        evaluate=lambda head: [s.evaluate_head(head) for s in sets])}

        by_epoch = fit_head(s0_hidden, s0_targets, args.seed, epochs)
        by_seed = {args.seed: by_epoch[args.head_epochs]}
        by_seed |= {seed: fit_head(s0_hidden, s0_targets, seed, [args.head_epochs])[args.head_epochs]
                    for seed in args.head_seeds if seed != args.seed}
        predict = fit_ridge(s0_hidden, s0_targets, args.ridge_alpha)
        evaluation = {"s_0 head": by_epoch[args.head_epochs],
                      SEED_MEAN: {s.name: seed_mean([cells[s.name] for cells in by_seed.values()]) for s in sets},
                      "ridge probe": {s.name: s.evaluate_values(predict(s.s0_hidden)) for s in sets}}
        baselines = {s.name: _baseline_s0_values(row_records, s, gamma) for s in baseline_sets}
        constant = {s.name: s.evaluate_values(
            baselines[s.name]["constant baseline"],  # V = the constant at every cached state too
            torch.full((len(s.targets),), baselines[s.name]["constant baseline"][0].item()) if recipe else None)
            for s in baseline_sets}
        evaluation["constant baseline"] = constant
        evaluation["prompt-length regression"] = {  # defined at s_0 only
            s.name: s.evaluate_values(baselines[s.name]["prompt-length regression"]) for s in baseline_sets}
        if recipe:  # the item-2 recipe on every state of the row's records
            states = curve_state_mask(train_states, prompts, samples)
            hidden, targets, is_s0 = (train_states[key][states] for key in ("hidden", "targets", "is_s0"))
            recipe_runs = {seed: fit_value_head(
                hidden, targets, state_weights(is_s0, args.recipe_boundary_weight), learning_rate=args.recipe_lr,
                epochs=[args.recipe_epochs], batch_size=args.head_batch_size, seed=seed,
                weight_decay=args.weight_decay, lr_scheduler_type=args.recipe_lr_scheduler_type,
                evaluate=lambda head: [s.evaluate_head(head) for s in state_sets])[0]
                for seed in dict.fromkeys([args.seed, *args.recipe_seeds])}
            recipe_by_seed = {seed: {s.name: cell for s, cell in zip(state_sets, run[2])}
                              for seed, run in recipe_runs.items()}
            _, recipe_loss, _, recipe_seconds = recipe_runs[args.seed]
            evaluation[RECIPE_HEAD] = recipe_by_seed[args.seed]
            evaluation[RECIPE_SEED_MEAN] = {s.name: seed_mean([cells[s.name] for cells in recipe_by_seed.values()])
                                            for s in state_sets}
            del hidden, targets, is_s0
        row = {"prompts": prompts, "samples": samples, "completions": len(row_records),
               "censored": sum(r["finish_reason"] == "length" for r in row_records),
               "own_gamma": gamma_from_records(row_records), "eval": {name: evaluation[name] for name in predictors},
               "s_0 head by epoch": {str(e): v for e, v in by_epoch.items()},
               "s_0 head by seed": {str(seed): v for seed, v in by_seed.items()},
               "seconds": time.perf_counter() - start}
        row["paired"] = {name: {s: paired_difference(cells[s], evaluation[PAIRED_REFERENCE][s]) for s in cells}
                         for name, cells in evaluation.items() if name in PAIRED_PREDICTORS}
        if recipe:
            row |= {"recipe states": int(states.sum()), "recipe train loss": recipe_loss,
                    "recipe seconds": recipe_seconds,
                    "recipe head by seed": {str(seed): cells for seed, cells in recipe_by_seed.items()}}
        rows.append(row)
        print(f"{prompts} x {samples}: " + "; ".join(
            f"{name} " + ", ".join(f"{100 * cell['prompt_mre']:.1f} %" for cell in evaluation[name].values())
            for name in predictors) + f" ({row['seconds']:.0f} s)", flush=True)

    table_sets = [sets[0].name, sets[-1].name] if len(sets) > 1 else [sets[0].name]
    growing = sorted((r for r in rows if r["samples"] == 1), key=lambda r: r["prompts"])
    slopes, needed = {}, {}
    if len({r["prompts"] for r in growing}) >= 2:
        for name in predictors:
            slopes[name] = {s.name: fit_slope([r["prompts"] for r in growing],
                                              [r["eval"][name][s.name]["prompt_mre"] for r in growing]) for s in sets}
            needed[name] = prompts_for_target(slopes[name][sets[0].name], args.target_mre)
    result = {
        "command": " ".join(sys.argv), "gamma": gamma, "train_rollouts": args.train_rollouts,
        "eval_rollouts": eval_paths, "cache_dir": str(root), "positions": "boundary",
        "recipe_positions": args.recipe_positions, "bf16": args.bf16, "feature_dtype": args.feature_dtype,
        "recipes": {"s_0 head": {"learning_rate": args.head_lr, "epochs": args.head_epochs,
                                 "batch_size": args.s0_batch_size, "weight_decay": args.weight_decay,
                                 "seed": args.seed, "seeds": sorted({args.seed, *args.head_seeds}),
                                 "target": "prompt mean of G_0 over the row's samples"},
                    "ridge probe": {"alpha": args.ridge_alpha}}
        | ({RECIPE_HEAD: {"positions": "all", "boundary_weight": args.recipe_boundary_weight,
                          "learning_rate": args.recipe_lr, "lr_scheduler_type": args.recipe_lr_scheduler_type,
                          "epochs": args.recipe_epochs,
                          "batch_size": args.head_batch_size, "weight_decay": args.weight_decay, "seed": args.seed,
                          "seeds": sorted({args.seed, *args.recipe_seeds}),
                          "target": "G_t of each state of each sample"}} if recipe else {}),
        "held_out": {s.name: {"prompts": len(s.groups), "completions": len(s.records)} for s in sets},
        "table_sets": table_sets, "fixed_completions": max(p * k for p, k in rows_spec if k > 1) if any(
            k > 1 for _, k in rows_spec) else None,
        "references": references, "target_mre": args.target_mre, "target_set": sets[0].name,
        "slopes": slopes, "prompts_for_target": needed,
        "target_reached_by": [[name, row["prompts"], row["samples"]] for row in rows for name in predictors
                              if row["eval"][name][sets[0].name]["prompt_mre"] <= args.target_mre],
        "rows": rows,
        "not_measured": ("RE at 25/50/75 % of the trajectory of the s_0 head, the ridge probe and the prompt-length "
                         "regression: they predict at the prompt boundary only (their RE at 0 % is re_at_0); the "
                         "recipe head and the constant have it (positionwise_re, over every held-out state)")
        if recipe else ("RE at 25/50/75 % of the trajectory: the s_0 head, the ridge probe and the baselines predict "
                        "at the prompt boundary only, and only s_0 states are cached; RE at 0 % is re_at_0 "
                        "(--recipe-positions all adds a head on every state)"),
    }
    print()
    print(f"gamma = {gamma:.6f} (all training rollouts); s_0 head: lr {args.head_lr:g}, {args.head_epochs} epochs, "
          f"batch {args.s0_batch_size}, seed {args.seed}; ridge alpha {args.ridge_alpha:g}; features: {root}")
    print("prompt MRE ± SE over held-out prompts (%), value MSE at s_0 over EOS-terminated held-out completions")
    print(format_curve_table(rows, table_sets, sets[-1].name))
    if recipe:
        print()
        print(f"{RECIPE_HEAD}: s_0 weight {args.recipe_boundary_weight:g}, lr {args.recipe_lr:g} "
              f"{args.recipe_lr_scheduler_type}, {args.recipe_epochs} "
              f"epochs, batch {args.head_batch_size} states, seed {args.seed}; RE at 0/25/50/75 % of the trajectory "
              f"(%) and value MSE over every state of the EOS-terminated completions of {sets[-1].name}")
        print(format_recipe_table(rows, table_sets, sets[-1].name))
    print()
    print(f"paired by prompt: prompt MRE minus that of the {PAIRED_REFERENCE} (pp, ± SE over prompts)")
    print(format_paired_table(rows, table_sets))
    for s in sets:
        print(f"{s.name}: " + ", ".join(f"{name} {100 * mre:.1f} ± {100 * se:.1f} %"
                                        for name, (mre, se) in references[s.name].items()))
    for name, by_set in slopes.items():
        reach = needed[name]
        reach = ("never (slope >= 0)" if by_set[sets[0].name]["slope"] >= 0 else f"~{reach:.0f} prompts" if reach < 1e6
                 else f"~{reach:.1e} prompts" if reach < 1e30 else "never in practice")
        print(f"slope per doubling of P x 1 prompts, {name}: " + ", ".join(
            f"{n} {100 * f['slope']:+.2f} ± {100 * f['slope_se']:.2f} pp" for n, f in by_set.items())
            + f"; the line reaches {100 * args.target_mre:.1f} % on {sets[0].name} at {reach}")
    reached = [f"{name} at {row['prompts']} x {row['samples']}" for row in rows for name in predictors
               if row["eval"][name][sets[0].name]["prompt_mre"] <= args.target_mre]
    print(f"target {100 * args.target_mre:.1f} % on {sets[0].name}: "
          + (f"reached by {', '.join(reached)}" if reached else "not reached by any row"))
    print("not measured: " + result["not_measured"])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {output}")
    if args.plot and slopes:
        plot_curve(result, args.plot)
        print(f"wrote {args.plot}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["throughput", "pretrain", "variants", "curve"])
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
    variant.add_argument("--output", help="JSON of the table (default bench/results/variants-gsm8k.json, "
                                          "curve: bench/results/curve-gsm8k.json)")
    learning = parser.add_argument_group("curve: fixed head recipes against the number of training prompts "
                                         "(also --cache-dir, --chunk-records, --feature-dtype, --device, "
                                         "--extract-only, --s0-batch-size, --head-batch-size, --weight-decay, "
                                         "--seed)")
    learning.add_argument("--rows", nargs="+", default=["200x8", "800x2", "1600x1", "200x1", "400x1", "800x1",
                                                        "3200x1"],
                          help="training rows PROMPTSxSAMPLES: the first SAMPLES samples of prompt_index 0..PROMPTS-1")
    learning.add_argument("--gamma", type=float,
                          help="discount of every row (default: 0.01 ** (1 / L99) of all --train-rollouts). Pass the "
                               "gamma of the cached features (their meta.json) to add a training file without "
                               "re-extracting the others: the caches must match it")
    learning.add_argument("--head-lr", type=float, default=3e-5, help="learning rate of the s_0 head")
    learning.add_argument("--head-epochs", type=int, default=30, help="epochs of the s_0 head (the fixed recipe)")
    learning.add_argument("--head-also-epochs", type=int, nargs="*", default=[10, 100],
                          help="further epochs at which the same run is evaluated (JSON only: a sensitivity check)")
    learning.add_argument("--head-seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4],
                          help="seeds of the s_0 head whose mean MRE is reported beside the --seed run")
    learning.add_argument("--ridge-alpha", type=float, default=1e3, help="penalty of the ridge probe")
    learning.add_argument("--target-mre", type=float, default=0.188,
                          help="target prompt MRE on the first held-out file (issue 9: 0.7x the constant, 18.8 %%)")
    learning.add_argument("--plot", help="PNG of MRE against the number of prompts (e.g. docs/learning_curve.png)")
    learning.add_argument("--recipe-positions", choices=["none", "all"], default="none",
                          help="all: per row also fit the item-2 recipe head on every state of the row's training "
                               "completions and evaluate it at every held-out state (prompt MRE, RE at 0/25/50/75 %%, "
                               "value MSE); caches <file>.all features of the held-out files and of the training "
                               "files the --rows need (hours on a CPU; resumable, held-out files first)")
    learning.add_argument("--recipe-boundary-weight", type=float, default=100.0,
                          help="loss weight of s_0 of the recipe head (1 elsewhere; item 2: 100)")
    learning.add_argument("--recipe-lr", type=float, default=3e-4, help="AdamW learning rate of the recipe head")
    learning.add_argument("--recipe-epochs", type=int, default=3,
                          help="epochs of the recipe head (its batch: --head-batch-size states, default 1024)")
    learning.add_argument("--recipe-seeds", type=int, nargs="*", default=[0, 1, 2],
                          help="seeds of the recipe head whose mean (and sd over seeds) is reported beside --seed's "
                               "run")
    learning.add_argument("--recipe-lr-scheduler-type", choices=["linear", "constant"], default="linear",
                          help="learning-rate schedule of the recipe head, without warmup: linear decays to 0 at the "
                               "last epoch, as LenVMConfig's default (constant: the item-2 grid's schedule, whose "
                               "boundary prediction spreads widely over seeds)")
    args = parser.parse_args(argv)
    if args.part == "curve" and args.gamma is not None and not 0 < args.gamma < 1:
        parser.error(f"--gamma must be in (0, 1), got {args.gamma}")
    if args.output is None:
        args.output = f"bench/results/{'curve' if args.part == 'curve' else 'variants'}-gsm8k.json"
    return args


if __name__ == "__main__":
    arguments = parse_args()
    {"throughput": throughput, "pretrain": pretrain, "variants": variants, "curve": curve}[arguments.part](arguments)
