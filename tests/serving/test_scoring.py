"""One-forward extension scoring and the batcher's plan, in process (no server)."""

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.serving import require_serving_dependencies
from lenvm_rl.serving.batcher import DynamicBatcher, row_tokens
from lenvm_rl.serving.scoring import naive_extension_logits, score_extensions, tree_values


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


def test_plan_sorts_by_length_and_keeps_the_token_budget():
    batcher = DynamicBatcher(LenVM(tiny_backbone(), gamma=0.99), max_batch_tokens=20, max_batch_size=3,
                             max_padding=0.9)

    class Job:  # only .rows is read by plan
        def __init__(self, rows):
            self.rows = rows

    jobs = [Job([[1] * n for n in (3, 9, 1)]), Job([[1] * n for n in (5, 5, 2, 8)])]
    rows = [(job, i) for job in jobs for i in range(len(job.rows))]
    batches = batcher.plan("encode", rows)
    widths = [[row_tokens("encode", job.rows[i]) for job, i in batch] for batch in batches]
    assert sorted(n for w in widths for n in w) == [1, 2, 3, 5, 5, 8, 9]
    assert all(max(w) * len(w) <= 20 and len(w) <= 3 for w in widths)
    assert [n for w in widths for n in w] == [9, 8, 5, 5, 3, 2, 1]  # longest first
    # tree rows pad prefixes and candidate lists apart: (10 + 1) and (1 + 10) cost 2 x (10 + 10) together
    tree = Job([([1] * 10, [2]), ([1], [2] * 10)])
    assert len(batcher.plan("tree", [(tree, 0), (tree, 1)])) == 2
    # padding limit: 8 then 2 would be 50 % padding
    batcher.max_batch_tokens, batcher.max_padding = 100, 0.25
    lengths = Job([[1] * n for n in (8, 7, 2, 2)])
    planned = batcher.plan("encode", [(lengths, i) for i in range(4)])
    assert [[len(lengths.rows[i]) for _, i in b] for b in planned] == [[8, 7], [2, 2]]


def test_missing_dependencies_say_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    with pytest.raises(ImportError, match=r"pip install 'lenvm-rl\[serve\]'"):
        require_serving_dependencies()
