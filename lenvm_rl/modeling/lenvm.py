"""The Length Value Model: a causal-LM backbone with a two-layer MLP value head.

``z_t = W2 · SiLU(W1 h_t + b1) + b2`` on the final hidden state ``h_t``; ``V(s_t) = -sigmoid(z_t)``
(docs/method.md#the-model). The public sign convention is the paper's ``V`` in ``(-1, 0)``; :mod:`lenvm_rl.core`
converts to lengths and to the serving convention ``u = -V``.

Checkpoints use the reference layout, so published LenVMs load here and ours load there::

    checkpoint/
      config.json, model.safetensors, tokenizer files   # the backbone, a Hugging Face model dir
      value_head.safetensors                            # v_head.fc.{weight,bias}, v_head.summary.{weight,bias}

``config.json`` also records ``lenvm_gamma`` (the discount the head was trained for), how the states
``s_0`` of its training prompts were built (``lenvm_prompt_format``: ``"raw"`` text or ``"chat"`` messages,
see :func:`lenvm_rl.data.encode_prompt`; ``lenvm_chat_template_hash``: the chat template's hash), and
``lenvm_vocabulary_hash`` (:func:`lenvm_rl.modeling.vocabulary.vocabulary_hash` of its tokenizer, so the
vocabulary can be checked without tokenizer files). A checkpoint written before these were recorded loads
with ``prompt_format == "unknown"``. The architecture is named ``<Arch>ForLengthValueModel`` as the reference
serving code expects. A LoRA-wrapped
backbone is saved as a PEFT adapter directory instead of a full backbone; call
:meth:`LenVM.merge_and_unload` first to write the reference layout.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, PreTrainedModel

from lenvm_rl.core import logits_to_value
from lenvm_rl.data.prompts import PROMPT_FORMATS
from lenvm_rl.data.rollouts import pad_token_ids
from lenvm_rl.modeling.embedded import EMBEDDED_MODELS, resolve_model_path
from lenvm_rl.modeling.vision import batch_vision_rows, is_vision_language, vision_position_ids

__all__ = ["VALUE_HEAD_FILE", "LenVM", "LenVMOutput", "ValueHead", "load_backbone"]

VALUE_HEAD_FILE = "value_head.safetensors"
GAMMA_CONFIG_KEY = "lenvm_gamma"
RECORD_CONFIG_KEYS = {"prompt_format": "lenvm_prompt_format", "chat_template_hash": "lenvm_chat_template_hash",
                      "vocabulary_hash": "lenvm_vocabulary_hash"}
"""LenVM attribute -> ``config.json`` key of what a checkpoint records about its training data."""
ADAPTER_CONFIG_FILE = "adapter_config.json"


class ValueHead(nn.Module):
    """``z = summary(SiLU(fc(h)))``, computed in float32 whatever the backbone dtype or autocast."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, hidden_size)
        self.summary = nn.Linear(hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """``hidden_states`` (..., H) -> logits ``z`` (...) in float32."""
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            h = hidden_states.float()
            h = F.silu(F.linear(h, self.fc.weight.float(), self.fc.bias.float()))
            return F.linear(h, self.summary.weight.float(), self.summary.bias.float()).squeeze(-1)

    def expected_shapes(self, prefix: str = "v_head.") -> dict[str, tuple[int, ...]]:
        return {prefix + name: tuple(p.shape) for name, p in self.named_parameters()}


@dataclass
class LenVMOutput:
    """Per-token outputs of :class:`LenVM`, all (B, S) float32; 0 at padding positions.

    ``values`` is ``V(s_t) = -sigmoid(logits)``; ``logits`` is the head output ``z``. (A plain
    dataclass: a ``ModelOutput`` is a dict, whose ``values()`` method this field would shadow.)
    """

    values: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: object | None = None


def _is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _check_gamma(gamma: float) -> float:
    if not isinstance(gamma, (float, int)) or not 0.0 < float(gamma) < 1.0 or math.isnan(gamma):
        raise ValueError(f"gamma must be a float in (0, 1), got {gamma!r}")
    return float(gamma)


def read_config_records(config, gamma: float | None, config_file: Path) -> tuple[float, dict]:
    """A checkpoint's discount and records from its ``config`` (read from ``config_file``, named in errors).

    Returns ``gamma`` if given (it must agree with a recorded ``lenvm_gamma``), else the recorded one, and
    ``{attribute: value}`` of the :data:`RECORD_CONFIG_KEYS` the config records. Raises ``ValueError`` for no
    gamma at all, a disagreeing one, or an unknown prompt format.
    """
    config_gamma = getattr(config, GAMMA_CONFIG_KEY, None)
    if gamma is None and config_gamma is None:
        raise ValueError(
            f"{config_file} does not record `{GAMMA_CONFIG_KEY}`; pass gamma= (the discount "
            "the value head was trained with)"
        )
    if gamma is not None and config_gamma is not None and not math.isclose(gamma, config_gamma):
        raise ValueError(
            f"gamma={gamma} disagrees with {GAMMA_CONFIG_KEY}={config_gamma} in {config_file}; "
            "a value head only models the discount it was trained with"
        )
    records = {attribute: getattr(config, key) for attribute, key in RECORD_CONFIG_KEYS.items()
               if getattr(config, key, None) is not None}
    if records.get("prompt_format", "unknown") not in (*PROMPT_FORMATS, "unknown"):
        raise ValueError(f"{config_file}: {RECORD_CONFIG_KEYS['prompt_format']} must be one of "
                         f"{(*PROMPT_FORMATS, 'unknown')}, got {records['prompt_format']!r}")
    return (config_gamma if gamma is None else gamma), records


class LenVM(nn.Module):
    """A causal-LM backbone plus the LenVM value head.

    Args:
        backbone: any ``transformers`` causal LM (``AutoModelForCausalLM``), optionally wrapped by
            PEFT (``get_peft_model``). Only its trunk runs: the LM head costs nothing.
        gamma: the discount the value head models; needed to turn values into lengths.
        v_head: an existing head; a freshly initialised one when omitted.

    Attributes recorded in a checkpoint (set by :class:`~lenvm_rl.LenVMTrainer` from its data):
        prompt_format: ``"raw"``, ``"chat"`` or ``"unknown"``: how the training prompts became ``s_0``.
        chat_template_hash: :func:`lenvm_rl.data.chat_template_hash` of those chat prompts, else ``None``.
        vocabulary_hash: :func:`lenvm_rl.modeling.vocabulary.vocabulary_hash` of its tokenizer, or ``None``.
    """

    def __init__(self, backbone: PreTrainedModel, *, gamma: float, v_head: ValueHead | None = None):
        super().__init__()
        self.backbone = backbone
        self.gamma = _check_gamma(gamma)
        self.prompt_format = "unknown"
        self.chat_template_hash: str | None = None
        self.vocabulary_hash: str | None = None
        # The LM head never runs; an untied one is frozen so optimisers and DDP ignore it.
        lm_head = self._causal_lm.get_output_embeddings()
        if lm_head is not None and lm_head.weight is not self._causal_lm.get_input_embeddings().weight:
            lm_head.requires_grad_(False)
        hidden_size = self.config.get_text_config().hidden_size  # a VL config keeps it in its text_config
        self.v_head = (v_head or ValueHead(hidden_size)).float()
        if self.v_head.fc.in_features != hidden_size:
            raise ValueError(
                f"v_head expects hidden size {self.v_head.fc.in_features} but the backbone has {hidden_size}"
            )

    # ------------------------------------------------------------------ construction
    @property
    def config(self):
        return self._causal_lm.config

    @property
    def _causal_lm(self) -> PreTrainedModel:
        return base_causal_lm(self.backbone)

    @classmethod
    def from_backbone(
        cls,
        name_or_path: str | os.PathLike,
        *,
        gamma: float = 0.997,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        trust_remote_code: bool = False,
    ) -> "LenVM":
        """A LenVM with a freshly initialised (untrained) head on a pretrained backbone.

        ``name_or_path`` is a local directory, a Hub id or a short name such as ``smollm2-135m``.
        ``gamma`` defaults to 0.997, the paper's value for Qwen2.5 policies; pick it from your data
        with :func:`lenvm_rl.core.gamma_from_lengths`. Seed with ``torch.manual_seed`` for a
        reproducible head.
        """
        backbone = load_backbone(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        model = cls(backbone, gamma=gamma)
        return model.to(device) if device is not None else model

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        gamma: float | None = None,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        trust_remote_code: bool = False,
    ) -> "LenVM":
        """Load a LenVM checkpoint in the reference layout (or a PEFT adapter directory).

        The value head must be present and match the backbone exactly: a missing file, a missing or
        unexpected key, or a wrong shape raises an error naming the file and the keys. ``gamma`` is
        read from ``config.json`` (``lenvm_gamma``); pass it for checkpoints that do not record it.
        """
        if str(name_or_path) in EMBEDDED_MODELS:
            raise ValueError(
                f"{str(name_or_path)!r} is a bare backbone with no value head; use "
                f"LenVM.from_backbone({str(name_or_path)!r}) for a fresh (untrained) head, or pretrain one"
            )
        path = _model_dir(name_or_path)
        if (path / ADAPTER_CONFIG_FILE).is_file():
            backbone = _load_peft_backbone(path, dtype=dtype, trust_remote_code=trust_remote_code)
        else:
            backbone = load_backbone(path, dtype=dtype, trust_remote_code=trust_remote_code)
        gamma, records = read_config_records(backbone.config, gamma, path / "config.json")
        model = cls(backbone, gamma=gamma)
        for attribute, value in records.items():
            setattr(model, attribute, value)
        model.v_head.load_state_dict(_read_value_head(path / VALUE_HEAD_FILE, model.v_head))
        return model.to(device) if device is not None else model

    def save_pretrained(self, save_directory: str | os.PathLike, state_dict: dict | None = None) -> None:
        """Write the reference layout: backbone directory plus ``value_head.safetensors``.

        ``state_dict`` (keys ``backbone.*`` and ``v_head.*``, as from ``self.state_dict()``) replaces
        the module's own tensors, e.g. the full state a ZeRO-3 ``Trainer`` gathers before saving.
        """
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        state_dict = self.state_dict() if state_dict is None else state_dict
        setattr(self.config, GAMMA_CONFIG_KEY, self.gamma)
        for attribute, key in RECORD_CONFIG_KEYS.items():
            setattr(self.config, key, getattr(self, attribute))
        backbone_state = {k.removeprefix("backbone."): v for k, v in state_dict.items() if k.startswith("backbone.")}
        self.backbone.save_pretrained(save_directory, state_dict=backbone_state)
        # save_pretrained writes `architectures` from the class; the serving code wants the LenVM name.
        # A PEFT adapter directory gets the config too, so gamma travels with the adapter.
        config = self.config.to_dict()
        config["architectures"] = [re.sub("For(CausalLM|ConditionalGeneration)$", "ForLengthValueModel",
                                          type(self._causal_lm).__name__)]
        (save_directory / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        head = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if k.startswith("v_head.")}
        save_file(head, save_directory / VALUE_HEAD_FILE, metadata={"format": "pt"})

    def merge_and_unload(self) -> "LenVM":
        """Merge LoRA adapters into the backbone (in place), so the reference layout can be saved."""
        if _is_peft_model(self.backbone):
            self.backbone = self.backbone.merge_and_unload()
        return self

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        """Activation checkpointing in the backbone; ``Trainer`` calls it for ``activation_checkpointing``.

        Keyword arguments go to the backbone's ``activation_checkpointing_enable`` (its
        ``gradient_checkpointing_enable`` on transformers 5.19 and older, which vLLM still pins).
        """
        lm = self._causal_lm
        if hasattr(lm, "activation_checkpointing_enable"):
            lm.activation_checkpointing_enable(activation_checkpointing_kwargs, **kwargs)
        else:
            lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=activation_checkpointing_kwargs, **kwargs)
        if _is_peft_model(self.backbone):
            lm.enable_input_require_grads()  # frozen embeddings must still pass gradients on

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None, **kwargs) -> None:
        """What ``Trainer`` calls for ``gradient_checkpointing`` on transformers 5.19 and older."""
        self.activation_checkpointing_enable(gradient_checkpointing_kwargs, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        **images,
    ) -> LenVMOutput:
        """Per-token values on a padded batch (left, right or mixed padding).

        Args:
            input_ids: (B, S) token ids.
            attention_mask: (B, S_past + S), 1 for real tokens. Positions are derived from it
                (``cumsum - 1``), so a sequence gets the same values whatever its padding side.
            position_ids: (B, S), overrides the derived positions.
            cache / use_cache: as in ``transformers`` (a ``Cache``); run the trunk on a KV cache, e.g.
                to score one-token extensions of a cached prefix.
            **images: a vision-language backbone's image inputs, ``pixel_values`` and ``image_grid_thw`` as its
                processor returns them for the batch (see :mod:`lenvm_rl.modeling.vision`).

        Returns:
            :class:`LenVMOutput` with ``values`` and ``logits`` of shape (B, S), float32, 0 at
            padding positions, and the updated cache when ``use_cache``.
        """
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden_states, cache = self.trunk(input_ids, attention_mask, position_ids, cache=cache, use_cache=use_cache,
                                          **images)
        out = self.head(hidden_states, attention_mask[:, -input_ids.shape[1] :])
        out.cache = cache
        return out

    def trunk(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache=None,
        use_cache: bool = False,
        **images,
    ) -> tuple[torch.Tensor, object | None]:
        """The backbone's final hidden states (B, S, H) and its updated cache (``None`` unless ``use_cache``).

        Arguments as in :meth:`forward`. With :meth:`head` this is the forward pass split in two, so a
        caller can run the trunk once and the head many times (e.g. refitting the head on fixed states).
        """
        return run_trunk(self.backbone, input_ids, attention_mask, position_ids, cache=cache, use_cache=use_cache,
                         **images)

    def head(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> LenVMOutput:
        """The value head on hidden states (B, S, H): ``values``, ``logits`` (B, S) float32, 0 where ``mask`` is 0."""
        real = mask.bool()
        logits = self.v_head(hidden_states).masked_fill(~real, 0.0)
        values = logits_to_value(logits).masked_fill(~real, 0.0)
        return LenVMOutput(values=values, logits=logits)

    @torch.inference_mode()
    def score(
        self, sequences: list[list[int]], *, batch_size: int = 16, progress: bool = False,
        images: list[dict | None] | None = None,
    ) -> list[LenVMOutput]:
        """No-grad values and logits for every token of many token sequences of any lengths.

        Sequences are sorted by length so each batch carries little padding, run ``batch_size`` at
        a time, and returned in input order: ``result[i].values`` and ``result[i].logits`` are
        float32 (len(sequences[i]),) CPU tensors whose entry ``j`` belongs to token ``j``. ``images[i]``
        holds the image inputs of ``sequences[i]`` (``pixel_values``, ``image_grid_thw``) or ``None``.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for i, seq in enumerate(sequences):
            if len(seq) == 0:
                raise ValueError(f"sequences[{i}] is empty; a state needs at least one token")
        from tqdm.auto import tqdm

        device = next(self.parameters()).device
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]), reverse=True)
        results: list[LenVMOutput | None] = [None] * len(sequences)
        batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        for batch in tqdm(batches, desc="LenVM scoring", unit="batch", disable=not progress):
            input_ids, attention_mask = pad_token_ids([sequences[i] for i in batch], 0)
            batch_images = batch_vision_rows([images[i] for i in batch], device) if images is not None else {}
            out = self(input_ids.to(device), attention_mask.to(device), **batch_images)
            values, logits = out.values.cpu(), out.logits.cpu()
            for row, i in enumerate(batch):
                n = len(sequences[i])
                results[i] = LenVMOutput(values=values[row, :n].clone(), logits=logits[row, :n].clone())
        return results


# ---------------------------------------------------------------------- loading helpers
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"]


def base_causal_lm(model: nn.Module) -> PreTrainedModel:
    """The causal LM itself: ``model``, or the model under its PEFT wrapper (adapter layers included)."""
    return model.get_base_model() if _is_peft_model(model) else model


def run_trunk(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    cache=None,
    use_cache: bool = False,
    **images,
) -> tuple[torch.Tensor, object | None]:
    """A causal LM's trunk (no LM head): final hidden states (B, S, H) and the cache (``None`` unless ``use_cache``).

    Positions are derived from ``attention_mask`` (``cumsum - 1``) unless given, so a sequence gets the
    same states whatever its padding side. A PEFT-wrapped model runs with its active adapters. A
    vision-language model takes its ``images`` inputs and its own 3-D positions
    (:func:`lenvm_rl.modeling.vision.vision_position_ids`).
    """
    causal_lm = base_causal_lm(model)
    if images or is_vision_language(causal_lm.config):
        position_ids = vision_position_ids(causal_lm, input_ids, attention_mask, position_ids, cache, **images)
    elif position_ids is None:
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
    trunk = causal_lm.base_model
    cache_arg = _cache_argument(type(trunk))
    outputs = trunk(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=use_cache,
        **images,
        **{cache_arg: cache},
    )
    return outputs.last_hidden_state, outputs[cache_arg] if use_cache else None


def _model_dir(name_or_path: str | os.PathLike) -> Path:
    """A local model directory for a short name, a local path or a Hub id (downloaded, safetensors only)."""
    name = str(name_or_path)
    path = Path(resolve_model_path(name))
    if path.is_dir():
        if not ((path / "config.json").is_file() or (path / ADAPTER_CONFIG_FILE).is_file()):
            raise FileNotFoundError(f"{path} is not a model directory: it has no config.json")
        return path
    is_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    known = ", ".join(EMBEDDED_MODELS)
    if path.exists() or not is_hub_id:
        raise FileNotFoundError(f"model {name!r} is not a local directory, a Hub id or a short name ({known})")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, allow_patterns=_HUB_PATTERNS))
    except Exception as err:  # offline, unknown repository, gated, ...
        raise FileNotFoundError(
            f"model {name!r} is not a local directory or a short name ({known}), and the Hub lookup failed: {err}"
        ) from err


@functools.cache
def _cache_argument(trunk_class: type) -> str:
    """The trunk's KV-cache argument and output: ``cache`` in current transformers, ``past_key_values``
    in 5.19 and older (the newest that vLLM allows)."""
    return "cache" if "cache" in inspect.signature(trunk_class.forward).parameters else "past_key_values"


def load_backbone(name_or_path, *, dtype=None, trust_remote_code: bool = False) -> PreTrainedModel:
    """A causal LM (or a vision-language model, e.g. Qwen2.5-VL) from a short name, a local directory or a Hub id;
    safetensors only."""
    path = _model_dir(name_or_path)
    kwargs = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    auto_class = AutoModelForImageTextToText if is_vision_language(path) else AutoModelForCausalLM
    try:
        return auto_class.from_pretrained(path, **kwargs)
    except OSError as err:
        raise FileNotFoundError(f"could not load the backbone from {path}: {err}") from err


def _load_peft_backbone(path: Path, *, dtype, trust_remote_code: bool) -> nn.Module:
    from peft import PeftModel

    base = json.loads((path / ADAPTER_CONFIG_FILE).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path / ADAPTER_CONFIG_FILE} does not name base_model_name_or_path")
    backbone = load_backbone(base, dtype=dtype, trust_remote_code=trust_remote_code)
    if (path / "config.json").is_file():  # gamma and architecture saved beside the adapter
        saved = json.loads((path / "config.json").read_text())
        for key in (GAMMA_CONFIG_KEY, *RECORD_CONFIG_KEYS.values()):
            if key in saved:
                setattr(backbone.config, key, saved[key])
    return PeftModel.from_pretrained(backbone, path, is_trainable=False)


def _read_value_head(head_file: Path, v_head: ValueHead) -> dict[str, torch.Tensor]:
    """Read ``value_head.safetensors`` and check it key by key against ``v_head``."""
    expected = v_head.expected_shapes()
    if not head_file.is_file():
        raise FileNotFoundError(
            f"{head_file} not found: a LenVM checkpoint needs a value head with keys {sorted(expected)}; "
            "use LenVM.from_backbone(...) to start from a bare backbone"
        )
    try:
        tensors = load_file(head_file)
    except Exception as err:
        raise ValueError(f"{head_file} is not a readable safetensors file: {err}") from err
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{head_file} does not hold a LenVM value head: missing keys {missing}, unexpected keys {unexpected}; "
            f"expected exactly {sorted(expected)}"
        )
    for key, shape in expected.items():
        if tuple(tensors[key].shape) != shape:
            raise ValueError(
                f"{head_file}: {key} has shape {tuple(tensors[key].shape)} but the backbone needs {shape}"
            )
    return {key.removeprefix("v_head."): tensor for key, tensor in tensors.items()}
