"""PrepackedLinears: the oneDNN-packed float32 linear layers give F.linear's results, and never stale ones."""

import pytest
import torch
from conftest import tiny_backbone
from torch import nn

from lenvm_rl import LenVM
from lenvm_rl.decoding import LenVMLogitsProcessor
from lenvm_rl.modeling import PrepackedLinears
from lenvm_rl.modeling.prepack import _onednn_linear_available

pytestmark = pytest.mark.skipif(not _onednn_linear_available(), reason="PyTorch built without oneDNN")


@pytest.fixture
def lenvm():
    return LenVM(tiny_backbone("llama", vocab_size=128, seed=1), gamma=0.9).eval()


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    return ids, mask


@torch.no_grad()
def test_packed_forward_equals_the_default_forward(lenvm):
    ids, mask = _batch()
    reference = lenvm(ids, mask)
    with PrepackedLinears(lenvm, rows=5) as packed:
        out = lenvm(ids, mask)
        trunk_linears = [m for m in lenvm.backbone.model.modules() if type(m) is nn.Linear]
        assert set(packed._packed) == set(trunk_linears)  # every trunk layer ran packed (the head calls F.linear)
    torch.testing.assert_close(out.logits, reference.logits, atol=1e-5, rtol=1e-5)


def test_exit_restores_the_modules_and_leaves_the_state_dict_alone(lenvm):
    keys = list(lenvm.state_dict())
    with PrepackedLinears(lenvm):
        assert all("forward" in m.__dict__ for m in lenvm.modules() if type(m) is nn.Linear)
    assert all("forward" not in m.__dict__ for m in lenvm.modules())
    assert list(lenvm.state_dict()) == keys


@torch.no_grad()
def test_a_weight_changed_in_place_is_repacked(lenvm):
    ids, mask = _batch(1)
    prepacked = PrepackedLinears(lenvm)
    with prepacked:
        before = lenvm(ids, mask).logits
    lenvm.backbone.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    reference = lenvm(ids, mask).logits
    with prepacked:
        after = lenvm(ids, mask).logits
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, reference, atol=1e-5, rtol=1e-5)


def test_training_falls_back_to_autograd(lenvm):
    ids, mask = _batch(2)
    lenvm.train()
    with PrepackedLinears(lenvm) as prepacked:
        loss = lenvm(ids, mask).values.sum()
        loss.backward()
        assert prepacked._packed == {}  # nothing packed: every call needed a graph
    assert all(p.grad is not None for p in lenvm.v_head.parameters())


def test_cannot_nest_and_bf16_is_not_available(lenvm):
    prepacked = PrepackedLinears(lenvm)
    with prepacked, pytest.raises(RuntimeError, match="cannot be nested"):
        prepacked.__enter__()
    assert PrepackedLinears.available(lenvm)
    assert not PrepackedLinears.available(lenvm.to(torch.bfloat16))
    with pytest.raises(ValueError, match="rows must be >= 1"):
        PrepackedLinears(lenvm, rows=0)


def test_processor_prepacks_by_default_and_refuses_a_forced_prepack_it_cannot_do(lenvm):
    ids, mask = _batch(3)
    scores = torch.randn(3, 128)
    packed = LenVMLogitsProcessor(lenvm, top_k=4).begin(mask)
    out_packed = packed(ids, scores)
    assert packed._prepacked is not None and len(packed._prepacked._packed) > 0
    plain = LenVMLogitsProcessor(lenvm, top_k=4, cpu_prepack=False).begin(mask)
    torch.testing.assert_close(plain(ids, scores), out_packed, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain.last_step.lenvm_logits, packed.last_step.lenvm_logits, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cpu_prepack=True needs a float32 LenVM on the CPU"):
        LenVMLogitsProcessor(lenvm.to(torch.bfloat16), top_k=4, cpu_prepack=True)
    assert LenVMLogitsProcessor(lenvm, top_k=4)._prepacked is None  # bf16: auto leaves it off
