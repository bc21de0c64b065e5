"""The batcher's plan and the missing-dependency message, in process (no server)."""

import pytest
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.serving import require_serving_dependencies
from lenvm_rl.serving.batcher import DynamicBatcher, row_tokens


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
