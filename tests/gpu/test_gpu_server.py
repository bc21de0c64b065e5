"""Issue 21, item 1: `lenvm-rl serve --device cuda`, a real server in a subprocess on a loopback port, gives the
CPU forward's values (float32, within 1e-5) on a tiny random LenVM saved to a temporary directory.

Marked ``gpu`` (skipped without CUDA, see tests/conftest.py): ``python -m pytest -q -m gpu tests/gpu``.
"""

from __future__ import annotations

import random

import pytest
import torch

from lenvm_rl import LenVM
from lenvm_rl.decoding.scoring import naive_extension_logits
from lenvm_rl.serving.client import launch_server

DEVICE = "cuda"
ATOL = 1e-5
pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda_server(tiny_checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve-cuda") / "server.log"
    with open(log, "w") as log_file:
        try:
            with launch_server(tiny_checkpoint, "--device", DEVICE, "--dtype", "float32", log_file=log_file,
                               startup_timeout=180) as client:
                yield client
        except Exception:
            print(log.read_text())
            raise


@pytest.fixture(scope="module")
def cpu_lenvm(tiny_checkpoint):
    return LenVM.from_pretrained(tiny_checkpoint, device="cpu").eval()


def test_the_server_runs_on_cuda(cuda_server):
    assert cuda_server.health()["device"].startswith("cuda")


def test_encode_on_cuda_equals_the_cpu_forward(cuda_server, cpu_lenvm):
    rng = random.Random(0)
    vocab = cpu_lenvm.config.vocab_size
    seqs = [[rng.randrange(vocab) for _ in range(n)] for n in (1, 7, 30, 3)]
    batch = cuda_server.request("/encode", {"input_ids": seqs, "bypass_cache": [True] * len(seqs)})
    assert len(batch) == len(seqs)
    for item, seq in zip(batch, seqs):
        with torch.no_grad():
            want = cpu_lenvm(torch.tensor([seq])).logits[0]
        torch.testing.assert_close(torch.tensor(item["embedding"]), want, atol=ATOL, rtol=ATOL)


def test_tree_value_on_cuda_equals_reencoding_on_the_cpu(cuda_server, cpu_lenvm):
    rng = random.Random(1)
    vocab = cpu_lenvm.config.vocab_size
    prefixes = [[rng.randrange(vocab) for _ in range(n)] for n in (12, 1, 5)]
    candidates = [[rng.randrange(vocab) for _ in range(k)] for k in (16, 1, 4)]
    got = cuda_server.request("/tree_value", {"input_ids": prefixes, "candidate_ids": candidates})
    want = naive_extension_logits(cpu_lenvm, prefixes, candidates)
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.tensor(g["embedding"]), w, atol=ATOL, rtol=ATOL)
