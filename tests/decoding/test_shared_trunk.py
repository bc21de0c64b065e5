"""Shared-trunk guided decoding (issue 21, item 4): the policy's own forward as the LenVM's candidate step.

A LenVM whose trunk IS the policy's (a copy with equal weights, the same modules, or a saved and reloaded
checkpoint) decodes with one K-token policy forward per token, and emits exactly the two-model path's tokens.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone
from transformers import DynamicCache, LogitsProcessorList

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))
from grpo_fixtures import EOS_ID, tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import LenVM  # noqa: E402
from lenvm_rl.decoding import GuidanceConfig, LenVMLogitsProcessor, guided_generate  # noqa: E402
from lenvm_rl.decoding.scoring import extension_forward, keep_candidate  # noqa: E402
from lenvm_rl.decoding.shared_trunk import SharedTrunkDecoder, shared_trunk_mismatch  # noqa: E402

PROMPTS = ["a b c", "d e f g h i", "j", "k l m n"]
CONFIGS = [
    (GuidanceConfig(beta=-2.0, top_k=8), False),
    (GuidanceConfig(constraint="equal", target=5, top_k=8), False),
    (GuidanceConfig(beta=-2.0, top_k=8, top_p=0.9), True),
    (GuidanceConfig(constraint="soft_equal", target=6, top_k=6), True),
    (GuidanceConfig(constraint="at_least", target=4, top_k=8, temperature=1.3), True),
]


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(seed=0).eval()


@pytest.fixture(scope="module")
def head_on_policy(policy):
    """A value head on a copy of the policy's trunk (equal weights, its own tensors), as a checkpoint loads it."""
    torch.manual_seed(7)
    return LenVM(copy.deepcopy(policy), gamma=0.9).eval()


def _trunk_calls(model):
    calls = []
    return calls, model.model.register_forward_hook(lambda *_: calls.append(1))


@pytest.mark.parametrize("guidance, do_sample", CONFIGS)
def test_shared_trunk_emits_the_two_model_tokens(policy, head_on_policy, guidance, do_sample):
    kwargs = dict(lenvm=head_on_policy, guidance=guidance, max_new_tokens=12, batch_size=4, do_sample=do_sample,
                  seed=3)
    two = guided_generate(policy, tiny_tokenizer(), PROMPTS, shared_trunk=False, **kwargs)
    lenvm_calls, handle = _trunk_calls(head_on_policy.backbone)
    try:
        shared = guided_generate(policy, tiny_tokenizer(), PROMPTS, shared_trunk=True, **kwargs)
    finally:
        handle.remove()
    assert [c.token_ids for c in shared] == [c.token_ids for c in two]
    assert lenvm_calls == []  # the LenVM's own trunk never ran
    if guidance.constraint is None:  # rows end at different steps: the loop pads the ended rows as generate does
        assert len({c.length for c in two}) > 1 and "eos" in {c.finish_reason for c in two}


def test_the_decoder_matches_generate_step_by_step(policy, head_on_policy):
    """Values and logits, not only tokens: each step's LenVM logits and V(s_t) equal the two-model path's."""
    tokenizer = tiny_tokenizer()
    ids = tokenizer(["a b c", "d e f g h i"], padding=True, padding_side="left", return_tensors="pt")
    config = GuidanceConfig(beta=-1.0, top_k=6, top_p=0.3)  # a small set: the shared trunk runs only its columns
    steps = {}
    for name in ("two", "shared"):
        processor = LenVMLogitsProcessor(head_on_policy, config, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
        seen = []
        guide = processor.guide
        processor.guide = lambda *a, _g=guide, _s=seen, _p=processor: (_g(*a), _s.append(_p.last_step))[0]
        processor.begin(ids.attention_mask)
        if name == "two":
            out = policy.generate(**ids, max_new_tokens=6, do_sample=False, eos_token_id=EOS_ID, pad_token_id=EOS_ID,
                                  logits_processor=LogitsProcessorList([processor]))
        else:
            out = SharedTrunkDecoder(policy, processor).generate(
                ids.input_ids, ids.attention_mask, max_new_tokens=6, eos_token_id=EOS_ID, pad_token_id=EOS_ID)
        steps[name] = (out, seen, processor.state_logits)
    (out_two, seen_two, state_two), (out_shared, seen_shared, state_shared) = steps["two"], steps["shared"]
    assert torch.equal(out_two, out_shared) and len(seen_two) == len(seen_shared) == len(state_shared) == 6
    generated = out_two[:, ids.input_ids.shape[1] :]
    assert (generated == EOS_ID).any(-1).tolist() == [False, True]  # row 1 ends early
    assert any((b.lenvm_logits == -torch.inf).any() for b in seen_shared)  # columns left out
    for t, (a, b, sa, sb) in enumerate(zip(seen_two, seen_shared, state_two, state_shared)):
        live = ~(generated[:, :t] == EOS_ID).any(-1)  # an ended row's steps are padding on either path
        assert torch.equal(a.ids[live], b.ids[live]) and torch.equal(a.mask[live], b.mask[live])
        scored = a.mask & live[:, None]  # the shared trunk leaves candidates out of every row's set unscored
        torch.testing.assert_close(b.lenvm_logits[scored], a.lenvm_logits[scored], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(b.guided[live], a.guided[live], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sb[live], sa[live], atol=1e-5, rtol=1e-4)


def test_one_policy_forward_per_token_and_no_lenvm_forward(policy, head_on_policy):
    policy_calls, handle = _trunk_calls(policy)
    try:
        out = guided_generate(policy, tiny_tokenizer(), PROMPTS[:2], lenvm=head_on_policy, max_new_tokens=8,
                              guidance=GuidanceConfig(constraint="equal", target=8, top_k=8), batch_size=2)
    finally:
        handle.remove()
    assert len(policy_calls) == 1 + max(c.length for c in out)  # the prefill, then one candidate step per token


def test_detected_for_a_reloaded_checkpoint_and_a_head_on_the_same_modules(policy, head_on_policy, tmp_path):
    head_on_policy.save_pretrained(tmp_path)
    reloaded = LenVM.from_pretrained(tmp_path)
    assert reloaded.config.lenvm_gamma == 0.9  # the config differs in names and records only
    assert shared_trunk_mismatch(policy, reloaded) is None
    assert shared_trunk_mismatch(policy, LenVM(policy, gamma=0.9)) is None
    lenvm_calls, handle = _trunk_calls(reloaded.backbone)
    try:  # the default (None) finds it
        guided_generate(policy, tiny_tokenizer(), PROMPTS[:1], lenvm=reloaded, max_new_tokens=3,
                        guidance=GuidanceConfig(beta=-1.0, top_k=4))
    finally:
        handle.remove()
    assert lenvm_calls == []


def test_a_different_trunk_decodes_with_two_models_by_default_and_is_refused_when_asked(policy):
    other = LenVM(tiny_policy(seed=1), gamma=0.9).eval()
    assert shared_trunk_mismatch(policy, other).startswith("their weights differ")
    lenvm_calls, handle = _trunk_calls(other.backbone)
    try:
        guided_generate(policy, tiny_tokenizer(), PROMPTS[:1], lenvm=other, max_new_tokens=3)
    finally:
        handle.remove()
    assert len(lenvm_calls) == 3  # two models
    with pytest.raises(ValueError, match=r"shared_trunk=True: the LenVM is not a value head on the policy's own "
                                         r"trunk: their weights differ \(embed_tokens.weight\); pass shared_trunk=None or False"):
        guided_generate(policy, tiny_tokenizer(), PROMPTS[:1], lenvm=other, max_new_tokens=3, shared_trunk=True)


@pytest.mark.parametrize("change, message", [
    (lambda m: setattr(m.config, "rms_norm_eps", 1e-3), "their configs differ in rms_norm_eps (1e-06 vs 0.001)"),
    (lambda m: m.to(torch.float64), "torch.float32 on cpu in the policy and (16, 32) torch.float64 on cpu"),
    (lambda m: m.model.layers[1].mlp.up_proj.weight.data.add_(1e-6), "their weights differ (layers.1.mlp.up_proj"),
])
def test_mismatches_name_what_differs(policy, change, message):
    backbone = copy.deepcopy(policy)
    change(backbone)
    assert message in shared_trunk_mismatch(policy, LenVM(backbone, gamma=0.9))


def test_a_policy_whose_logits_are_not_its_lm_head_is_refused():
    policy = tiny_policy(seed=0)
    policy.config.final_logit_softcapping = 30.0
    assert "final_logit_softcapping=30.0" in shared_trunk_mismatch(policy, LenVM(policy, gamma=0.9))


def test_other_refusals(policy, head_on_policy):
    common = dict(policy=policy, tokenizer=tiny_tokenizer(), prompts=PROMPTS[:1], max_new_tokens=3)
    with pytest.raises(ValueError, match="shared_trunk=True needs a lenvm"):
        guided_generate(**common, shared_trunk=True)
    with pytest.raises(ValueError, match="scoring='naive' re-encodes"):
        guided_generate(**common, lenvm=head_on_policy, scoring="naive", shared_trunk=True)
    banned = copy.deepcopy(policy)
    banned.generation_config.no_repeat_ngram_size = 2
    with pytest.raises(ValueError, match=r"generation_config adds logits processors .*no_repeat_ngram_size=2"):
        guided_generate(**common | dict(policy=banned), lenvm=head_on_policy, shared_trunk=True)
    calls, handle = _trunk_calls(head_on_policy.backbone)
    try:  # by default it falls back to generate, which applies them
        guided_generate(**common | dict(policy=banned), lenvm=head_on_policy)
    finally:
        handle.remove()
    assert len(calls) == 3
    processor = LenVMLogitsProcessor(head_on_policy, top_k=4, eos_token_id=EOS_ID)
    with pytest.raises(ValueError, match=r"must include the processor's end tokens \[1\]"):
        SharedTrunkDecoder(policy, processor).generate(torch.tensor([[3, 4]]), max_new_tokens=2)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_keep_candidate_leaves_the_cache_of_the_chosen_token_run_alone(arch):
    model = tiny_backbone(arch, seed=2)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    candidates = torch.tensor([[20, 21, 22], [23, 24, 25]])
    chosen = torch.tensor([2, 0])
    with torch.no_grad():
        _, cache = extension_forward(model, ids, ids[:, :0], mask, use_cache=True)  # positions from the mask
        hidden, cache = extension_forward(model, ids[:, :0], candidates, mask, cache=cache, keep_candidates=True)
        keep_candidate(cache, ids.shape[1], chosen, 3)
        picked = candidates[torch.arange(2), chosen][:, None]
        _, prefix = extension_forward(model, ids, ids[:, :0], mask, use_cache=True)
        alone = model.model(picked, attention_mask=torch.cat([mask, torch.ones_like(picked)], 1),
                            position_ids=mask.sum(-1, keepdim=True), cache=prefix, use_cache=True)
    assert isinstance(cache, DynamicCache) and cache.get_seq_length() == ids.shape[1] + 1
    torch.testing.assert_close(hidden[torch.arange(2), chosen], alone.last_hidden_state[:, 0], atol=1e-5, rtol=1e-4)
    for got, want in zip(cache.layers, alone.cache.layers):
        torch.testing.assert_close(got.keys[:, :, :, :], want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values, want.values, atol=1e-5, rtol=1e-4)


def test_a_repetition_penalty_in_the_generation_config_keeps_the_shared_trunk(policy, head_on_policy):
    """guided_generate turns generate's repetition penalty off on both paths (Qwen2.5-Instruct ships one)."""
    penalised = copy.deepcopy(policy)
    penalised.generation_config.repetition_penalty = 3.0
    kwargs = dict(lenvm=head_on_policy, guidance=GuidanceConfig(beta=-1.0, top_k=8), max_new_tokens=8, batch_size=4)
    two = guided_generate(penalised, tiny_tokenizer(), PROMPTS, shared_trunk=False, **kwargs)
    calls, handle = _trunk_calls(head_on_policy.backbone)
    try:
        shared = guided_generate(penalised, tiny_tokenizer(), PROMPTS, **kwargs)
    finally:
        handle.remove()
    assert calls == [] and [c.token_ids for c in shared] == [c.token_ids for c in two]
