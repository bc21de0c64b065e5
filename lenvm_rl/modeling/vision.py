"""Vision-language backbones under a LenVM: Qwen2.5-VL (and Qwen2-VL, whose model classes share the interface).

A VL LenVM is the same model as a text one: the value head reads the language model's final hidden state at
every token, image placeholders included as context (docs/method.md#the-model). What differs is the trunk's input:
the image placeholders (``<|image_pad|>``, as many per image as the processor's ``image_grid_thw`` says) are
filled with the vision encoder's features of ``pixel_values``, and the positions are the family's 3-D rotary
positions (``get_rope_index``), computed over each row's real tokens only, so a sequence gets the same values
whatever its padding side.

The vision inputs are those a Qwen processor returns for a batch, flat over the batch:

    pixel_values     (N_patches, D)  the patches of every image of every row, row after row
    image_grid_thw   (N_images, 3)   each image's (t, h, w) patch grid; it has prod(t, h, w) / merge**2 tokens

:func:`split_vision_rows` cuts them per row (by counting each row's image tokens) and :func:`batch_vision_rows`
joins any rows back, so callers batch rows of a VL data set as they batch token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["VISION_INPUT_KEYS", "batch_vision_rows", "check_vision_inputs", "freeze_vision_tower", "generation_inputs",
           "image_span_mask", "is_vision_language", "language_model_lora_config", "lora_language_model",
           "placeholder_token_ids", "split_vision_rows", "vision_inputs", "vision_position_ids"]

VISION_INPUT_KEYS = ("pixel_values", "image_grid_thw")
"""The image inputs a VL LenVM's forward takes beside the token ids (Qwen2-VL and Qwen2.5-VL)."""
LANGUAGE_MODEL_LINEARS = r".*language_model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)"
"""The linear layers of a Qwen-VL language model (a PEFT ``target_modules`` regex); the vision tower is left out."""


def is_vision_language(config_or_dir) -> bool:
    """Whether a model config (or a model directory's ``config.json``) is a vision-language model's."""
    if isinstance(config_or_dir, (str, Path)):
        config_file = Path(config_or_dir) / "config.json"
        return config_file.is_file() and "vision_config" in json.loads(config_file.read_text())
    return getattr(config_or_dir, "vision_config", None) is not None


def vision_inputs(batch: dict) -> dict:
    """The image inputs of a batch dict (``pixel_values``, ``image_grid_thw``), those present; ``{}`` for text."""
    return {key: batch[key] for key in VISION_INPUT_KEYS if batch.get(key) is not None}


def _tokens_per_image(config, image_grid_thw: Tensor) -> Tensor:
    return image_grid_thw.prod(-1) // config.vision_config.spatial_merge_size ** 2


def check_vision_inputs(input_ids: Tensor, config, pixel_values: Tensor | None = None,
                        image_grid_thw: Tensor | None = None, **unknown) -> None:
    """Raise ``ValueError`` unless the image inputs fit the token ids: one feature per image placeholder token.

    ``input_ids`` is (B, S) and the image inputs are the whole batch's (see the module docstring).
    """
    if unknown:
        raise ValueError(f"unsupported vision inputs {sorted(unknown)}: a VL LenVM takes {list(VISION_INPUT_KEYS)} "
                         "(images; videos are not supported)")
    if (pixel_values is None) != (image_grid_thw is None):
        raise ValueError("give pixel_values and image_grid_thw together (as the processor returns them)")
    video_tokens = int((input_ids == config.video_token_id).sum())
    if video_tokens:
        raise ValueError(f"the input_ids hold {video_tokens} video placeholder tokens: videos are not supported")
    image_tokens = int((input_ids == config.image_token_id).sum())
    features = 0 if image_grid_thw is None else int(_tokens_per_image(config, image_grid_thw).sum())
    if image_tokens != features:
        raise ValueError(
            f"the input_ids hold {image_tokens} image placeholder tokens (id {config.image_token_id}) but "
            f"image_grid_thw describes {features} image features: give the pixel_values and image_grid_thw the "
            "processor returned for these very ids (an image's token count depends on its size and the processor's "
            "min/max pixels)")
    if pixel_values is not None and pixel_values.shape[0] != int(image_grid_thw.prod(-1).sum()):
        raise ValueError(f"pixel_values has {pixel_values.shape[0]} patch rows but image_grid_thw describes "
                         f"{int(image_grid_thw.prod(-1).sum())}")


def vision_position_ids(model, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None,
                        cache=None, **images) -> Tensor:
    """The 3-D rotary positions (3, B, S) of a VL causal LM ``model`` for a padded batch, after checking ``images``.

    Positions count each row's real tokens only (``attention_mask``), so any padding side gives the same states.
    ``position_ids`` given are returned as they are; a KV cache needs them (the rotary offset of the cached
    images is not recoverable from the new tokens alone).
    """
    config = model.config
    if not is_vision_language(config):
        raise ValueError(f"{type(model).__name__} is a text-only backbone: it takes no {sorted(images)}")
    check_vision_inputs(input_ids, config, **images)
    if position_ids is not None:
        return position_ids
    if cache is not None:
        raise ValueError("a VL LenVM runs on a KV cache only with explicit position_ids (the 3-D rotary positions "
                         "of the whole sequence); call it without a cache")
    trunk = model.base_model
    if not hasattr(trunk, "get_rope_index"):
        raise NotImplementedError(f"{type(model).__name__}: only Qwen2-VL-style backbones (get_rope_index, "
                                  "pixel_values and image_grid_thw) are supported as VL LenVMs")
    types = torch.zeros_like(input_ids, dtype=torch.int)
    types[input_ids == config.image_token_id] = 1
    return trunk.get_rope_index(input_ids, mm_token_type_ids=types, image_grid_thw=images.get("image_grid_thw"),
                                attention_mask=attention_mask)[0]


def placeholder_token_ids(config) -> set[int]:
    """The image and video placeholder token ids of a VL config; empty for a text config."""
    if not is_vision_language(config):
        return set()
    return {config.image_token_id, config.video_token_id}


def image_span_mask(input_ids: Tensor, config) -> Tensor:
    """(B, S) bool, True at the states inside an image span: its ``<|vision_start|>`` and its placeholder tokens.

    A state there has seen part of an image; value pretraining gives it no loss. ``<|vision_end|>`` closes the
    span: the state after it has seen the whole image.
    """
    ids = (config.vision_start_token_id, config.image_token_id, config.video_token_id)
    return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))


def split_vision_rows(input_ids: Tensor, config, pixel_values: Tensor | None = None,
                      image_grid_thw: Tensor | None = None, num_images: list[int] | None = None
                      ) -> list[dict | None]:
    """The batch-flat image inputs cut per row of ``input_ids`` (B, S): one dict per row, ``None`` without images.

    Each row takes as many images, in order, as cover its image placeholder tokens; ``num_images`` (images per
    row, as TRL's GRPO passes it) is checked against that when given. Mask padding out of ``input_ids`` first
    if the pad id could be an image token.
    """
    check_vision_inputs(input_ids, config, pixel_values, image_grid_thw)
    rows: list[dict | None] = [None] * input_ids.shape[0]
    if pixel_values is None:
        return rows
    tokens = _tokens_per_image(config, image_grid_thw).tolist()
    patches = image_grid_thw.prod(-1).tolist()
    wanted = (input_ids == config.image_token_id).sum(1).tolist()
    image, patch = 0, 0
    for row, need in enumerate(wanted):
        first, first_patch = image, patch
        while need > 0:
            need -= tokens[image]
            patch += patches[image]
            image += 1
        if need < 0 or (num_images is not None and image - first != num_images[row]):
            raise ValueError(f"row {row}: its image placeholder tokens do not match whole images of image_grid_thw "
                             f"(num_images={num_images}); the image inputs must be the processor's for these rows")
        if image > first:
            rows[row] = {"pixel_values": pixel_values[first_patch:patch], "image_grid_thw": image_grid_thw[first:image]}
    return rows


def batch_vision_rows(rows: list[dict | None], device: torch.device | str | None = None) -> dict:
    """Rows of :func:`split_vision_rows` (or of one prompt each) joined into one batch's image inputs, in row order,
    on ``device``; ``{}`` when no row has images."""
    present = [row for row in rows if row]
    if not present:
        return {}
    return {key: torch.cat([row[key] for row in present]).to(device) for key in VISION_INPUT_KEYS}


def generation_inputs(config, input_ids: Tensor, rows: list[dict | None], device) -> dict:
    """What a VL model's ``generate`` takes beside the padded ``input_ids``: the rows' image inputs joined, and the
    ``mm_token_type_ids`` (1 at image placeholder tokens) from which it builds its 3-D positions."""
    images = batch_vision_rows(rows, device)
    check_vision_inputs(input_ids, config, **images)
    return {**images, "mm_token_type_ids": (input_ids == config.image_token_id).int().to(device)}


def freeze_vision_tower(backbone) -> None:
    """Freeze the vision encoder and its merger (``visual``) of a VL backbone, as the reference recipe trains; a text
    backbone is left as it is."""
    from lenvm_rl.modeling.lenvm import base_causal_lm

    model = base_causal_lm(backbone)
    if is_vision_language(model.config):
        model.base_model.visual.requires_grad_(False)


def language_model_lora_config(**lora_kwargs):
    """A ``peft.LoraConfig`` on the language model's linear layers only (the vision tower stays as it is);
    ``lora_kwargs`` (``r``, ``lora_alpha``, ``lora_dropout``, ...) pass through."""
    from peft import LoraConfig

    if "target_modules" in lora_kwargs:
        raise ValueError("language_model_lora_config chooses target_modules (the language model's linear layers)")
    return LoraConfig(target_modules=LANGUAGE_MODEL_LINEARS, **lora_kwargs)


def lora_language_model(lenvm, **lora_kwargs):
    """``lenvm`` with LoRA adapters on its backbone's language model only (:func:`language_model_lora_config`);
    the base weights, the vision tower included, are frozen and the value head stays trainable. Returns ``lenvm``."""
    from peft import get_peft_model

    if not is_vision_language(lenvm.config):
        raise ValueError("lora_language_model is for VL backbones; wrap a text backbone with peft.get_peft_model")
    lenvm.backbone = get_peft_model(lenvm.backbone, language_model_lora_config(**lora_kwargs))
    return lenvm
