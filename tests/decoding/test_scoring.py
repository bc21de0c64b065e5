"""One-forward extension scoring (the logits processor's and /tree_value's) against re-encoding every extension."""

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.decoding.scoring import naive_extension_logits, score_extensions, tree_values


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tree_values_match_reencoding_each_extension(arch):
    model = LenVM(tiny_backbone(arch), gamma=0.99)
    prefixes = [[5, 9, 3, 7, 1, 4, 8], [11, 12], [20]]
    candidates = [[1, 2, 3, 4], [5], [6, 7]]
    got = tree_values(model, prefixes, candidates)
    want = naive_extension_logits(model, prefixes, candidates)
    assert [g.shape for g in got] == [(4,), (1,), (2,)]
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_score_extensions_on_a_cache_keeps_no_candidate(arch):
    model = LenVM(tiny_backbone(arch), gamma=0.99)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2], [0, 0, 7, 1, 8, 2, 8]])
    mask = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])  # the second row is left-padded
    cand = torch.tensor([[10, 11, 12], [13, 14, 15]])
    with torch.no_grad():
        cache = model(ids[:, :4], mask[:, :4], use_cache=True).cache
        out = score_extensions(model, ids[:, 4:], cand, mask, cache=cache, use_cache=True)
    assert out.cache.get_seq_length() == 7  # the three new tokens stay, the candidates are cropped
    prefixes = [ids[0].tolist(), ids[1, 2:].tolist()]
    want = naive_extension_logits(model, prefixes, cand.tolist())
    torch.testing.assert_close(out.candidate_logits, torch.stack(want), atol=1e-5, rtol=1e-5)
    full = model(ids, mask).logits[:, 4:]
    torch.testing.assert_close(out.new_logits, full, atol=1e-5, rtol=1e-5)
