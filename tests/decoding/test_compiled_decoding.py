"""Static KV caches and compiled decode steps (issue 21, item 3): cached equals naive on every path.

``compile={"backend": "eager", "mode": None}`` runs the static-cache machinery (the cache, its full-width 4D mask,
the compiled-call path) through dynamo without inductor's code generation, in seconds; one test compiles with
inductor for real. The CUDA-graph variant is in tests/gpu/test_gpu_decoding.py.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone
from transformers import StaticCache

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))
from grpo_fixtures import tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import LenVM  # noqa: E402
from lenvm_rl.decoding import GuidanceConfig, LenVMLogitsProcessor, guided_generate  # noqa: E402
from lenvm_rl.decoding.scoring import StaticTrunk, extension_forward, keep_candidate  # noqa: E402

EAGER = {"backend": "eager", "mode": None}
PROMPTS = ["a b c", "d e f g h i", "j", "k l m n"]
GUIDANCE = [GuidanceConfig(beta=-2.0, top_k=8), GuidanceConfig(constraint="equal", target=6, top_k=8)]


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(seed=0).eval()


def _tokens(policy, lenvm, **kwargs):
    out = guided_generate(policy, tiny_tokenizer(), PROMPTS, lenvm=lenvm, max_new_tokens=10, **{"batch_size": 4} | kwargs)
    return [c.token_ids for c in out]


@pytest.mark.parametrize("guidance", GUIDANCE)
@pytest.mark.parametrize("shared", [False, True])
def test_static_compiled_paths_emit_the_naive_tokens(policy, guidance, shared):
    lenvm = LenVM(copy.deepcopy(policy) if shared else tiny_policy(seed=1), gamma=0.9).eval()
    naive = _tokens(policy, lenvm, guidance=guidance, scoring="naive")
    assert _tokens(policy, lenvm, guidance=guidance, compile=EAGER, shared_trunk=shared) == naive
    assert _tokens(policy, lenvm, guidance=guidance, compile=EAGER, shared_trunk=shared, batch_size=3) == naive


def test_unguided_static_compiled_equals_eager(policy):
    assert _tokens(policy, None, compile=EAGER) == _tokens(policy, None)
    sampled = dict(do_sample=True, seed=4, guidance=GuidanceConfig(top_k=8))
    assert _tokens(policy, None, compile=EAGER, **sampled) == _tokens(policy, None, **sampled)


def test_the_processor_keeps_a_static_cache_of_a_bucketed_length(policy):
    lenvm = LenVM(tiny_policy(seed=1), gamma=0.9).eval()
    processor = LenVMLogitsProcessor(lenvm, top_k=4, compile=EAGER).begin(torch.ones(2, 5, dtype=torch.long), 70)
    processor(torch.randint(2, 16, (2, 5)), torch.randn(2, 16))
    assert isinstance(processor._cache, StaticCache)
    assert processor._cache.layers[0].max_cache_len == 128  # 5 + 70 + 4 + 1 = 80, rounded up to a multiple of 64
    assert processor._cache.get_seq_length() == 5  # the candidates are cropped off
    assert not processor.cpu_prepack


def test_compile_refusals():
    lenvm = LenVM(tiny_policy(seed=1), gamma=0.9).eval()
    with pytest.raises(ValueError, match="compile needs scoring='cached' and no cpu_prepack"):
        LenVMLogitsProcessor(lenvm, compile=True, scoring="naive")
    processor = LenVMLogitsProcessor(lenvm, top_k=4, compile=EAGER)
    with pytest.raises(ValueError, match=r"call begin\(attention_mask, max_new_tokens=N\)"):
        processor(torch.tensor([[3, 4, 5]]), torch.randn(1, 16))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_keep_candidate_on_a_static_cache(arch):
    """The chosen candidate's keys and values, moved into place on a static cache, are those of the token run alone."""
    model = tiny_backbone(arch, seed=2)
    static = StaticTrunk(model, EAGER)
    ids = torch.tensor([[0, 0, 5, 6, 7], [8, 9, 10, 11, 12]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    candidates, chosen = torch.tensor([[20, 21, 22], [23, 24, 25]]), torch.tensor([2, 0])
    with torch.no_grad():
        cache = static.new_cache(2, 9)
        _, cache = extension_forward(model, ids, ids[:, :0], mask, cache=cache, **static.forward_kwargs(cache, False))
        hidden, _ = extension_forward(model, ids[:, :0], candidates, mask, cache=cache, keep_candidates=True,
                                      **static.forward_kwargs(cache, True))
        keep_candidate(cache, ids.shape[1], chosen, 3)
        picked = candidates[torch.arange(2), chosen][:, None]
        _, dynamic = extension_forward(model, ids, ids[:, :0], mask, use_cache=True)  # positions from the mask
        alone = model.model(picked, attention_mask=torch.cat([mask, torch.ones_like(picked)], 1),
                            position_ids=mask.sum(-1, keepdim=True), cache=dynamic, use_cache=True)
    assert cache.layers[0].max_cache_len == 64 and int(cache.get_seq_length()) == 6
    torch.testing.assert_close(hidden[torch.arange(2), chosen], alone.last_hidden_state[:, 0], atol=1e-5, rtol=1e-4)
    for got, want in zip(cache.layers, alone.cache.layers):
        torch.testing.assert_close(got.keys[:, :, :6], want.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(got.values[:, :, :6], want.values, atol=1e-5, rtol=1e-4)


def test_inductor_compiled_shared_trunk_emits_the_naive_tokens(policy):
    """torch.compile with inductor for real on the CPU, one graph (the shared-trunk step; about a minute on a busy
    2-core machine, seconds from inductor's cache)."""
    lenvm = LenVM(copy.deepcopy(policy), gamma=0.9).eval()
    guidance = GuidanceConfig(constraint="equal", target=6, top_k=8)
    assert _tokens(policy, lenvm, guidance=guidance, compile=True) == _tokens(policy, lenvm, guidance=guidance,
                                                                              scoring="naive")
