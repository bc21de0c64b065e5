"""CUDA checks of issue 21, items 3 and 4: the shared-trunk path and the static-cache, compiled (CUDA-graph) decode
steps emit the tokens of the eager two-model path and of naive re-encoding on the GPU.

Every test is marked ``gpu`` (skipped without CUDA). Tiny random models only; compiling with CUDA graphs takes
about a minute in all: ``python -m pytest -q -m gpu tests/gpu/test_gpu_decoding.py``.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "trainers"))
from grpo_fixtures import tiny_policy, tiny_tokenizer  # noqa: E402

from lenvm_rl import LenVM  # noqa: E402
from lenvm_rl.decoding import GuidanceConfig, guided_generate  # noqa: E402

DEVICE = "cuda"
pytestmark = pytest.mark.gpu
PROMPTS = ["a b c", "d e f g h i", "j", "k l m n"]


def _models():
    policy = tiny_policy(seed=0).eval().to(DEVICE)
    return policy, LenVM(copy.deepcopy(policy), gamma=0.9).eval(), LenVM(tiny_policy(seed=1), gamma=0.9).eval().to(
        DEVICE)


def _tokens(policy, lenvm, **kwargs):
    out = guided_generate(policy, tiny_tokenizer(), PROMPTS, lenvm=lenvm, max_new_tokens=10, batch_size=4, **kwargs)
    return [c.token_ids for c in out]


@pytest.mark.parametrize("guidance, do_sample", [(GuidanceConfig(beta=-2.0, top_k=8), False),
                                                 (GuidanceConfig(beta=-2.0, top_k=8, top_p=0.9), True),
                                                 (GuidanceConfig(constraint="equal", target=6, top_k=8), False)])
def test_shared_trunk_emits_the_two_model_tokens(guidance, do_sample):
    policy, head_on_policy, _ = _models()
    kwargs = dict(guidance=guidance, do_sample=do_sample, seed=3)
    assert _tokens(policy, head_on_policy, shared_trunk=True, **kwargs) == _tokens(
        policy, head_on_policy, shared_trunk=False, **kwargs)


@pytest.mark.parametrize("shared", [False, True])
def test_compiled_cuda_graph_steps_emit_the_naive_tokens(shared):
    policy, head_on_policy, other = _models()
    lenvm = head_on_policy if shared else other
    guidance = GuidanceConfig(constraint="equal", target=6, top_k=8)
    naive = _tokens(policy, lenvm, guidance=guidance, scoring="naive")
    for _ in range(2):  # the second call replays the captured graphs
        assert _tokens(policy, lenvm, guidance=guidance, compile=True, shared_trunk=shared) == naive


def test_unguided_compiled_equals_eager():
    policy, _, _ = _models()
    assert _tokens(policy, None, compile=True) == _tokens(policy, None)
