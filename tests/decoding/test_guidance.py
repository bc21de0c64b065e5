"""LenVMLogitsProcessor and guided_generate on tiny random Llama models with the SmolLM2 tokenizer."""

import math
import warnings

import pytest
import torch
from conftest import tiny_backbone
from transformers import LogitsProcessorList

from lenvm_rl import LenVM
from lenvm_rl.core import logits_to_length
from lenvm_rl.decoding import GuidanceConfig, LenVMLogitsProcessor, guided_generate

PROMPTS = ["Hi", "What is two plus two? Explain it to me slowly, step by step."]


@pytest.fixture(scope="module")
def tokenizer(smollm2_tokenizer):
    return smollm2_tokenizer


@pytest.fixture(scope="module")
def policy(tokenizer):
    return tiny_backbone("llama", vocab_size=len(tokenizer), seed=0)


@pytest.fixture(scope="module")
def lenvm(tokenizer):
    return LenVM(tiny_backbone("llama", vocab_size=len(tokenizer), seed=1), gamma=0.9).eval()


def _left_padded(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[0, :4], mask[0, :4] = 0, 0
    ids[2, :1], mask[2, :1] = 0, 0
    return ids, mask


def _steps(processor, ids, n_steps, vocab, seed=0):
    """Drive a processor like generate does (greedy on its output); yields each step's output."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_steps):
        out = processor(ids, torch.randn(ids.shape[0], vocab, generator=g))
        yield out
        ids = torch.cat([ids, out.argmax(-1, keepdim=True)], dim=1)


# ============================================================================ scoring


@pytest.mark.parametrize("config", [GuidanceConfig(beta=-3.0, top_k=6), GuidanceConfig(constraint="equal", target=6, top_k=6)])
def test_cached_scores_equal_naive_reencoded_scores(lenvm, config):
    vocab = lenvm.config.vocab_size
    ids, mask = _left_padded(vocab)
    cached = LenVMLogitsProcessor(lenvm, config).begin(mask)
    naive = LenVMLogitsProcessor(lenvm, config, scoring="naive").begin(mask)
    for out_c, out_n in zip(_steps(cached, ids, 4, vocab), _steps(naive, ids, 4, vocab)):
        torch.testing.assert_close(cached.last_step.lenvm_logits, naive.last_step.lenvm_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out_c, out_n, atol=1e-5, rtol=1e-4)


def test_cached_scores_equal_a_full_forward_of_each_extension(lenvm):
    vocab = lenvm.config.vocab_size
    ids, mask = _left_padded(vocab, seed=3)
    processor = LenVMLogitsProcessor(lenvm, top_k=4).begin(mask)
    processor(ids, torch.randn(3, vocab))
    step = processor.last_step
    for row in range(3):
        prefix = ids[row][mask[row].bool()]
        for j in range(4):
            full = lenvm(torch.cat([prefix, step.ids[row, j : j + 1]])[None])
            assert step.lenvm_logits[row, j].item() == pytest.approx(full.logits[0, -1].item(), abs=1e-5)
        state = lenvm(prefix[None]).logits[0, -1].item()  # V(s_t) comes free with the step
        assert processor.state_logits[0][row].item() == pytest.approx(state, abs=1e-5)


def test_one_lenvm_forward_per_step(lenvm, policy, tokenizer):
    calls = []
    handle = lenvm.backbone.model.register_forward_hook(lambda *_: calls.append(1))
    try:
        out = guided_generate(policy, tokenizer, PROMPTS, lenvm=lenvm, guidance=GuidanceConfig(beta=-1.0, top_k=4),
                              max_new_tokens=6, batch_size=2)
    finally:
        handle.remove()
    assert len(calls) == max(c.length for c in out)


# ============================================================================ modes through the processor


def test_beta_zero_is_exactly_the_base_distribution():
    vocab = 128  # every token a candidate: a small vocabulary keeps the (K x K) candidate mask small
    small = LenVM(tiny_backbone("llama", vocab_size=vocab, seed=1), gamma=0.9).eval()
    ids, mask = _left_padded(vocab)
    scores = torch.randn(3, vocab)
    out = LenVMLogitsProcessor(small, beta=0.0, top_k=vocab, temperature=0.7).begin(mask)(ids, scores)
    torch.testing.assert_close(torch.softmax(out, -1), torch.softmax(scores / 0.7, -1), atol=1e-7, rtol=1e-6)


def test_strong_negative_tilt_picks_the_shortest_candidate(lenvm):
    vocab = lenvm.config.vocab_size
    ids, mask = _left_padded(vocab)
    processor = LenVMLogitsProcessor(lenvm, beta=-1e6, top_k=8).begin(mask)
    out = processor(ids, torch.randn(3, vocab))
    step = processor.last_step
    shortest = step.ids.gather(1, step.lenvm_logits.argmin(-1, keepdim=True)).squeeze(1)  # smallest u
    assert torch.equal(out.argmax(-1), shortest)
    assert torch.isfinite(out).sum(-1).tolist() == [8, 8, 8]  # the others keep (tiny) probability


@pytest.mark.parametrize("constraint", ["equal", "at_most", "at_least"])
def test_hard_constraints_leave_one_candidate(lenvm, constraint):
    vocab = lenvm.config.vocab_size
    ids, mask = _left_padded(vocab)
    out = LenVMLogitsProcessor(lenvm, constraint=constraint, target=50, top_k=8).begin(mask)(ids, torch.randn(3, vocab))
    assert torch.isfinite(out).sum(-1).tolist() == [1, 1, 1]


def test_eos_is_terminal_so_at_most_ends_now(lenvm):
    vocab = lenvm.config.vocab_size
    ids, mask = _left_padded(vocab)
    scores = torch.randn(3, vocab)
    eos = int(scores[0].topk(3).indices[2])  # the third candidate of row 0
    out = LenVMLogitsProcessor(lenvm, constraint="at_most", target=50, top_k=3, eos_token_id=eos).begin(mask)(ids, scores)
    assert out[0].argmax().item() == eos and torch.isfinite(out[0]).sum() == 1


def test_soft_equal_runs_and_keeps_the_set(lenvm):
    vocab = lenvm.config.vocab_size
    ids, mask = _left_padded(vocab)
    out = LenVMLogitsProcessor(lenvm, constraint="soft_equal", target=5, top_k=5).begin(mask)(ids, torch.randn(3, vocab))
    assert torch.isfinite(out).sum(-1).tolist() == [5, 5, 5]
    torch.testing.assert_close(torch.softmax(out, -1).sum(-1), torch.ones(3))


def test_equal_picks_the_candidate_that_ends_at_the_target_eos_included(lenvm):
    """After ``t`` generated tokens the remaining target of a candidate is ``T - (t + 1)`` (the reference: ``T - t``)."""
    vocab = lenvm.config.vocab_size
    ids = torch.randint(3, vocab, (1, 7), generator=torch.Generator().manual_seed(4))
    scores = torch.randn(1, vocab, generator=torch.Generator().manual_seed(5))
    probe = LenVMLogitsProcessor(lenvm, beta=0.0, top_k=8, min_p=0.0)
    for end in range(4, 8):  # a prompt of 4 tokens, then 3 generated (one call per step, as generate does)
        probe(ids[:, :end], scores)
    lengths = logits_to_length(probe.last_step.lenvm_logits[0], lenvm.gamma)  # l(x) of the 8 candidates
    ours = lambda target: int((lengths - (target - 4)).abs().argmin())  # noqa: E731  r = T - (3 + 1)
    reference = lambda target: int((lengths - (target - 3)).abs().argmin())  # noqa: E731  r = T - 3
    target = next(T for T in range(5, 2000) if ours(T) != reference(T))  # a target where the two disagree
    processor = LenVMLogitsProcessor(lenvm, constraint="equal", target=target, top_k=8, min_p=0.0)
    for end in range(4, 8):
        out = processor(ids[:, :end], scores)
    assert out[0].argmax().item() == probe.last_step.ids[0, ours(target)].item()
    assert out[0].argmax().item() != probe.last_step.ids[0, reference(target)].item()


@pytest.mark.parametrize("constraint", ["equal", "at_most"])
def test_hard_constraints_end_at_the_target_when_eos_is_never_a_candidate(lenvm, policy, tokenizer, constraint):
    # The random policy never ranks EOS among its top 4; without the end candidate this ran to the 12-token limit.
    out = guided_generate(policy, tokenizer, PROMPTS, lenvm=lenvm, max_new_tokens=12, batch_size=2,
                          guidance=GuidanceConfig(constraint=constraint, target=5, top_k=4))
    assert [(c.finish_reason, c.length) for c in out] == [("eos", 5), ("eos", 5)]
    assert all(c.token_ids[-1] == tokenizer.eos_token_id for c in out)


def test_the_end_candidate_joins_only_at_the_target(lenvm, tokenizer):
    vocab, eos = lenvm.config.vocab_size, tokenizer.eos_token_id
    ids, mask = _left_padded(vocab)
    processor = LenVMLogitsProcessor(lenvm, constraint="equal", target=3, top_k=4, eos_token_id=eos).begin(mask)
    for step, out in enumerate(_steps(processor, ids, 3, vocab)):
        last = processor.last_step
        assert last.ids.shape == (3, 5) and (last.ids[:, -1] == eos).all()  # the end column, scored -inf
        assert last.mask[:, -1].tolist() == [step == 2] * 3 and (last.lenvm_logits[:, -1] == -math.inf).all()
        assert (out.argmax(-1) == eos).tolist() == [step == 2] * 3


@pytest.mark.parametrize("constraint, min_p", [
    ("equal", 0.1), ("at_most", 0.1), ("at_least", 0.1), ("soft_equal", 0.0), (None, 0.0)])
def test_min_p_defaults_to_a_plausible_set_under_hard_constraints(constraint, min_p):
    target = None if constraint is None else 8
    assert GuidanceConfig(constraint=constraint, target=target).min_p == min_p
    assert GuidanceConfig(constraint=constraint, target=target, min_p=0.0).min_p == 0.0  # an explicit value stays
    assert "0.1 under a hard constraint" in GuidanceConfig.__dataclass_fields__["min_p"].metadata["help"]


def _warned(**kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = guided_generate(**kwargs)
    return out, [w for w in caught if "keeps one candidate per step" in str(w.message)]


def test_sampling_with_equal_changes_nothing_and_warns_once_per_call(lenvm, policy, tokenizer):
    common = dict(policy=policy, tokenizer=tokenizer, prompts=PROMPTS, lenvm=lenvm, max_new_tokens=6, batch_size=1)
    equal = GuidanceConfig(constraint="equal", target=5, top_k=8)
    greedy, quiet = _warned(**common, guidance=equal)
    first, warned = _warned(**common, guidance=equal, do_sample=True, seed=0)
    second, _ = _warned(**common, guidance=equal, do_sample=True, seed=5)
    assert [c.token_ids for c in first] == [c.token_ids for c in second] == [c.token_ids for c in greedy]
    assert quiet == [] and len(warned) == 1 and "do_sample=True" in str(warned[0].message)
    _, hot = _warned(**common, guidance=GuidanceConfig(constraint="at_most", target=5, temperature=1.3))
    assert len(hot) == 1 and "temperature=1.3" in str(hot[0].message)
    for guidance in (GuidanceConfig(beta=-1.0), GuidanceConfig(constraint="at_least", target=3)):  # sampling acts
        assert _warned(**common, guidance=guidance, do_sample=True, seed=0)[1] == []


# ============================================================================ generate


@pytest.mark.parametrize("config", [GuidanceConfig(beta=-20.0, top_k=8), GuidanceConfig(constraint="equal", target=5, top_k=8)])
def test_greedy_cached_path_generates_the_naive_tokens(lenvm, policy, tokenizer, config):
    kwargs = dict(lenvm=lenvm, guidance=config, max_new_tokens=6, batch_size=2)
    cached = guided_generate(policy, tokenizer, PROMPTS, **kwargs)
    naive = guided_generate(policy, tokenizer, PROMPTS, scoring="naive", **kwargs)
    assert [c.token_ids for c in cached] == [c.token_ids for c in naive]


def test_a_lenvm_smaller_than_the_policy(lenvm, tokenizer):
    """A 4-layer, 64-wide policy guided by the 2-layer, 32-wide LenVM: the cached path still equals the naive one."""
    policy = tiny_backbone("llama", vocab_size=len(tokenizer), seed=5, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4)
    assert policy.num_parameters() > sum(p.numel() for p in lenvm.parameters())
    kwargs = dict(lenvm=lenvm, guidance=GuidanceConfig(constraint="equal", target=4, top_k=8), max_new_tokens=6,
                  batch_size=2)
    cached = guided_generate(policy, tokenizer, PROMPTS, **kwargs)
    naive = guided_generate(policy, tokenizer, PROMPTS, scoring="naive", **kwargs)
    assert [c.token_ids for c in cached] == [c.token_ids for c in naive]
    plain = guided_generate(policy, tokenizer, PROMPTS, max_new_tokens=6, batch_size=2)
    assert [c.token_ids for c in cached] != [c.token_ids for c in plain]


def test_batched_equals_unbatched_with_left_padding(lenvm, policy, tokenizer):
    kwargs = dict(lenvm=lenvm, guidance=GuidanceConfig(beta=-20.0, top_k=8), max_new_tokens=6)
    batched = guided_generate(policy, tokenizer, PROMPTS, batch_size=2, **kwargs)
    single = guided_generate(policy, tokenizer, PROMPTS, batch_size=1, **kwargs)
    assert [c.token_ids for c in batched] == [c.token_ids for c in single]
    assert all(c.length == len(c.token_ids) for c in batched)


def test_guidance_changes_the_greedy_choice(lenvm, policy, tokenizer):
    plain = guided_generate(policy, tokenizer, PROMPTS, max_new_tokens=6)
    tilted = [guided_generate(policy, tokenizer, PROMPTS, lenvm=lenvm, max_new_tokens=6,
                              guidance=GuidanceConfig(beta=beta, top_k=8)) for beta in (0.0, -1e4, 1e4)]
    assert [c.token_ids for c in tilted[0]] == [c.token_ids for c in plain]  # beta = 0: the base model
    assert [c.token_ids for c in tilted[1]] != [c.token_ids for c in tilted[2]]


def test_sampling_is_reproducible_and_works_with_plain_generate(lenvm, policy, tokenizer):
    kwargs = dict(lenvm=lenvm, guidance=GuidanceConfig(beta=-2.0, top_k=8, top_p=0.9), max_new_tokens=5,
                  do_sample=True, seed=3)
    first = guided_generate(policy, tokenizer, PROMPTS, **kwargs)
    assert [c.token_ids for c in first] == [c.token_ids for c in guided_generate(policy, tokenizer, PROMPTS, **kwargs)]
    # the processor in a user's own generate call, reused for a second call
    processor = LenVMLogitsProcessor(lenvm, beta=-2.0, top_k=8)
    ids = tokenizer(PROMPTS[1], return_tensors="pt").input_ids
    for _ in range(2):
        out = policy.generate(ids, max_new_tokens=4, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                              pad_token_id=tokenizer.eos_token_id, logits_processor=LogitsProcessorList([processor]))
        assert out.shape[1] <= ids.shape[1] + 4
        assert len(processor.state_logits) == out.shape[1] - ids.shape[1]


# ============================================================================ errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(constraint="equal", target=0), "target must be a positive integer"),
    (dict(constraint="at_most", target=-5), "target must be a positive integer"),
    (dict(constraint="equal"), "needs a target"),
    (dict(constraint="exactly", target=10), "constraint must be None"),
    (dict(target=10), "needs a constraint"),
    (dict(constraint="equal", target=10, beta=-1.0), "beta=-1.0 applies to tilting only"),
    (dict(top_k=0), "top_k"),
    (dict(beta=math.inf), "beta must be finite"),
])
def test_bad_settings_name_the_argument(kwargs, message):
    with pytest.raises(ValueError, match=message):
        GuidanceConfig(**kwargs)


def test_vocabulary_mismatch_names_both(lenvm, tokenizer):
    other = tiny_backbone("llama", vocab_size=128, seed=2)  # records no vocabulary: checked by size
    with pytest.raises(ValueError, match=f"policy tokenizer .* has {len(tokenizer)} tokens but the LenVM .* has a "
                                         "vocabulary of 128"):
        LenVMLogitsProcessor(LenVM(other, gamma=0.9), top_k=4, policy_tokenizer=tokenizer)


def test_tokenizer_mismatch_names_both(lenvm, tokenizer):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")),
                                    name_or_path="other-tokenizer")
    with pytest.raises(ValueError, match="policy tokenizer .* and the LenVM tokenizer 'other-tokenizer' .*differ"):
        LenVMLogitsProcessor(lenvm, policy_tokenizer=tokenizer, lenvm_tokenizer=other)
