"""Prompts with images, for vision-language policies and LenVMs (Qwen2.5-VL).

A prompt with images is a list of chat messages in TRL's structured format, whose content holds image parts
``{"type": "image", "image": X}`` beside text parts ``{"type": "text", "text": ...}``. ``X`` is a PIL image, a
local path (absolute, or relative to the working directory) or an embedded data URL
(``data:image/png;base64,...``). Rollout records and prompt files are JSONL, so there ``X`` is a path or a data
URL: :func:`jsonable_prompt` embeds in-memory images as PNG data URLs. Images are never fetched from the network.
A TRL dataset row with an ``image`` or ``images`` column becomes such a prompt with :func:`with_images`.

Such a prompt becomes ``s_0`` as TRL's GRPO builds it for a VLM (:func:`encode_vision_prompt`): the processor's
chat template with its generation prompt, each image expanded to its placeholder tokens, and the image inputs
(``pixel_values``, ``image_grid_thw``) beside the ids.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

import torch

from lenvm_rl.data.prompts import prompt_format
from lenvm_rl.data.value_dataset import ValueDataCollator
from lenvm_rl.modeling.vision import VISION_INPUT_KEYS, batch_vision_rows, image_span_mask, split_vision_rows

__all__ = ["IMAGES_COLUMN", "VisionValueDataCollator", "encode_vision_prompt", "has_images", "image_data_url",
           "image_inputs", "image_prompt", "image_refs", "is_processor", "jsonable_prompt", "load_image",
           "with_images"]

IMAGES_COLUMN = "images"
"""The value dataset's column of each row's image references (paths or data URLs), present only with images."""


def is_processor(processing_class) -> bool:
    """Whether ``processing_class`` is a VL processor (a tokenizer with an image processor), not a bare tokenizer."""
    return getattr(processing_class, "image_processor", None) is not None


def image_refs(prompt) -> list:
    """The images of a prompt, in order: the ``image`` of every image part of its messages (``[]`` for text)."""
    if not isinstance(prompt, list):
        return []
    return [part.get("image") for message in prompt if isinstance(message, dict)
            and isinstance(message.get("content"), list) for part in message["content"]
            if isinstance(part, dict) and part.get("type") == "image"]


def has_images(prompt) -> bool:
    return bool(image_refs(prompt))


def load_image(ref):
    """A PIL image from a PIL image, a local path or a ``data:image/...;base64,`` URL; errors name the reference."""
    from PIL import Image

    if isinstance(ref, Image.Image):
        return ref
    if not isinstance(ref, (str, Path)) or not str(ref):
        raise ValueError(f"an image part's image must be a PIL image, a path or a data URL, got {ref!r:.80}")
    ref = str(ref)
    if ref.startswith("data:"):
        header, _, data = ref.partition(",")
        if not header.endswith(";base64") or not data:
            raise ValueError(f"image data URL {ref[:40]!r}...: expected data:image/<type>;base64,<data>")
        raw = base64.b64decode(data)
    elif ref.startswith(("http://", "https://")):
        raise ValueError(f"image {ref!r}: images are not fetched from the network; download it and give its path")
    else:
        path = Path(ref)
        if not path.is_file():
            raise FileNotFoundError(f"image file not found: {path} (relative paths are read from {Path.cwd()})")
        raw = path.read_bytes()
    try:
        return Image.open(io.BytesIO(raw))
    except Exception as err:
        raise ValueError(f"image {ref[:80]!r} is not a readable image: {err}") from None


def image_data_url(image) -> str:
    """A PIL image embedded as a PNG data URL (lossless, so its pixel values survive the JSONL)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def jsonable_prompt(prompt):
    """``prompt`` with its in-memory (PIL) images embedded as data URLs; a prompt without them is returned as is."""
    if not any(not isinstance(ref, str) for ref in image_refs(prompt)):
        return prompt
    return [{**m, "content": [{**p, "image": image_data_url(p["image"])} if _is_pil_part(p) else p
                              for p in m["content"]]} if isinstance(m.get("content"), list) else m for m in prompt]


def _is_pil_part(part) -> bool:
    return isinstance(part, dict) and part.get("type") == "image" and not isinstance(part.get("image"), str)


def with_images(prompt: list[dict], images: list) -> list[dict]:
    """A TRL dataset row's chat ``prompt`` and its ``images`` column as one prompt with image parts, as TRL's GRPO
    joins them (``trl.data_utils.prepare_multimodal_messages``: the images go before the first user message's text)."""
    from trl.data_utils import prepare_multimodal_messages

    if prompt_format(prompt) != "chat":
        raise ValueError("images go with chat prompts (TRL trains VLMs on conversational prompts only)")
    return prepare_multimodal_messages(prompt, images=list(images))


def image_prompt(text: str, images: list) -> list[dict]:
    """One user message holding ``images`` (paths, data URLs or PIL images) and then ``text``."""
    if not isinstance(text, str):
        raise ValueError("images go with a text prompt here; put them in the chat messages' content instead")
    return [{"role": "user", "content": [*({"type": "image", "image": image} for image in images),
                                         {"type": "text", "text": text}]}]


def encode_vision_prompt(processor, prompt, *, tools: list | None = None, chat_template_kwargs: dict | None = None
                         ) -> tuple[list[int], dict | None]:
    """Token ids of ``s_0`` and its image inputs (``pixel_values``, ``image_grid_thw``; ``None`` without images),
    as TRL's GRPO encodes a VLM's prompt with ``processor``.

    Chat messages (with or without images) go through the processor's chat template with its generation prompt
    (``prepare_multimodal_messages``, then ``apply_chat_template``); a string is tokenized as is by its tokenizer.
    """
    from trl.data_utils import prepare_multimodal_messages

    if prompt_format(prompt) == "raw":
        return processor.tokenizer(prompt)["input_ids"], None
    messages = [{**m, "content": [{**p, "image": load_image(p["image"])} if _is_image(p) else p
                                  for p in m["content"]]} if isinstance(m.get("content"), list) else m for m in prompt]
    encoded = processor.apply_chat_template([prepare_multimodal_messages(messages)], tools=tools or None,
                                            add_generation_prompt=True, tokenize=True, return_dict=True,
                                            return_tensors="pt", **(chat_template_kwargs or {}))
    images = {key: encoded[key] for key in VISION_INPUT_KEYS} if "pixel_values" in encoded else None
    return encoded["input_ids"][0].tolist(), images


def _is_image(part) -> bool:
    return isinstance(part, dict) and part.get("type") == "image"


def image_inputs(processor, refs: list) -> dict:
    """The image inputs (``pixel_values``, ``image_grid_thw``) of images given by reference, as the processor makes
    them for a prompt holding these images."""
    out = processor.image_processor(images=[load_image(ref) for ref in refs], return_tensors="pt")
    return {key: out[key] for key in VISION_INPUT_KEYS}


@dataclass
class VisionValueDataCollator(ValueDataCollator):
    """:class:`~lenvm_rl.data.ValueDataCollator` for rollouts of image prompts: it also returns the batch's image
    inputs (``pixel_values`` and ``image_grid_thw``, row after row, whatever the padding side), built by
    ``processor`` from the dataset's :data:`IMAGES_COLUMN`, and takes the states inside image spans out of
    ``target_mask`` (:func:`~lenvm_rl.modeling.vision.image_span_mask`).

    Args (besides the parent's):
        processor: the VL processor of the rollouts (its image processor builds the image inputs).
        config: the LenVM's model config (its image token ids and merge size).
    """

    processor: object = None
    config: object = None

    def __post_init__(self):
        super().__post_init__()
        if not is_processor(self.processor) or getattr(self.config, "vision_config", None) is None:
            raise ValueError("VisionValueDataCollator needs processor= (a VL processor) and config= (the VL LenVM's "
                             "config)")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        batch = super().__call__(features)
        refs = [list(feature.get(IMAGES_COLUMN) or []) for feature in features]
        rows = [image_inputs(self.processor, row) if row else None for row in refs]
        images = batch_vision_rows(rows)
        ids = batch["input_ids"].masked_fill(~batch["attention_mask"].bool(), -1)
        try:
            split_vision_rows(ids, self.config, **images, num_images=[len(row) for row in refs])
        except ValueError as err:
            raise ValueError(f"{err}; the rollouts' prompt_ids and their images disagree (sampled with another "
                             "processor or other min/max pixels?)") from None
        inside = image_span_mask(batch["input_ids"], self.config)
        batch["target_mask"] = batch["target_mask"] & ~inside
        batch["targets"] = batch["targets"].masked_fill(inside, 0.0)
        return {**batch, **images}
