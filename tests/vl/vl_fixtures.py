"""Fixtures of the vision-language tests (imported by each test module, as tests/trainers does with grpo_fixtures): a
tiny random Qwen2.5-VL LenVM, its processor and synthetic image prompts."""

from __future__ import annotations

import pytest
from tiny_vl import image_message, synthetic_image, tiny_processor, tiny_vl_backbone

from lenvm_rl import LenVM

GAMMA = 0.9


@pytest.fixture
def processor():
    return tiny_processor()


@pytest.fixture(scope="module")
def vl_lenvm():
    """A tiny VL LenVM (random backbone seed 1, head seeded by it), gamma 0.9, in eval mode."""
    return LenVM(tiny_vl_backbone(seed=1), gamma=GAMMA).eval()


@pytest.fixture
def prompts():
    """Three chat prompts: a 56 x 56 image, an 84 x 56 image and no image (4, 6 and 0 image tokens)."""
    return [image_message("What colour is it?", synthetic_image(0)),
            image_message("And this one, please?", synthetic_image(1, (84, 56))),
            [{"role": "user", "content": "No picture here."}]]
