"""Issue 23, item 4: LenVMCritic on TRL's layout of a VL policy's batch, with the image inputs TRL's GRPO passes
(``pixel_values`` and ``image_grid_thw`` flat over the rows, ``num_images`` per row), against each row alone."""

# ruff: noqa: F811 -- pytest fixtures imported from vl_fixtures are test arguments
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vl_fixtures import processor, prompts, vl_lenvm  # noqa: E402, F401

from lenvm_rl import LenVMCritic  # noqa: E402
from lenvm_rl.data.images import encode_vision_prompt  # noqa: E402
from lenvm_rl.modeling.vision import batch_vision_rows  # noqa: E402

ATOL = 1e-5


def trl_batch(processor, prompts):
    """Rows as TRL lays them out: left-padded prompts, right-padded completions, image inputs flat over the rows."""
    eos, pad = processor.tokenizer.eos_token_id, processor.tokenizer.pad_token_id
    encoded = [encode_vision_prompt(processor, p) for p in [prompts[0], prompts[1], prompts[2], prompts[1]]]
    completions = [[40, 41, eos], [42, 43, 44, 45], [46, eos], [47]]  # rows 1 and 3 cut (no EOS)
    P, T = max(len(ids) for ids, _ in encoded), max(map(len, completions))
    prompt_ids = torch.full((4, P), pad)
    prompt_mask = torch.zeros(4, P, dtype=torch.long)
    completion_ids = torch.full((4, T), pad)
    completion_mask = torch.zeros(4, T, dtype=torch.long)
    for b, ((ids, _), completion) in enumerate(zip(encoded, completions)):
        prompt_ids[b, P - len(ids):] = torch.tensor(ids)
        prompt_mask[b, P - len(ids):] = 1
        completion_ids[b, :len(completion)] = torch.tensor(completion)
        completion_mask[b, :len(completion)] = 1
    images = batch_vision_rows([im for _, im in encoded])
    num_images = [0 if im is None else len(im["image_grid_thw"]) for _, im in encoded]
    return encoded, completions, (prompt_ids, prompt_mask, completion_ids, completion_mask), images, num_images


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_critic_values_align_with_each_row_alone(vl_lenvm, processor, prompts, batch_size):
    encoded, completions, layout, images, num_images = trl_batch(processor, prompts)
    assert num_images == [1, 1, 0, 1]
    critic = LenVMCritic(vl_lenvm, batch_size=batch_size)
    out = critic(*layout, **images, num_images=num_images)
    for b, ((ids, row_images), completion) in enumerate(zip(encoded, completions)):
        with torch.no_grad():
            alone = vl_lenvm(torch.tensor([ids + completion]), **(row_images or {})).values[0]
        T, P = len(completion), len(ids)
        torch.testing.assert_close(out.values[b, :T], alone[P - 1:P - 1 + T], atol=ATOL, rtol=ATOL)
        assert bool((out.values[b, T:] == 0).all())
        terminated = completion[-1] == processor.tokenizer.eos_token_id
        assert bool(out.terminated[b]) == terminated
        expected_final = torch.tensor(0.0) if terminated else alone[-1]
        torch.testing.assert_close(out.final_values[b], expected_final, atol=ATOL, rtol=ATOL)
    # num_images is optional: the rows' image tokens say which images are whose
    torch.testing.assert_close(critic(*layout, **images).values, out.values, atol=0, rtol=0)


def test_critic_refuses_image_inputs_that_do_not_fit(vl_lenvm, processor, prompts):
    _, _, layout, images, num_images = trl_batch(processor, prompts)
    critic = LenVMCritic(vl_lenvm, batch_size=2)
    with pytest.raises(ValueError, match="row 0: its image placeholder tokens do not match whole images"):
        critic(*layout, **images, num_images=[0, 1, 1, 1])
    with pytest.raises(ValueError, match="image placeholder tokens"):  # images dropped: a VL LenVM will not guess
        critic(*layout)
    swapped = {"pixel_values": images["pixel_values"], "image_grid_thw": images["image_grid_thw"].flip(0)}
    with pytest.raises(ValueError, match="row 0: its image placeholder tokens do not match whole images"):
        critic(*layout, **swapped, num_images=num_images)


def test_refit_and_hidden_states_take_the_image_inputs(vl_lenvm, processor, prompts):
    import copy

    _, _, layout, images, num_images = trl_batch(processor, prompts)
    critic = LenVMCritic(copy.deepcopy(vl_lenvm), batch_size=2)
    hidden, _ = critic.hidden_states(*layout, **images, num_images=num_images)
    out = critic(*layout, **images, num_images=num_images, return_hidden=True)
    torch.testing.assert_close(hidden, out.hidden_states, atol=0, rtol=0)
    optimizer = torch.optim.AdamW(critic.model.v_head.parameters(), lr=1e-2)
    targets = torch.full_like(out.values, -0.5)
    losses = critic.refit(*layout, targets, layout[3].bool(), optimizer=optimizer, steps=5, **images,
                          num_images=num_images)
    assert losses[-1] < losses[0]
