"""LenVMCritic against a plain per-row loop on a hand-built TRL-layout batch."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM, LenVMCritic
from lenvm_rl.critics import place_critic

EOS = 2  # also the pad id, as in SmolLM2
PAD = EOS
GAMMA = 0.9


@pytest.fixture(scope="module")
def lenvm():
    torch.manual_seed(0)
    model = LenVM(tiny_backbone("llama", vocab_size=128, seed=3), gamma=GAMMA)
    model.backbone.config.eos_token_id = EOS
    return model


def hand_batch():
    """Left-padded prompts, right-padded completions (pad = EOS id), and an action mask with a tool span.

    rows: 0 EOS inside, 1 truncated (no EOS, full width), 2 EOS exactly at the limit, 3 empty completion,
    4 a tool span (ids 30, 31) in the middle, then EOS.
    """
    prompts = [[11, 12, 13], [14, 15, 16, 17, 18], [19], [20, 21], [22, 23, 24, 25]]
    completions = [[5, 6, EOS], [7, 8, 9, 10, 11, 12], [5, 6, 7, 8, 9, EOS], [], [5, 6, 30, 31, 7, EOS]]
    actions = [[1, 1, 1], [1] * 6, [1] * 6, [], [1, 1, 0, 0, 1, 1]]
    P, T = max(map(len, prompts)), max(map(len, completions))
    prompt_ids = torch.full((len(prompts), P), PAD)
    prompt_mask = torch.zeros(len(prompts), P, dtype=torch.long)
    completion_ids = torch.full((len(prompts), T), PAD)
    completion_mask = torch.zeros(len(prompts), T, dtype=torch.long)
    action_mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for b, (p, c, a) in enumerate(zip(prompts, completions, actions)):
        prompt_ids[b, P - len(p):] = torch.tensor(p)
        prompt_mask[b, P - len(p):] = 1
        completion_ids[b, : len(c)] = torch.tensor(c, dtype=torch.long)
        completion_mask[b, : len(c)] = 1
        action_mask[b, : len(a)] = torch.tensor(a, dtype=torch.long)
    return prompts, completions, actions, (prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask)


def reference(lenvm, prompt, completion, action, lam):
    """Plain loop: one unpadded forward per row, GAE over the action steps by hand."""
    T = 6
    seq = torch.tensor([prompt + completion])
    with torch.no_grad():
        out = lenvm(seq, torch.ones_like(seq))
    v_all, z_all = out.values[0], out.logits[0]
    P = len(prompt)
    terminated = len(completion) > 0 and completion[-1] == EOS
    final = 0.0 if terminated else v_all[-1].item()
    steps = [t for t in range(len(completion)) if action[t]]
    values = {t: v_all[P - 1 + t].item() for t in steps}
    expected = {name: [0.0] * T for name in ("values", "advantages", "returns", "shaping", "lengths")}
    running = 0.0
    for i in reversed(range(len(steps))):
        t = steps[i]
        next_value = values[steps[i + 1]] if i + 1 < len(steps) else final
        delta = -(1 - GAMMA) + GAMMA * next_value - values[t]
        running = delta + GAMMA * lam * running
        expected["values"][t] = values[t]
        expected["advantages"][t] = running
        expected["returns"][t] = running + values[t]
        expected["shaping"][t] = GAMMA * next_value - values[t]
        expected["lengths"][t] = math.log(torch.sigmoid(-z_all[P - 1 + t]).item()) / math.log(GAMMA)
    return expected, final, terminated


@pytest.mark.parametrize("lam", [1.0, 0.7])
def test_critic_matches_a_plain_loop(lenvm, lam):
    prompts, completions, actions, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask = batch
    critic = LenVMCritic(lenvm, lam=lam, batch_size=2)
    out = critic(prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask=action_mask)
    assert out.terminated.tolist() == [True, False, True, False, True]
    for b in range(len(prompts)):
        expected, final, _ = reference(lenvm, prompts[b], completions[b], actions[b], lam)
        assert out.final_values[b].item() == pytest.approx(final, abs=1e-5)
        for name, row in expected.items():
            torch.testing.assert_close(getattr(out, name)[b], torch.tensor(row), atol=2e-5, rtol=1e-4,
                                       msg=f"row {b} field {name}")
    # every field is 0 off the action mask (tool span, padding, the empty row)
    for name in ("values", "advantages", "returns", "shaping", "lengths"):
        assert (getattr(out, name)[action_mask == 0] == 0).all()


def test_truncated_row_bootstraps_and_eos_row_does_not(lenvm):
    _, _, _, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, _ = batch
    out = LenVMCritic(lenvm)(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert out.final_values[0] == 0 and out.final_values[2] == 0  # EOS inside / exactly at the limit
    assert out.final_values[1] < 0  # truncated: V(s_T)
    # explicit terminated overrides inference: calling the truncated row terminated drops the bootstrap
    terminated = torch.tensor([True, True, True, False, True])
    forced = LenVMCritic(lenvm)(prompt_ids, prompt_mask, completion_ids, completion_mask, terminated=terminated)
    assert forced.final_values[1] == 0
    assert not torch.equal(forced.advantages[1], out.advantages[1])


def test_masked_positions_change_nothing(lenvm):
    _, _, _, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask = batch
    critic = LenVMCritic(lenvm)
    out = critic(prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask=action_mask)
    g = torch.Generator().manual_seed(0)
    noisy_prompt = torch.where(prompt_mask.bool(), prompt_ids, torch.randint(3, 128, prompt_ids.shape, generator=g))
    noisy_completion = torch.where(completion_mask.bool(), completion_ids,
                                   torch.randint(3, 128, completion_ids.shape, generator=g))
    terminated = out.terminated  # pads are no longer EOS ids, so give termination explicitly
    noisy = critic(noisy_prompt, prompt_mask, noisy_completion, completion_mask, terminated, action_mask)
    for name in ("values", "final_values", "advantages", "returns", "shaping", "lengths"):
        torch.testing.assert_close(getattr(noisy, name), getattr(out, name), atol=1e-6, rtol=0)


def test_same_completion_under_other_padding_gets_identical_outputs(lenvm):
    _, _, _, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask = batch
    critic = LenVMCritic(lenvm)
    out = critic(prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask=action_mask)
    # row 4 alone, with 3 more left pads and 4 more right pads
    pad_prompt = torch.cat([torch.full((1, 3), PAD), prompt_ids[4:5]], dim=1)
    pad_prompt_mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt_mask[4:5]], dim=1)
    pad_completion = torch.cat([completion_ids[4:5], torch.full((1, 4), PAD)], dim=1)
    pad_completion_mask = torch.cat([completion_mask[4:5], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    pad_action = torch.cat([action_mask[4:5], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    alone = critic(pad_prompt, pad_prompt_mask, pad_completion, pad_completion_mask, action_mask=pad_action)
    for name in ("values", "advantages", "returns", "shaping", "lengths"):
        torch.testing.assert_close(getattr(alone, name)[0, :6], getattr(out, name)[4], atol=1e-6, rtol=1e-5)
        assert (getattr(alone, name)[0, 6:] == 0).all()


def test_eos_ids_come_from_the_config_or_the_override(lenvm):
    _, _, _, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, _ = batch
    assert LenVMCritic(lenvm).eos_token_ids == [EOS]
    other = LenVMCritic(lenvm, eos_token_id=[9, 12])  # now rows 1 and 2 end with an "EOS", rows 0 and 4 do not
    out = other(prompt_ids, prompt_mask, completion_ids, completion_mask)
    assert out.terminated.tolist() == [False, True, False, False, False]


def test_critic_is_frozen_and_loads_from_a_path(tiny_checkpoint, smollm2_tokenizer):
    critic = LenVMCritic(str(tiny_checkpoint), processing_class=smollm2_tokenizer, dtype="bfloat16")
    assert not critic.model.training
    assert not any(p.requires_grad for p in critic.model.parameters())
    assert critic.gamma == pytest.approx(0.99)
    assert next(critic.model.backbone.parameters()).dtype == torch.bfloat16
    assert critic.model.v_head.fc.weight.dtype == torch.float32
    assert critic.eos_token_ids == sorted({smollm2_tokenizer.eos_token_id, *critic.eos_token_ids})


def test_a_lenvm_with_another_vocabulary_is_refused(lenvm, tiny_checkpoint, smollm2_tokenizer):
    with pytest.raises(ValueError, match=r"49152 tokens but the LenVM .* vocabulary of 128"):
        LenVMCritic(lenvm, processing_class=smollm2_tokenizer)
    other = type(smollm2_tokenizer).from_pretrained(smollm2_tokenizer.name_or_path)
    other.add_tokens(["<tool_output>"])
    with pytest.raises(ValueError, match=r"policy tokenizer .*\(49153 tokens\) and the LenVM tokenizer .*tiny-lenvm.* differ"):
        LenVMCritic(str(tiny_checkpoint), processing_class=other)


def test_bad_inputs_name_the_argument(lenvm):
    _, _, _, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask = batch
    critic = LenVMCritic(lenvm)
    with pytest.raises(ValueError, match="completion_mask has shape"):
        critic(prompt_ids, prompt_mask, completion_ids, completion_mask[:, :3])
    with pytest.raises(ValueError, match="action_mask marks positions outside completion_mask"):
        critic(prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask=torch.ones_like(action_mask))
    with pytest.raises(ValueError, match="prompt_mask row 1 is empty"):
        critic(prompt_ids, prompt_mask * torch.tensor([[1], [0], [1], [1], [1]]), completion_ids, completion_mask)
    with pytest.raises(ValueError, match="lam must be in"):
        LenVMCritic(lenvm, lam=1.5)
    with pytest.raises(ValueError, match="batch_size"):
        LenVMCritic(lenvm, batch_size=0)


def test_refit_moves_the_head_only_and_lowers_the_loss(lenvm):
    _, _, _, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask = batch
    model = LenVM(tiny_backbone("llama", vocab_size=128, seed=3), gamma=GAMMA)
    model.backbone.config.eos_token_id = EOS
    critic = LenVMCritic(model)
    backbone_before = {k: v.clone() for k, v in critic.model.backbone.state_dict().items()}
    head_before = {k: v.clone() for k, v in critic.model.v_head.state_dict().items()}
    out = critic(prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask=action_mask)
    optimizer = torch.optim.Adam(critic.model.v_head.parameters(), lr=1e-2)
    losses = critic.refit(prompt_ids, prompt_mask, completion_ids, completion_mask, out.returns, action_mask,
                          optimizer=optimizer, steps=20)
    assert len(losses) == 20 and losses[-1] < losses[0]
    for k, v in critic.model.backbone.state_dict().items():
        assert torch.equal(v, backbone_before[k]), k
    assert any(not torch.equal(v, head_before[k]) for k, v in critic.model.v_head.state_dict().items())
    assert not any(p.requires_grad for p in critic.model.parameters())  # frozen again


def test_place_critic_moves_an_unpinned_critic_and_leaves_a_pinned_one(lenvm):
    """The trainers' placement rule (on CPU, "meta" stands in for the accelerator's device; tests/gpu runs CUDA)."""
    unpinned = LenVMCritic(copy.deepcopy(lenvm))
    assert not unpinned.pinned
    assert place_critic(unpinned, "meta") is unpinned
    assert unpinned.device.type == "meta" and {p.device.type for p in unpinned.model.parameters()} == {"meta"}
    pinned = LenVMCritic(copy.deepcopy(lenvm), device="cpu")  # an explicit device pins it
    assert pinned.pinned
    place_critic(pinned, "meta")
    assert {p.device.type for p in pinned.model.parameters()} == {"cpu"}
    # a pinned critic hands every output over on the device of the inputs, the trunk states included
    _, _, _, batch = hand_batch()
    prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask = batch
    out = pinned(prompt_ids, prompt_mask, completion_ids, completion_mask, action_mask=action_mask, return_hidden=True)
    tensors = [v for v in vars(out).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 9 and all(v.device == completion_ids.device for v in tensors)
