"""Value pretraining on real rollouts: batching throughput, then MRE against the constant baseline.

    # rollouts first (hours on 2 CPU cores; resumable):
    lenvm-rl rollout --model smollm2-135m --prompts openai/gsm8k:main --split train --prompt_column question \
        --prompt_format chat --limit 200 -n 8 --temperature 0.7 --max_new_tokens 512 --output rollouts/train.jsonl
    lenvm-rl rollout --model smollm2-135m --prompts openai/gsm8k:main --split test --prompt_column question \
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

``--backend vllm`` (``variants``, ``curve``) extracts the features through vLLM (``lenvm_rl.vllm.VLLMLenVM``, in an
environment with ``lenvm-rl[vllm]``): ``--model`` is then a LenVM checkpoint directory (its trunk's states; the head is
not read), run unpadded in float32 (bfloat16 weights with ``--bf16``) with the ``--vllm_*`` options of ``lenvm-rl
evaluate``; the cache's ``model`` is ``<model>+vllm``, so the two backends' caches do not mix. ``extraction`` times
both on the same records, back to back (``--repeats`` alternating rounds of ``extract_features`` on the first
``--records`` training records into a fresh cache, ``--positions``, float32 storage; vLLM's start-up apart) and prints
trunk tokens/s, the ratio and the largest |hidden| difference::

    # the shipped SmolLM2 LenVM assembled as bench/grpo_compare.sh does (its head files, the embedded trunk linked)
    VLLM_CPU_KVCACHE_SPACE=1 OMP_NUM_THREADS=1 nice -n 10 python bench/bench_pretrain.py extraction \
        --model /tmp/lenvm-smollm2 --train-rollouts bench/rollouts/gsm8k_train1600-3199_n1_t0.7.vllm.jsonl \
        --records 8 --repeats 2 --vllm-enforce-eager
    # 2026-12-05, 2 CPU cores at load 7 to 14: 2,342 tokens; hf 12.2 tokens/s, vllm 32.4 (2.64x), start-up 250 s

The feature cache, the head fits, the held-out evaluation, the baselines and the learning curve named above are
library functions of :mod:`lenvm_rl.analysis`; this script parses the arguments, calls them and prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from lenvm_rl.analysis import (
    FEATURE_DTYPES,
    PAIRED_REFERENCE,
    RECIPE_HEAD,
    CurveData,
    CurveSettings,
    concat_features,
    curve_slopes,
    evaluate_curve_row,
    extract_features,
    fit_variants,
    format_curve_table,
    format_paired_table,
    format_recipe_table,
    format_variants_table,
    held_out_sets,
    load_features,
    parse_curve_row,
    plot_curve,
    recipe_train_files,
    reference_cells,
    trunk_tokens,
    variant_references,
)


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

def feature_cache_root(model: str, rollout_paths) -> Path:
    """The default cache: ``bench/results/features/<model>-<hash of the rollout file names>``."""
    names = "\n".join(sorted(Path(p).name for p in rollout_paths))
    return Path("bench/results/features") / f"{Path(str(model)).name}-{hashlib.sha256(names.encode()).hexdigest()[:10]}"


def _load_lenvm(args, backend: str, gamma: float, device: str):
    """The trunk of the features: ``--model``'s backbone under a fresh head on ``device`` (``hf``), or the LenVM
    checkpoint ``--model`` in a vLLM engine (``vllm``: float32, bfloat16 with ``--bf16``; the ``--vllm_*`` options)."""
    if backend == "vllm":
        from lenvm_rl.commands.serve import vllm_engine_options
        from lenvm_rl.vllm.scoring import VLLMLenVM

        engine = argparse.Namespace(**{**vars(args), "dtype": "bfloat16" if args.bf16 else "float32",
                                       "trust_remote_code": False})
        # the checkpoint's own gamma: the trunk's states do not depend on it
        return VLLMLenVM.from_pretrained(args.model, **vllm_engine_options(engine))
    from lenvm_rl.modeling import LenVM

    return LenVM.from_backbone(args.model, gamma=gamma, device=device).eval()


def _feature_model_name(args, backend: str) -> str:
    """``model`` of the cache's ``meta.json``: ``--model``, with ``+vllm`` for the vLLM backend."""
    return args.model if backend == "hf" else f"{args.model}+vllm"


def _extract_all(args, gamma: float, positions: str, eval_positions: str, train_paths=None, eval_first=False):
    """Cache (resumably) the features of every ``--train-rollouts`` (or ``train_paths``, in that order) and
    ``--eval-rollouts`` file; the training files first, or the held-out ones with ``eval_first``.

    Returns ``(cache root, training folders, held-out folders)``; the trunk is loaded only if a chunk is missing.
    The cache root depends on all of ``--train-rollouts``, whatever ``train_paths``.
    """
    eval_paths = args.eval_rollouts or []
    train_paths = args.train_rollouts if train_paths is None else train_paths
    model_name = _feature_model_name(args, args.backend)
    root = Path(args.cache_dir) if args.cache_dir else feature_cache_root(model_name, args.train_rollouts + eval_paths)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    load_model = functools.cache(lambda: _load_lenvm(args, args.backend, gamma, device))
    settings = dict(gamma=gamma, model_name=model_name, batch_size=args.batch_size, chunk_records=args.chunk_records,
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
    if args.backend == "vllm" and load_model.cache_info().currsize:
        load_model().close()  # vLLM's engine processes end before the head fits
    print(f"features under {root} (gamma={gamma:.6f}, {time.perf_counter() - start:.0f} s; "
          f"{torch.get_num_threads()} threads)", flush=True)
    return root, train_dirs, eval_dirs


def extraction(args) -> None:
    """``extract_features`` through ``hf`` and ``vllm`` on the same records, back to back (module docstring)."""
    import tempfile

    from lenvm_rl.data import gamma_from_records, read_rollouts

    records = read_rollouts(args.train_rollouts)[:args.records]
    gamma = gamma_from_records(records)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = {backend: _load_lenvm(args, backend, gamma, device) for backend in ("hf", "vllm")}
    start = time.perf_counter()
    models["vllm"].engine  # noqa: B018 (starts it)
    startup = time.perf_counter() - start
    tokens = trunk_tokens(records, args.positions)
    rates, hidden = {backend: [] for backend in models}, {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "records.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
        try:
            for round_index in range(args.repeats):
                for backend, model in models.items():
                    start = time.perf_counter()
                    folder = extract_features(lambda m=model: m, path, Path(tmp) / f"{backend}-{round_index}",
                                              positions=args.positions, gamma=gamma, model_name=backend,
                                              batch_size=args.batch_size, chunk_records=args.chunk_records,
                                              bf16=args.bf16, feature_dtype="float32", progress=False)
                    rates[backend].append(tokens / (time.perf_counter() - start))
                    hidden[backend] = load_features(folder)["hidden"]
        finally:
            models["vllm"].close()
    print(f"model={args.model} records={len(records)} positions={args.positions} tokens={tokens} batch_size="
          f"{args.batch_size} (hf) bf16={args.bf16} rounds={args.repeats} threads={torch.get_num_threads()}; "
          f"vLLM start-up {startup:.0f} s")
    print(f"{'backend':<8} {'tokens/s':>9} {'ratio':>7}")
    base = statistics.median(rates["hf"])
    for backend, rate in rates.items():
        print(f"{backend:<8} {statistics.median(rate):>9.1f} {statistics.median(rate) / base:>6.2f}x")
    print(f"largest |hidden| difference: {(hidden['vllm'] - hidden['hf']).abs().max().item():.2e}")


def _write_json(path, result: dict) -> None:
    output = Path(path)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"wrote {output}")


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

    train = concat_features([load_features(d) for d in train_dirs])
    sets = held_out_sets(eval_paths, eval_dirs, args.eval_positions == "all", gamma)
    print(f"training states: {len(train['targets'])} ({int(train['is_s0'].sum())} s_0); held-out prompts: "
          + ", ".join(f"{s.name} {len(s.groups)}" for s in sets), flush=True)
    rows = []
    for row in fit_variants(
            train, sets, positions=args.positions, boundary_weights=args.boundary_weights,
            learning_rates=args.learning_rates, epochs=epochs, head_batch_size=args.head_batch_size,
            s0_learning_rates=args.s0_learning_rates or args.learning_rates, s0_epochs=args.s0_epochs,
            s0_batch_size=args.s0_batch_size, ridge_alphas=args.ridge_alphas, weight_decay=args.weight_decay,
            seed=args.seed):
        rows.append(row)
        cells = ", ".join(f"{n}: {r['prompt_mre']:.1%} ± {r['prompt_mre_se']:.1%}" for n, r in row["eval"].items())
        print(f"{row['name']}: train loss {row['train_loss']:.4f}, {cells} ({row['train_seconds']:.0f} s)", flush=True)

    references = variant_references(train_records, sets, gamma)
    print()
    print(f"gamma = {gamma:.6f}; train: {len(train_records)} completions, "
          f"{len(set(r['prompt_index'] for r in train_records))} prompts; features: {root}")
    print(format_variants_table(rows + references, sets))
    _write_json(args.output, {
        "command": " ".join(sys.argv), "gamma": gamma, "train_rollouts": args.train_rollouts,
        "eval_rollouts": eval_paths, "cache_dir": str(root), "positions": args.positions,
        "eval_positions": args.eval_positions, "feature_dtype": args.feature_dtype, "bf16": args.bf16,
        "head_batch_size": args.head_batch_size, "s0_batch_size": args.s0_batch_size,
        "weight_decay": args.weight_decay, "seed": args.seed,
        "held_out": {s.name: {"prompts": len(s.groups), "completions": len(s.records)} for s in sets},
        "variants": rows, "references": references,
    })


# ------------------------------------------------------------------- curve: accuracy against the number of prompts

def _curve_data(args, rows_spec) -> tuple[Path, CurveData | None]:
    """Cache (resumably) and load the curve's features: ``(cache root, CurveData)``, ``None`` after
    ``--extract-only``. One gamma for every row: that of all the training rollouts, or ``--gamma``."""
    from lenvm_rl.data import gamma_from_records, read_rollouts

    eval_paths = args.eval_rollouts or []
    train_records = read_rollouts(args.train_rollouts)
    # --gamma keeps the caches of a shorter list of training files
    gamma = args.gamma if args.gamma is not None else gamma_from_records(train_records)
    root, train_dirs, eval_dirs = _extract_all(args, gamma, "boundary", "boundary")
    recipe = args.recipe_positions == "all"
    if recipe:  # every state: the held-out files first, then the training files of the smallest rows first
        recipe_paths = recipe_train_files(args.train_rollouts, rows_spec)
        _, recipe_train_dirs, recipe_eval_dirs = _extract_all(args, gamma, "all", "all", train_paths=recipe_paths,
                                                              eval_first=True)
    if args.extract_only:
        return root, None
    if not eval_paths:
        raise SystemExit("curve needs --eval-rollouts (or pass --extract-only)")
    data = CurveData(train_records, concat_features([load_features(d) for d in train_dirs]),
                     held_out_sets(eval_paths, eval_dirs, False, gamma), gamma)
    if recipe:  # the same held-out files at every state; they also give the baselines' RE and value MSE there
        data.train_states = concat_features([load_features(d) for d in recipe_train_dirs])
        data.state_sets = held_out_sets(eval_paths, recipe_eval_dirs, True, gamma)
    return root, data


def _curve_result(args, data: CurveData, root: Path, rows_spec, rows, references, slopes, needed) -> dict:
    """The curve's JSON: the settings, the rows, the references, the slopes and the target."""
    sets, predictors, recipe = data.sets, data.predictors, data.recipe
    recipes = {"s_0 head": {"learning_rate": args.head_lr, "epochs": args.head_epochs,
                            "batch_size": args.s0_batch_size, "weight_decay": args.weight_decay,
                            "seed": args.seed, "seeds": sorted({args.seed, *args.head_seeds}),
                            "target": "prompt mean of G_0 over the row's samples"},
               "ridge probe": {"alpha": args.ridge_alpha}}
    if recipe:
        recipes[RECIPE_HEAD] = {
            "positions": "all", "boundary_weight": args.recipe_boundary_weight, "learning_rate": args.recipe_lr,
            "lr_scheduler_type": args.recipe_lr_scheduler_type, "epochs": args.recipe_epochs,
            "batch_size": args.head_batch_size, "weight_decay": args.weight_decay, "seed": args.seed,
            "seeds": sorted({args.seed, *args.recipe_seeds}), "target": "G_t of each state of each sample"}
    return {
        "command": " ".join(sys.argv), "gamma": data.gamma, "train_rollouts": args.train_rollouts,
        "eval_rollouts": args.eval_rollouts or [], "cache_dir": str(root), "positions": "boundary",
        "recipe_positions": args.recipe_positions, "bf16": args.bf16, "feature_dtype": args.feature_dtype,
        "recipes": recipes,
        "held_out": {s.name: {"prompts": len(s.groups), "completions": len(s.records)} for s in sets},
        "table_sets": [sets[0].name, sets[-1].name] if len(sets) > 1 else [sets[0].name],
        "fixed_completions": max(p * k for p, k in rows_spec if k > 1) if any(k > 1 for _, k in rows_spec) else None,
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


def _print_curve(args, result: dict) -> None:
    """The curve's tables, references, slopes and target, from its JSON."""
    rows, table_sets, sets = result["rows"], result["table_sets"], list(result["held_out"])
    first, last = sets[0], sets[-1]
    print()
    print(f"gamma = {result['gamma']:.6f} (all training rollouts); s_0 head: lr {args.head_lr:g}, {args.head_epochs} "
          f"epochs, batch {args.s0_batch_size}, seed {args.seed}; ridge alpha {args.ridge_alpha:g}; features: "
          f"{result['cache_dir']}")
    print("prompt MRE ± SE over held-out prompts (%), value MSE at s_0 over EOS-terminated held-out completions")
    print(format_curve_table(rows, table_sets, last))
    if RECIPE_HEAD in result["recipes"]:
        print()
        print(f"{RECIPE_HEAD}: s_0 weight {args.recipe_boundary_weight:g}, lr {args.recipe_lr:g} "
              f"{args.recipe_lr_scheduler_type}, {args.recipe_epochs} "
              f"epochs, batch {args.head_batch_size} states, seed {args.seed}; RE at 0/25/50/75 % of the trajectory "
              f"(%) and value MSE over every state of the EOS-terminated completions of {last}")
        print(format_recipe_table(rows, table_sets, last))
    print()
    print(f"paired by prompt: prompt MRE minus that of the {PAIRED_REFERENCE} (pp, ± SE over prompts)")
    print(format_paired_table(rows, table_sets))
    for name in sets:
        print(f"{name}: " + ", ".join(f"{label} {100 * mre:.1f} ± {100 * se:.1f} %"
                                      for label, (mre, se) in result["references"][name].items()))
    for name, by_set in result["slopes"].items():
        reach = result["prompts_for_target"][name]
        reach = ("never (slope >= 0)" if by_set[first]["slope"] >= 0 else f"~{reach:.0f} prompts" if reach < 1e6
                 else f"~{reach:.1e} prompts" if reach < 1e30 else "never in practice")
        print(f"slope per doubling of P x 1 prompts, {name}: " + ", ".join(
            f"{n} {100 * f['slope']:+.2f} ± {100 * f['slope_se']:.2f} pp" for n, f in by_set.items())
            + f"; the line reaches {100 * args.target_mre:.1f} % on {first} at {reach}")
    reached = [f"{name} at {prompts} x {samples}" for name, prompts, samples in result["target_reached_by"]]
    print(f"target {100 * args.target_mre:.1f} % on {first}: "
          + (f"reached by {', '.join(reached)}" if reached else "not reached by any row"))
    print("not measured: " + result["not_measured"])


def curve(args) -> None:
    rows_spec = [parse_curve_row(text) for text in args.rows]
    root, data = _curve_data(args, rows_spec)
    if data is None:
        return
    settings = CurveSettings(**{field.name: getattr(args, field.name) for field in dataclasses.fields(CurveSettings)})
    references = {s.name: {name: (cell["prompt_mre"], cell["prompt_mre_se"])
                           for name, cell in reference_cells(s, data.gamma).items()} for s in data.sets}
    rows = []
    for prompts, samples in rows_spec:
        row = evaluate_curve_row(data, prompts, samples, settings)
        rows.append(row)
        print(f"{prompts} x {samples}: " + "; ".join(
            f"{name} " + ", ".join(f"{100 * cell['prompt_mre']:.1f} %" for cell in row["eval"][name].values())
            for name in data.predictors) + f" ({row['seconds']:.0f} s)", flush=True)
    slopes, needed = curve_slopes(rows, [s.name for s in data.sets], data.predictors, args.target_mre)
    result = _curve_result(args, data, root, rows_spec, rows, references, slopes, needed)
    _print_curve(args, result)
    _write_json(args.output, result)
    if args.plot and slopes:
        plot_curve(result, args.plot)
        print(f"wrote {args.plot}")


def _add_variant_arguments(parser) -> None:
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


def _add_curve_arguments(parser) -> None:
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


def parse_args(argv=None):
    from lenvm_rl.commands.base import make_parser
    from lenvm_rl.commands.serve import VLLMEngineArguments

    vllm_options = make_parser(VLLMEngineArguments, "", add_help=False)  # lenvm-rl evaluate's --vllm_* options
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], parents=[vllm_options])
    parser.add_argument("part", choices=["throughput", "pretrain", "variants", "curve", "extraction"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--backend", choices=["hf", "vllm"], default="hf",
                        help="(variants, curve) the features' trunk: hf, the --model backbone in this process "
                             "(--device); vllm, the LenVM checkpoint --model in vLLM (--vllm_* options)")
    parser.add_argument("--records", type=int, default=16, help="(extraction) the first N training records")
    parser.add_argument("--train-rollouts", required=True, nargs="+", help="rollout file(s); shards are merged")
    parser.add_argument("--eval-rollouts", nargs="+", help="held-out rollout file(s) (pretrain, variants)")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per trunk batch (all parts)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per round (throughput)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds (throughput, extraction)")
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
    _add_variant_arguments(parser)
    _add_curve_arguments(parser)
    args = parser.parse_args(argv)
    if args.part == "curve" and args.gamma is not None and not 0 < args.gamma < 1:
        parser.error(f"--gamma must be in (0, 1), got {args.gamma}")
    if args.output is None:
        args.output = f"bench/results/{'curve' if args.part == 'curve' else 'variants'}-gsm8k.json"
    return args


if __name__ == "__main__":
    arguments = parse_args()
    {"throughput": throughput, "pretrain": pretrain, "variants": variants, "curve": curve,
     "extraction": extraction}[arguments.part](arguments)
