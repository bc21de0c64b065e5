"""A LenVM for a policy: the one the package ships for it, or one built once and cached: :func:`ensure_lenvm`.

>>> policy = resolve_model_path("smollm2-135m")                                         # doctest: +SKIP
>>> path = ensure_lenvm(policy, prompts, LenVMAutoSettings(temperature=0.7))            # doctest: +SKIP

For a policy the package ships a LenVM for (:data:`PRETRAINED_DIR`: a value head for the embedded
SmolLM2-135M-Instruct, trained on its GSM8K rollouts), :func:`ensure_lenvm` returns that one, assembled once
into a loadable checkpoint under the cache (its head and configs, the embedded trunk's weights and tokenizer
linked), when the settings sample as its training rollouts were sampled (:func:`pretrained_lenvm`); it
samples nothing. Otherwise, or with ``settings.retrain``, it samples the policy on its first
``settings.prompts`` prompts (:func:`~lenvm_rl.data.sample_rollouts`, resumable), pretrains a LenVM on those
rollouts (:func:`~lenvm_rl.pretraining.pretrain_lenvm`; by default the value head only, on the frozen policy
backbone) and keeps it under ``<cache>/<key>/lenvm``. The key hashes every setting that shapes the checkpoint
(:func:`cache_key`), so a later call with the same settings returns it at once. One builder per key: a file
lock serialises calls across runs. Under several processes sampling runs on the main process, pretraining
on all.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["LENVM_AUTO_MARKER", "PRETRAINED_DIR", "LenVMAutoSettings", "cache_key", "ensure_lenvm", "lenvm_cache_dir",
           "load_sampling_policy", "pretrained_lenvm", "refuse_pretraining_under_deepspeed", "training_constant"]

LENVM_AUTO_MARKER = "lenvm_auto.json"
"""Written into a finished checkpoint: its settings and cache key. A checkpoint without it is unfinished."""

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
"""The LenVMs the package ships, one directory each: ``pretrained.json`` (the policy, the sampler of its training
rollouts, their constant baseline and the trunk's digest), a model card, the value head and its configs; no trunk."""

_PRETRAINED_FILE = "pretrained.json"
_TRUNK_FILES = ("model.safetensors", "tokenizer.json")
"""Files of a shipped LenVM's checkpoint that come from the policy (linked when it is assembled)."""


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
    retrain: bool = field(default=False, metadata={
        "help": "--lenvm auto: sample and pretrain a LenVM for the policy even where the package ships one that "
                "models its sampler (the embedded smollm2-135m at temperature 0.7 on chat prompts)."})

    def __post_init__(self):
        for name in ("prompts", "samples", "batch_size", "max_completion_length", "sampling_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LenVMAutoSettings.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("epochs", "learning_rate", "temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"LenVMAutoSettings.{name} must be > 0, got {getattr(self, name)}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"LenVMAutoSettings.top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.retrain, bool):
            raise ValueError(f"LenVMAutoSettings.retrain must be True or False, got {self.retrain!r}")


_NOT_IN_KEY = ("cache_dir", "sampling_batch_size", "retrain")


def cache_key(policy: str, settings: LenVMAutoSettings, prompts_source: dict) -> tuple[str, dict]:
    """``(key, recorded settings)``: the first 16 hex digits of the SHA-256 of the recorded settings.

    The recorded settings are the policy (a local path made absolute), ``prompts_source`` (what
    identifies the prompts) and every field of ``settings`` but ``cache_dir``, ``sampling_batch_size`` and ``retrain``;
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
    key, _ = cache_key(policy, settings, _source(prompts, settings, prompts_source))
    return _cache_root(settings) / key


def _cache_root(settings: LenVMAutoSettings) -> Path:
    from lenvm_rl.modeling.embedded import cache_dir

    return Path(settings.cache_dir) if settings.cache_dir else cache_dir() / "lenvm-auto"


def refuse_pretraining_under_deepspeed(args, folder: Path) -> None:
    """Raise when ``args`` run under DeepSpeed and ``folder`` holds no finished LenVM: it cannot be built there."""
    if getattr(args, "deepspeed_plugin", None) is not None and not (folder / "lenvm" / LENVM_AUTO_MARKER).is_file():
        raise ValueError(
            "--lenvm auto cannot pretrain under DeepSpeed (accelerate allows one DeepSpeed Accelerator per "
            "process, and GRPO needs it): pretrain the LenVM first (lenvm-rl rollout, then "
            "recipes/pretrain_lenvm.py, ZeRO-3 included) and pass --lenvm PATH, or run this command once "
            f"without DeepSpeed to fill the cache ({folder}), which a DeepSpeed run then reuses")


def ensure_lenvm(policy: str, prompts: Sequence, settings: LenVMAutoSettings, *, args=None,
                 prompts_source: dict | None = None, model=None, tokenizer=None, model_name: str | None = None) -> str:
    """The path of a LenVM for ``policy``: the one the package ships for it, the cached one, or one built now.

    The shipped one (:func:`pretrained_lenvm`: the embedded SmolLM2 sampled at temperature 0.7 on chat prompts,
    unless ``settings.retrain``) is assembled once under the cache and returned without sampling anything.
    Otherwise the policy is sampled, a LenVM pretrained on its rollouts and cached (see the module).

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

    Raises:
        ValueError: under DeepSpeed without a shipped or cached LenVM (one DeepSpeed ``Accelerator`` per process).
    """
    from accelerate import PartialState

    from lenvm_rl.trainers.grpo_trainer import restore_deepspeed_config, whole_model_loading

    shipped = pretrained_lenvm(policy, prompts, settings)
    if shipped is not None:
        return _assemble_pretrained(shipped, settings)
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
        _pretrain(policy, settings, args, rollouts, partial)
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


def pretrained_lenvm(policy: str, prompts: Sequence, settings: LenVMAutoSettings) -> Path | None:
    """The directory (in :data:`PRETRAINED_DIR`) of the LenVM the package ships for ``policy``, when
    :func:`ensure_lenvm` returns it; else None.

    It does when ``settings.retrain`` is off, ``policy`` is the embedded model the LenVM was trained on (its short
    name or its converted directory), and the settings sample as its training rollouts were sampled. A LenVM
    models the sampler of its rollouts: under another temperature or top_p, chat template arguments, prompts of
    another format (raw text against chat messages) or a longer length limit it would score another policy, so
    then a warning names the difference and this returns None (:func:`ensure_lenvm` trains one for the settings).
    A shorter length limit is no difference: the LenVM predicts the policy's remaining length as if uncut.
    """
    if settings.retrain:
        return None
    for path in sorted(PRETRAINED_DIR.glob(f"*/{_PRETRAINED_FILE}")):
        recorded = json.loads(path.read_text())
        if not _is_embedded(policy, recorded["policy"]):
            continue
        differences = _sampler_differences(path.parent, recorded, prompts, settings)
        if not differences:
            return path.parent
        warnings.warn(f"the LenVM shipped for {recorded['policy']} ({path.parent}) models another sampler than these "
                      f"settings: {'; '.join(differences)}. Sampling and pretraining one for them instead "
                      "(the lenvm_auto_* settings)", stacklevel=3)
    return None


def _is_embedded(policy: str, name: str) -> bool:
    """Whether ``policy`` is the embedded model ``name``: its short name or its converted directory (never converted
    here: another policy must not pay for a conversion)."""
    from lenvm_rl.modeling.embedded import cache_dir

    return str(policy) == name or Path(policy).resolve() == (cache_dir() / name).resolve()


def _sampler_differences(folder: Path, recorded: dict, prompts: Sequence, settings: LenVMAutoSettings) -> list[str]:
    """How ``settings`` and ``prompts`` sample unlike the training rollouts of the shipped LenVM in ``folder``."""
    from lenvm_rl.data.prompts import prompt_format
    from lenvm_rl.modeling.lenvm import RECORD_CONFIG_KEYS

    sampler = recorded["sampler"]
    differences = [f"{name} {getattr(settings, name)} (it models {sampler[name]})" for name in ("temperature", "top_p")
                   if not math.isclose(getattr(settings, name), sampler[name])]
    if settings.max_completion_length > sampler["max_new_tokens"]:
        differences.append(f"max_completion_length {settings.max_completion_length} (its rollouts were cut at "
                           f"{sampler['max_new_tokens']} tokens)")
    if settings.chat_template_kwargs:
        differences.append(f"chat_template_kwargs {settings.chat_template_kwargs} (it models none)")
    trained_on = json.loads((folder / "config.json").read_text())[RECORD_CONFIG_KEYS["prompt_format"]]
    formats = {prompt_format(prompt) for prompt in prompts[:settings.prompts]} - {trained_on}
    if formats:
        differences.append(f"{' and '.join(sorted(formats))} prompts (it models {trained_on} prompts)")
    return differences


def _assemble_pretrained(folder: Path, settings: LenVMAutoSettings) -> str:
    """The shipped LenVM ``folder`` as a checkpoint under the cache: its files copied, the embedded trunk's linked.

    The directory's name carries a hash of the shipped files, so a newer package never reuses an older assembly.
    The trunk's tensors are checked against the digest the LenVM recorded before anything is written.
    """
    from accelerate import PartialState

    from lenvm_rl.modeling import resolve_model_path

    state = PartialState()
    recorded = json.loads((folder / _PRETRAINED_FILE).read_text())
    shipped = sorted(p for p in folder.iterdir() if p.is_file())
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in shipped)).hexdigest()[:16]
    final = _cache_root(settings) / f"{folder.name}-{digest}"
    if state.is_main_process and not (final / LENVM_AUTO_MARKER).is_file():
        trunk = Path(resolve_model_path(recorded["policy"]))
        final.parent.mkdir(parents=True, exist_ok=True)
        with open(final.parent / f".{final.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one assembler across runs
            if not (final / LENVM_AUTO_MARKER).is_file():
                _check_trunk(trunk / "model.safetensors", recorded["trunk_sha256"], folder)
                staging = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}-"))
                for path in shipped:
                    shutil.copyfile(path, staging / path.name)
                for name in _TRUNK_FILES:
                    (staging / name).symlink_to(trunk / name)
                (staging / LENVM_AUTO_MARKER).write_text(json.dumps({"pretrained": folder.name, **recorded}, indent=2))
                shutil.rmtree(final, ignore_errors=True)
                os.replace(staging, final)
    state.wait_for_everyone()
    state.print(f"[lenvm auto] the LenVM shipped for {recorded['policy']} (sampled at temperature "
                f"{recorded['sampler']['temperature']}; {folder / 'README.md'}): {final}")
    return str(final)


def _check_trunk(weights: Path, expected: str, folder: Path) -> None:
    """Raise unless the tensors of ``weights`` hash to ``expected`` (their names, dtypes, shapes and bytes, sorted)."""
    import torch
    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(weights, "pt") as tensors:
        for name in sorted(tensors.keys()):
            tensor = tensors.get_tensor(name).contiguous()
            digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    if digest.hexdigest() != expected:
        raise ValueError(f"{weights} is not the trunk the LenVM {folder} was trained on (tensor digest "
                         f"{digest.hexdigest()[:16]}..., expected {expected[:16]}...): its value head would score "
                         "another model. Reinstall the embedded model's package, or sample and pretrain a LenVM for "
                         "this one (--lenvm_auto_retrain true)")


def training_constant(lenvm: str | os.PathLike, gamma: float) -> float | None:
    """The constant baseline (:func:`~lenvm_rl.evaluation.constant_baseline_value`, value space, discount ``gamma``)
    of the rollouts a LenVM returned by :func:`ensure_lenvm` was trained on; None for any other LenVM."""
    from lenvm_rl.data import read_rollouts
    from lenvm_rl.evaluation import constant_baseline_value

    marker = Path(lenvm) / LENVM_AUTO_MARKER
    if not marker.is_file():
        return None
    recorded = json.loads(marker.read_text())
    if "constant_baseline_value" in recorded:  # a shipped LenVM: its rollouts are not shipped, their constant is
        return recorded["constant_baseline_value"]
    rollouts = Path(lenvm).parent / "rollouts.jsonl"
    return constant_baseline_value(read_rollouts(rollouts), gamma) if rollouts.is_file() else None


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


def _pretrain(policy, settings: LenVMAutoSettings, args, rollouts: Path, output_dir: Path) -> None:
    """Value pretraining on the rollouts (:func:`~lenvm_rl.pretraining.pretrain_lenvm`), on every process."""
    from accelerate import PartialState
    from trl import ModelConfig

    from lenvm_rl.pretraining import pretrain_lenvm
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
    pretrain_lenvm([str(rollouts)], config, ModelConfig(model_name_or_path=policy, dtype=settings.dtype),
                   trust_remote_code=getattr(args, "trust_remote_code", False))
