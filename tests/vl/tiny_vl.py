"""A tiny random Qwen2.5-VL and its processor, built offline (no hub), for the VL tests and bench/bench_vl.py.

The tokenizer is the embedded SmolLM2's plus Qwen's four vision markers; the image processor is Qwen2-VL's (PIL
backend) with 14-pixel patches merged 2 x 2, so a 56 x 56 image is a (1, 4, 4) patch grid and 4 image tokens.
The processor is Qwen2.5-VL's without its video processor: that one needs torchvision, which this CPU machine
lacks (a real Qwen2.5-VL checkpoint's processor loads where torchvision is installed).
"""

from __future__ import annotations

import copy
import functools
import os

import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

os.environ.setdefault("HF_HUB_OFFLINE", "1")

VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class TinyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL's processor, images only (its video processor needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


AutoProcessor.register(Qwen2_5_VLConfig, TinyQwen2_5_VLProcessor, exist_ok=True)  # so a saved one loads back


@functools.cache
def _tokenizer():
    from lenvm_rl.modeling import resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("smollm2-135m"))
    tokenizer.add_special_tokens({"additional_special_tokens": VISION_TOKENS})
    return tokenizer


def tiny_processor(padding_side: str = "right", max_pixels: int = 112 * 112) -> TinyQwen2_5_VLProcessor:
    """A fresh processor: SmolLM2's tokenizer plus the vision markers, 14-pixel patches, at most ``max_pixels``."""
    tokenizer = copy.deepcopy(_tokenizer())
    tokenizer.padding_side = padding_side
    image_processor = Qwen2VLImageProcessorPil(patch_size=14, merge_size=2, temporal_patch_size=2,
                                               min_pixels=28 * 28, max_pixels=max_pixels)
    return TinyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def tiny_vl_config(hidden_size: int = 32, num_hidden_layers: int = 2, num_attention_heads: int = 4,
                   **text_kwargs) -> Qwen2_5_VLConfig:
    """``num_attention_heads`` sets the head size (``hidden_size // num_attention_heads``; vLLM's CPU attention takes
    32 and up); ``text_kwargs`` (``initializer_range``, ...) go to the text config."""
    tokenizer = _tokenizer()
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in VISION_TOKENS}
    head_dim = hidden_size // num_attention_heads
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                num_key_value_heads=max(1, num_attention_heads // 2), head_dim=head_dim, **text_kwargs,
                max_position_embeddings=1024, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                 "mrope_section": [head_dim // 4, head_dim // 8, head_dim // 8]})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=hidden_size,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0])
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                            video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                            vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)


def tiny_vl_backbone(seed: int = 0, **config_kwargs) -> Qwen2_5_VLForConditionalGeneration:
    """A random tiny Qwen2.5-VL (hidden size 32, 2 layers, a 1-block vision tower), in eval mode."""
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_vl_config(**config_kwargs)).eval()
    model.generation_config.eos_token_id = _tokenizer().eos_token_id
    model.generation_config.pad_token_id = _tokenizer().pad_token_id
    return model


def synthetic_image(seed: int, size: tuple[int, int] = (56, 56)) -> Image.Image:
    """A random RGB image; ``seed`` also picks its dominant colour channel."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 96, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    pixels[..., seed % 3] += 150
    return Image.fromarray(pixels.numpy(), mode="RGB")


def image_message(text: str, *images) -> list[dict]:
    """One user message holding ``images`` (PIL images, paths or data URLs) then ``text``."""
    return [{"role": "user", "content": [*({"type": "image", "image": image} for image in images),
                                         {"type": "text", "text": text}]}]
