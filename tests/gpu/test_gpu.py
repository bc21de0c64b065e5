"""CUDA checks (issue 18, item 2): every trainer takes a step on the GPU with a critic built on the CPU, and the
LenVM, the critic and guided decoding give the CPU's results there.

Every test is marked ``gpu`` (skipped without CUDA, see tests/conftest.py). Tiny random models only, built from
the fixtures of the CPU tests: no hub, no SmolLM2 weights. The whole file runs in well under 2 minutes on one
GPU: ``python -m pytest -q -m gpu tests/gpu``. ``DEVICE`` is a parameter so that the same code can be checked on
the CPU (set it to "cpu" and drop the marker); it stays "cuda".
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone

TESTS = Path(__file__).resolve().parents[1]
for folder in ("trainers", "modeling", "decoding"):
    sys.path.insert(0, str(TESTS / folder))
import test_grpo_trainer as grpo  # noqa: E402
import test_ppo_trainer as ppo  # noqa: E402
from grpo_fixtures import tiny_lenvm, tiny_policy, tiny_tokenizer  # noqa: E402
from test_critics import hand_batch, lenvm  # noqa: E402, F401  (lenvm: the critic tests' fixture)
from test_guidance import _left_padded  # noqa: E402
from test_lenvm import pad_batch  # noqa: E402

from lenvm_rl import LenVM, LenVMCritic  # noqa: E402
from lenvm_rl.decoding import GuidanceConfig, LenVMLogitsProcessor, guided_generate  # noqa: E402

DEVICE = "cuda"
pytestmark = pytest.mark.gpu


def devices(module: torch.nn.Module) -> set[str]:
    return {p.device.type for p in module.parameters()}


def finite_logged(trainer, key: str) -> list[float]:
    values = [entry[key] for entry in trainer.state.log_history if key in entry]
    assert values and all(math.isfinite(v) for v in values), (key, values)
    return values


# ----------------------------------------------------------------------------- trainers, one step on the GPU


@pytest.mark.parametrize("estimator, pinned, refit", [
    ("lenvm", False, 1),  # the critic moves to the GPU, and its refit head's optimizer with it
    ("group", False, 0),  # the twin, bootstrapped by the critic's V(s_T)
    ("lenvm", True, 0),  # pinned to the CPU: it stays there and hands its outputs over
])
def test_grpo_steps_with_a_critic_built_on_the_cpu(tmp_path, estimator, pinned, refit):
    critic = LenVMCritic(tiny_lenvm(), device="cpu") if pinned else LenVMCritic(tiny_lenvm())
    trainer = grpo.make_trainer(tmp_path, critic=critic, reward=grpo.rewards_by_length, length_estimator=estimator,
                                length_critic_refit_steps=refit, max_steps=1, use_cpu=DEVICE == "cpu")
    assert trainer.accelerator.device.type == DEVICE
    assert devices(critic.model) == {"cpu" if pinned else DEVICE}
    trainer.train()
    finite_logged(trainer, "loss")
    finite_logged(trainer, "length/predicted_s0")
    assert devices(trainer.model) == {DEVICE}
    if refit:
        finite_logged(trainer, "length/critic_refit_loss")


@pytest.mark.parametrize("mode, pinned", [
    ("head", False), ("lora", False), ("separate", False),
    ("head", True), ("lora", True),  # a critic pinned to the CPU: its outputs (and a LoRA critic's values) move
])
def test_ppo_steps_with_a_critic_built_on_the_cpu(tmp_path, mode, pinned):
    critic = LenVMCritic(tiny_lenvm(), device="cpu") if pinned else LenVMCritic(tiny_lenvm())
    trainer = ppo.make_trainer(tmp_path, value_model=critic, reward=grpo.rewards_by_length, task_critic=mode,
                               max_steps=1, num_ppo_epochs=1, num_mini_batches=1, logging_steps=1,
                               use_cpu=DEVICE == "cpu")
    lenvm_device = "cpu" if pinned else DEVICE
    assert devices(critic.model) == {lenvm_device}
    assert devices(trainer.task_critic) == {lenvm_device if mode == "lora" else DEVICE}  # LoRA sits on the LenVM
    assert devices(trainer.ref_model) == {DEVICE}  # the reference: a copy of the CPU-built policy
    task_before = {k: v.clone() for k, v in trainer.task_critic.named_parameters() if v.requires_grad}
    trainer.train()
    for key in ("loss", "ppo/value_loss", "ppo/kl", "length/predicted_s0"):
        finite_logged(trainer, key)
    after = dict(trainer.task_critic.named_parameters())
    assert any(not torch.equal(after[k], v) for k, v in task_before.items())  # the task critic trained


# ----------------------------------------------------------------------------- the GPU's numbers equal the CPU's


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
def test_lenvm_forward_matches_the_cpu(arch, dtype, atol):
    head = LenVM(tiny_backbone(arch), gamma=0.99).v_head
    model = LenVM(tiny_backbone(arch, seed=1).to(dtype), gamma=0.99, v_head=head).eval()
    ids, mask = pad_batch([[5, 9, 3, 7, 1, 4, 8], [11, 12], [20, 21, 22, 23]], "left", pad_id=2)
    with torch.no_grad():
        cpu = model(ids, mask)
        gpu = copy.deepcopy(model).to(DEVICE)(ids.to(DEVICE), mask.to(DEVICE))
    assert gpu.values.device.type == DEVICE and gpu.values.dtype == torch.float32
    torch.testing.assert_close(gpu.values.cpu(), cpu.values, atol=atol, rtol=0)


def test_critic_on_trls_layout_matches_the_cpu(lenvm):  # noqa: F811
    *inputs, action_mask = hand_batch()[3]
    on_gpu = [x.to(DEVICE) for x in inputs]
    cpu = LenVMCritic(lenvm)(*inputs, action_mask=action_mask, return_hidden=True)
    gpu = LenVMCritic(copy.deepcopy(lenvm), device=DEVICE)(*on_gpu, action_mask=action_mask.to(DEVICE),
                                                           return_hidden=True)
    pinned = LenVMCritic(lenvm, device="cpu")(*on_gpu, action_mask=action_mask.to(DEVICE), return_hidden=True)
    for name, expected in vars(cpu).items():
        for out in (gpu, pinned):  # the CUDA critic, and the CPU-pinned one on CUDA inputs
            actual = getattr(out, name)
            assert actual.device.type == DEVICE, name  # every output comes back on the inputs' device
            torch.testing.assert_close(actual.cpu(), expected, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("config", [GuidanceConfig(beta=-3.0, top_k=6),
                                    GuidanceConfig(constraint="equal", target=6, top_k=6, min_p=0.0)])
def test_cached_guidance_scores_equal_the_naive_ones(config):
    model = LenVM(tiny_backbone("llama", vocab_size=128, seed=1), gamma=0.9).eval().to(DEVICE)
    ids, mask = (x.to(DEVICE) for x in _left_padded(128))
    cached = LenVMLogitsProcessor(model, config).begin(mask)
    naive = LenVMLogitsProcessor(model, config, scoring="naive").begin(mask)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):  # driven like generate: greedy on the processor's output
        scores = torch.randn(ids.shape[0], 128, generator=generator).to(DEVICE)
        out_cached, out_naive = cached(ids, scores), naive(ids, scores)
        assert out_cached.device.type == DEVICE
        torch.testing.assert_close(cached.last_step.lenvm_logits, naive.last_step.lenvm_logits, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out_cached, out_naive, atol=1e-5, rtol=1e-4)
        ids = torch.cat([ids, out_cached.argmax(-1, keepdim=True)], dim=1)


def test_cached_guided_generation_emits_the_naive_tokens():
    policy, model = tiny_policy().eval().to(DEVICE), tiny_lenvm().eval().to(DEVICE)
    kwargs = dict(lenvm=model, guidance=GuidanceConfig(constraint="equal", target=5, top_k=8), max_new_tokens=8,
                  batch_size=2)
    prompts = ["a b c", "d e f g h i"]
    cached = guided_generate(policy, tiny_tokenizer(), prompts, **kwargs)
    naive = guided_generate(policy, tiny_tokenizer(), prompts, scoring="naive", **kwargs)
    assert [c.token_ids for c in cached] == [c.token_ids for c in naive]
    assert all(c.length > 0 for c in cached)
