"""A LenVM for a policy, built once and cached: :func:`ensure_lenvm`.

>>> path = ensure_lenvm("smollm2-135m", prompts, LenVMAutoSettings(temperature=1.0))   # doctest: +SKIP

:func:`ensure_lenvm` samples the policy on its first ``settings.prompts`` prompts
(:func:`~lenvm_rl.data.sample_rollouts`, resumable), pretrains a LenVM on those rollouts with the value
pretraining pipeline (by default the value head only, on the frozen policy backbone) and keeps it under
``<cache>/<key>/lenvm``. The key hashes every setting that shapes the checkpoint (:func:`cache_key`), so
a later call with the same settings returns it at once. One builder per key: a file lock serialises
calls across runs. Under several processes sampling runs on the main process, pretraining on all.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LENVM_AUTO_MARKER", "LenVMAutoSettings", "cache_key", "ensure_lenvm", "lenvm_cache_dir",
           "load_sampling_policy", "refuse_pretraining_under_deepspeed"]

LENVM_AUTO_MARKER = "lenvm_auto.json"
"""Written into a finished checkpoint: its settings and cache key. A checkpoint without it is unfinished."""


@dataclass
class LenVMAutoSettings:
    """How :func:`ensure_lenvm` samples the policy and pretrains its LenVM, and where it caches it.

    Every field but ``sampling_batch_size`` and ``cache_dir`` is part of the cache key. Sample as the
    trainer generates (its temperature, top_p, length limit, seed and chat template arguments): a LenVM
    of another sampler models another policy.
    """

    prompts: int = field(default=64, metadata={"help": "--lenvm auto: the first N training prompts to sample the "
                                                       "policy on."})
    samples: int = field(default=8, metadata={"help": "--lenvm auto: completions per prompt."})
    epochs: float = field(default=2.0, metadata={"help": "--lenvm auto: value pretraining epochs."})
    learning_rate: float = field(default=1e-3, metadata={
        "help": "--lenvm auto: learning rate of value pretraining (1e-3 suits a head-only fit; use about 2e-5 "
                "with --lenvm_auto_freeze_backbone false)."})
    batch_size: int = field(default=8, metadata={"help": "--lenvm auto: sequences per device and pretraining step."})
    freeze_backbone: bool = field(default=True, metadata={
        "help": "--lenvm auto: train the value head only, on the frozen policy backbone (CPU-sized; the paper "
                "fine-tunes the whole model)."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "--lenvm auto: cache directory (default: $LENVM_RL_HOME/lenvm-auto, else "
                "~/.cache/lenvm_rl/lenvm-auto)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (the trainer's)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (the trainer's)."})
    max_completion_length: int = field(default=256, metadata={"help": "Length limit of a sample (the trainer's)."})
    seed: int = field(default=42, metadata={"help": "Seed of sampling and of the value head's initialisation."})
    dtype: str | None = field(default=None, metadata={"help": "dtype the policy and the LenVM are loaded in."})
    chat_template_kwargs: dict | None = field(default=None, metadata={
        "help": "Chat template arguments of chat prompts (the trainer's)."})
    sampling_batch_size: int = field(default=32, metadata={"help": "Sequences per generate call."})

    def __post_init__(self):
        for name in ("prompts", "samples", "batch_size", "max_completion_length", "sampling_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LenVMAutoSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LenVMAutoSettings.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"LenVMAutoSettings.top_p must be in (0, 1], got {self.top_p}")


_NOT_IN_KEY = ("cache_dir", "sampling_batch_size")


def cache_key(policy: str, settings: LenVMAutoSettings, prompts_source: dict) -> tuple[str, dict]:
    """``(key, recorded settings)``: the first 16 hex digits of the SHA-256 of the recorded settings.

    The recorded settings are the policy (a local path made absolute), ``prompts_source`` (what
    identifies the prompts) and every field of ``settings`` but ``cache_dir`` and ``sampling_batch_size``;
    ``chat_template_kwargs`` only when set, so keys of caches built before it was recorded stay valid.
    """
    def local_or_id(name: str) -> str:
        return str(Path(name).resolve()) if Path(name).exists() else name

    recorded = {"policy": local_or_id(policy), **prompts_source,
                **{k: v for k, v in dataclasses.asdict(settings).items() if k not in _NOT_IN_KEY}}
    if not recorded["chat_template_kwargs"]:
        del recorded["chat_template_kwargs"]
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16], recorded


def lenvm_cache_dir(policy: str, prompts: Sequence, settings: LenVMAutoSettings, *,
                    prompts_source: dict | None = None) -> Path:
    """``<cache>/<key>``: the rollouts, and the LenVM in ``lenvm/`` once finished (see :func:`ensure_lenvm`)."""
    from lenvm_rl.modeling.embedded import cache_dir

    key, _ = cache_key(policy, settings, _source(prompts, settings, prompts_source))
    return (Path(settings.cache_dir) if settings.cache_dir else cache_dir() / "lenvm-auto") / key


def refuse_pretraining_under_deepspeed(args, folder: Path) -> None:
    """Raise when ``args`` run under DeepSpeed and ``folder`` holds no finished LenVM: it cannot be built there."""
    if getattr(args, "deepspeed_plugin", None) is not None and not (folder / "lenvm" / LENVM_AUTO_MARKER).is_file():
        raise ValueError(
            "--lenvm auto cannot pretrain under DeepSpeed (accelerate allows one DeepSpeed Accelerator per "
            "process, and GRPO needs it): pretrain the LenVM first (lenvm-rl rollout, then "
            "recipes/pretrain_lenvm.py, ZeRO-3 included) and pass --lenvm PATH, or run this command once "
            f"without DeepSpeed to fill the cache ({folder}), which a DeepSpeed run then reuses")


def ensure_lenvm(policy: str, prompts: Sequence, settings: LenVMAutoSettings, *, args=None,
                 prompts_source: dict | None = None, model=None, tokenizer=None, model_name: str | None = None,
                 eval_rollouts: Path | None = None) -> str:
    """The path of a LenVM for ``policy``: the cached one, or one built now (sample, pretrain, cache).

    Args:
        policy: the policy's directory or Hub id (resolved, e.g. by :func:`~lenvm_rl.modeling.resolve_model_path`).
        prompts: training prompts (chat messages or strings); the first ``settings.prompts`` are sampled.
        settings: the sampler, the pretraining and the cache (:class:`LenVMAutoSettings`).
        args: the run's ``TrainingArguments`` (optional): pretraining follows their device, precision,
            logging and DDP timeout, sampling their device, and models load whole under their DeepSpeed.
        prompts_source: what identifies the prompts in the cache key (e.g. the dataset and split); default:
            a hash of the prompts sampled.
        model: the policy, already loaded on the main process (loaded from ``policy`` when needed and None).
        tokenizer: the policy's tokenizer (loaded from ``policy`` when needed and None).
        model_name: the policy's name recorded in the rollouts (default ``policy``).
        eval_rollouts: held-out samples of the policy; the pretraining report's held-out set when they were
            sampled like the LenVM's rollouts (same temperature, top_p and length limit).

    Raises:
        ValueError: under DeepSpeed without a cached LenVM (one DeepSpeed ``Accelerator`` per process).
    """
    from accelerate import PartialState

    from lenvm_rl.trainers.grpo_trainer import restore_deepspeed_config, whole_model_loading

    state = PartialState()
    source = _source(prompts, settings, prompts_source)
    folder = lenvm_cache_dir(policy, prompts, settings, prompts_source=source)
    refuse_pretraining_under_deepspeed(args, folder)
    final, rollouts, partial = folder / "lenvm", folder / "rollouts.jsonl", folder / "lenvm.partial"
    lock = None
    if state.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        lock = open(folder.parent / f".{folder.name}.lock", "w")  # one builder per key, across runs
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        with whole_model_loading(args):
            if state.is_main_process and not (final / LENVM_AUTO_MARKER).is_file():
                _sample(policy, prompts, settings, args, rollouts, model, tokenizer, model_name or policy)
        state.wait_for_everyone()
        if (final / LENVM_AUTO_MARKER).is_file():
            state.print(f"[lenvm auto] reusing the cached LenVM {final}")
            return str(final)
        _pretrain(policy, settings, args, rollouts, partial, eval_rollouts if _same_sampler(eval_rollouts, rollouts)
                  else None)
        restore_deepspeed_config(args)  # the pretraining arguments replaced it
        if state.is_main_process:
            _, recorded = cache_key(policy, settings, source)
            (partial / LENVM_AUTO_MARKER).write_text(json.dumps({"key": folder.name, "settings": recorded}, indent=2))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(partial, final)  # a finished checkpoint appears at once, with its marker
            print(f"[lenvm auto] cached the LenVM at {final}")
        state.wait_for_everyone()
    finally:
        if lock is not None:
            lock.close()
    return str(final)


def _source(prompts: Sequence, settings: LenVMAutoSettings, prompts_source: dict | None) -> dict:
    if prompts_source is not None:
        return prompts_source
    used = json.dumps(list(prompts[:settings.prompts]), sort_keys=True)
    return {"prompts_sha256": hashlib.sha256(used.encode()).hexdigest()}


def _sample(policy, prompts, settings, args, rollouts: Path, model, tokenizer, model_name: str) -> None:
    """Sample the policy on the first ``settings.prompts`` prompts into ``rollouts`` (resumable); main process."""
    from transformers import AutoTokenizer

    from lenvm_rl.data import RolloutConfig, sample_rollouts

    trust_remote_code = getattr(args, "trust_remote_code", False)
    prompts = list(prompts[:settings.prompts])
    print(f"[lenvm auto] sampling {len(prompts)} training prompts x {settings.samples} at temperature "
          f"{settings.temperature}, max {settings.max_completion_length} tokens -> {rollouts} (resumable)")
    if model is None:
        model = load_sampling_policy(policy, dtype=settings.dtype, device=getattr(args, "device", "cpu"),
                                     trust_remote_code=trust_remote_code)
    tokenizer = tokenizer or AutoTokenizer.from_pretrained(policy, trust_remote_code=trust_remote_code)
    config = RolloutConfig(num_completions=settings.samples, temperature=settings.temperature, top_p=settings.top_p,
                           max_new_tokens=settings.max_completion_length, batch_size=settings.sampling_batch_size,
                           seed=settings.seed, backend="hf", chat_template_kwargs=settings.chat_template_kwargs)
    sample_rollouts(model, tokenizer, prompts, rollouts, config, model_name=model_name,
                    progress=not getattr(args, "disable_tqdm", False))


def load_sampling_policy(path, *, dtype=None, device="cpu", trust_remote_code: bool = False):
    """A whole policy for sampling, in eval mode on ``device``: a model directory or a PEFT adapter one (merged)."""
    from lenvm_rl.modeling import load_backbone

    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if (Path(path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, use_safetensors=True, **kwargs).merge_and_unload()
    else:
        model = load_backbone(path, **kwargs)
    return model.to(device).eval()


def _same_sampler(eval_rollouts: Path | None, rollouts: Path) -> bool:
    """Whether the held-out evaluation rollouts were sampled with the temperature and length limit of ``rollouts``."""
    from lenvm_rl.data import read_rollouts

    if eval_rollouts is None or not Path(eval_rollouts).is_file() or not rollouts.is_file():
        return False
    keys = ("temperature", "top_p", "max_new_tokens")
    first = read_rollouts(rollouts)[0]["sampler"]
    return all(rec["sampler"].get(k) == first.get(k) for rec in read_rollouts(eval_rollouts) for k in keys)


def _pretrain(policy, settings: LenVMAutoSettings, args, rollouts: Path, output_dir: Path,
              eval_rollouts: Path | None) -> None:
    """Value pretraining on the rollouts with the shared pipeline, on every process."""
    from accelerate import PartialState
    from trl import ModelConfig

    from lenvm_rl.scripts.pretrain import PretrainScriptArguments
    from lenvm_rl.scripts.pretrain import main as pretrain
    from lenvm_rl.trainers import LenVMConfig

    PartialState().print(f"[lenvm auto] pretraining a LenVM on {rollouts} "
                         f"({'value head only' if settings.freeze_backbone else 'whole model'})")
    runtime = ({name: getattr(args, name) for name in ("use_cpu", "bf16", "logging_steps", "disable_tqdm",
                                                        "ddp_timeout")} if args is not None else {})
    config = LenVMConfig(
        output_dir=str(output_dir), seed=settings.seed, num_train_epochs=settings.epochs,
        learning_rate=settings.learning_rate, lr_scheduler_type="constant",
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=settings.batch_size,
        freeze_backbone=settings.freeze_backbone, save_strategy="no", report_to="none", **runtime,
    )
    pretrain(PretrainScriptArguments(train_rollouts=[str(rollouts)],
                                     eval_rollouts=[str(eval_rollouts)] if eval_rollouts else None,
                                     trust_remote_code=getattr(args, "trust_remote_code", False)),
             config, ModelConfig(model_name_or_path=policy, dtype=settings.dtype))
