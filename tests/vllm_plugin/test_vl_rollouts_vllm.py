"""Issue 23, item 2: the vLLM rollout backend samples image prompts of a Qwen2.5-VL policy.

vLLM processes the images and expands their placeholders itself, so it gets one placeholder token per image; the
prompt it builds must equal the ids the policy's processor gives (the recorded ``s_0``). vLLM 0.32's Qwen2.5-VL
imports transformers' Qwen2-VL image processor, which imports torchvision: without it the backend refuses image
prompts up front. The engine tests run where vLLM and torchvision are installed; the refusal where torchvision is not.
"""

import importlib.util
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "vl"))
from tiny_vl import CHAT_TEMPLATE, _tokenizer, image_message, synthetic_image, tiny_processor, tiny_vl_backbone  # noqa: E402

from lenvm_rl.data.rollouts import RolloutConfig, read_rollouts, sample_rollouts  # noqa: E402

HAS_TORCHVISION = importlib.util.find_spec("torchvision") is not None
MAX_PIXELS = 112 * 112


@pytest.mark.skipif(HAS_TORCHVISION, reason="torchvision is installed: vLLM's Qwen2.5-VL can load")
def test_vllm_without_torchvision_refuses_image_prompts_naming_why_and_writes_nothing(tmp_path):
    out = tmp_path / "rollouts.jsonl"
    prompts = [image_message("What colour is it?", synthetic_image(0)), [{"role": "user", "content": "No image."}]]
    with pytest.raises(ImportError, match=r"image prompts through vLLM need torchvision.*backend='hf'"):
        sample_rollouts(str(tmp_path / "tiny-vl"), tiny_processor(), prompts, out,
                        RolloutConfig(num_completions=1, backend="vllm"), progress=False)
    assert not out.exists()


def _processor(max_pixels=MAX_PIXELS):
    """Qwen2.5-VL's own processor (torchvision backends), which vLLM loads back from the model directory."""
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    patches = dict(patch_size=14, merge_size=2, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(**patches, min_pixels=28 * 28,
                                                                     max_pixels=max_pixels),
                               video_processor=Qwen2VLVideoProcessor(**patches), tokenizer=_tokenizer(),
                               chat_template=CHAT_TEMPLATE)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny random Qwen2.5-VL on disk with its processor: head size 32 (vLLM's CPU minimum), wide initialisation so
    that greedy completions depend on the image."""
    pytest.importorskip("vllm")
    pytest.importorskip("torchvision")
    model = tiny_vl_backbone(hidden_size=64, num_attention_heads=2, initializer_range=0.3)
    path = tmp_path_factory.mktemp("tiny-vl-policy")
    model.save_pretrained(path)
    _processor().save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def llm(policy):
    import vllm

    engine = vllm.LLM(model=str(policy[0]), dtype="float32", seed=0, enforce_eager=True, max_model_len=256,
                      kv_cache_memory_bytes=256 * 2**20, limit_mm_per_prompt={"image": 2, "video": 0})
    yield engine
    engine.llm_engine.engine_core.shutdown()  # while pytest's log streams are still open


PROMPTS = [image_message("What colour is it?", synthetic_image(0)),
           image_message("What colour is it?", synthetic_image(1, size=(112, 84))),
           [{"role": "user", "content": "No image here."}],
           image_message("Which is brighter?", synthetic_image(2), synthetic_image(3, size=(84, 56)))]


def test_vllm_samples_image_prompts_as_hf_does_near_greedy(policy, llm, tmp_path):
    # At a temperature this low both backends sample the argmax: the same policy, seeing the same images in the same
    # s_0, gives the same tokens. (At 1e-3, top-two logit gaps of 0.007 here flipped a token now and then.)
    config = dict(num_completions=2, temperature=1e-4, max_new_tokens=10, batch_size=4)
    hf = sample_rollouts(policy[1], _processor(), PROMPTS, tmp_path / "hf.jsonl",
                         RolloutConfig(**config, backend="hf"), model_name="tiny-vl", progress=False)
    fast = sample_rollouts(llm, _processor(), PROMPTS, tmp_path / "vllm.jsonl",
                           RolloutConfig(**config, backend="vllm"), model_name="tiny-vl", progress=False)
    assert len(fast) == len(hf) == 8
    image_token = policy[1].config.image_token_id
    assert [r["prompt_ids"].count(image_token) for r in fast[::2]] == [4, 12, 0, 4 + 6]
    for h, v in zip(hf, fast):
        assert v["sampler"] == {**h["sampler"], "backend": "vllm"}
        for key in ("prompt_index", "sample_index", "prompt", "prompt_ids", "completion_ids", "finish_reason"):
            assert v[key] == h[key], key
    # The image is seen: the same question about two images is answered differently.
    assert fast[0]["completion_ids"] != fast[2]["completion_ids"]


def test_vllm_image_rollouts_resume_from_a_path_and_feed_value_pretraining(policy, llm, tmp_path):
    from lenvm_rl.data import build_value_dataset
    from lenvm_rl.data.images import VisionValueDataCollator

    out = tmp_path / "r.jsonl"
    config = RolloutConfig(num_completions=2, temperature=1.0, max_new_tokens=8, batch_size=2, backend="vllm")
    first = sample_rollouts(llm, _processor(), PROMPTS[:2], out, config, progress=False)
    assert sample_rollouts(str(policy[0]), _processor(), PROMPTS[:2], out, config, progress=False) == first
    records = sample_rollouts(llm, _processor(), PROMPTS, out, config, progress=False)
    assert records[:4] == first and read_rollouts(out) == records
    collator = VisionValueDataCollator(gamma=0.99, pad_token_id=2, processor=_processor(), config=policy[1].config)
    batch = collator(list(build_value_dataset(records)))
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 2 + [[1, 6, 8]] * 2 + [[1, 4, 4], [1, 4, 6]] * 2


def test_vllm_refuses_a_processor_that_builds_another_prompt_and_writes_nothing(policy, llm, tmp_path):
    out = tmp_path / "r.jsonl"
    small = _processor(max_pixels=56 * 56)  # a 112 x 84 image becomes 4 tokens here, 12 in the model directory's
    with pytest.raises(RuntimeError, match=r"vLLM built prompt 0 of this batch as \d+ tokens, the processor as \d+"):
        sample_rollouts(llm, small, PROMPTS[1:2], out, RolloutConfig(num_completions=1, max_new_tokens=4,
                                                                      backend="vllm"), progress=False)
    assert not out.exists() or out.read_text() == ""
