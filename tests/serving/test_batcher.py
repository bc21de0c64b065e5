"""The batcher's plan, its failure handling and the missing-dependency message, in process (no server)."""

import threading
import time
from contextlib import contextmanager

import pytest
import torch
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


# ---------------------------------------------------------------------------- failures stay with their requests
VOCAB = 128


@pytest.fixture
def lenvm():
    return LenVM(tiny_backbone(vocab_size=VOCAB), gamma=0.99).eval()


@pytest.fixture
def batcher(lenvm):
    batcher = DynamicBatcher(lenvm, max_wait_s=0.3).start()  # a long wait: requests sent together share a batch
    yield batcher
    batcher.stop(timeout=30)


def logits(lenvm, seq):
    with torch.no_grad():
        return lenvm(torch.tensor([seq])).logits[0]


@contextmanager
def held_forward(lenvm):
    """The LenVM's forward waits until the block exits; yields the event set once a forward has begun."""
    begun, release = threading.Event(), threading.Event()

    def hold(module, args):
        begun.set()
        release.wait(30)

    handle = lenvm.register_forward_pre_hook(hold)
    try:
        yield begun
    finally:
        release.set()
        handle.remove()


def test_a_request_the_model_fails_on_fails_alone(batcher, lenvm):
    good = batcher.submit("encode", [[1, 2, 3], [4, 5]])
    bad = batcher.submit("encode", [[1, VOCAB + 5]])  # outside the embedding table: the forward raises
    tree = batcher.submit("tree", [([1, 2], [3, 4])])
    torch.testing.assert_close(good.result(30)[0], logits(lenvm, [1, 2, 3]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(good.result(30)[1], logits(lenvm, [4, 5]), atol=1e-5, rtol=1e-5)
    assert isinstance(bad.exception(30), IndexError)
    torch.testing.assert_close(tree.result(30)[0][1], logits(lenvm, [1, 2, 4])[-1], atol=1e-5, rtol=1e-5)
    later = batcher.submit("encode", [[7, 8]])  # the worker lives on
    torch.testing.assert_close(later.result(30)[0], logits(lenvm, [7, 8]), atol=1e-5, rtol=1e-5)


def test_an_error_outside_the_forward_fails_its_round_and_the_worker_lives_on(batcher, lenvm, monkeypatch):
    plan = batcher.plan
    calls = []

    def failing_once(kind, rows):
        calls.append(kind)
        if len(calls) == 1:
            raise RuntimeError("injected planning failure")
        return plan(kind, rows)

    monkeypatch.setattr(batcher, "plan", failing_once)
    first = batcher.submit("encode", [[1, 2]])
    with pytest.raises(RuntimeError, match="injected planning failure"):
        first.result(30)
    assert batcher.running
    later = batcher.submit("encode", [[3, 4]])
    torch.testing.assert_close(later.result(30)[0], logits(lenvm, [3, 4]), atol=1e-5, rtol=1e-5)


def test_a_request_cancelled_mid_batch_cannot_kill_the_worker(batcher, lenvm):
    with held_forward(lenvm) as begun:
        taken = batcher.submit("encode", [[1, 2, 3]])
        assert begun.wait(30)
        taken.cancel()  # its client went away while its batch runs
    later = batcher.submit("encode", [[7, 8]])
    torch.testing.assert_close(later.result(30)[0], logits(lenvm, [7, 8]), atol=1e-5, rtol=1e-5)  # the worker lives
    # once the worker took it, a request cannot be cancelled under it: its result is delivered
    torch.testing.assert_close(taken.result(30)[0], logits(lenvm, [1, 2, 3]), atol=1e-5, rtol=1e-5)
    with held_forward(lenvm) as begun:
        blocker = batcher.submit("encode", [[4]])
        assert begun.wait(30)
        queued = batcher.submit("encode", [[5, 6]])
        assert queued.cancel()  # still queued: cancelled, and the worker skips it
    later = batcher.submit("encode", [[7, 8]])
    torch.testing.assert_close(later.result(30)[0], logits(lenvm, [7, 8]), atol=1e-5, rtol=1e-5)
    assert blocker.result(30) and queued.cancelled()


def test_submit_during_and_after_stop_is_refused_and_accepted_requests_are_served(lenvm):
    batcher = DynamicBatcher(lenvm, max_wait_s=0.0).start()
    with held_forward(lenvm) as begun:
        accepted = batcher.submit("encode", [[1, 2]])
        assert begun.wait(30)
        stopper = threading.Thread(target=batcher.stop, kwargs={"timeout": 30})
        stopper.start()
        deadline = time.monotonic() + 5
        while batcher.running and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(RuntimeError, match="stopped: it takes no new requests"):
            batcher.submit("encode", [[3, 4]])
    stopper.join(30)
    torch.testing.assert_close(accepted.result(30)[0], logits(lenvm, [1, 2]), atol=1e-5, rtol=1e-5)
    with pytest.raises(RuntimeError, match="stopped: it takes no new requests"):
        batcher.submit("encode", [[3, 4]])
