"""Issue 23, item 1: a LenVM on a tiny random Qwen2.5-VL: image inputs in the forward, padding invariance with images,
the reference layout (backbone + processor + value_head.safetensors) both ways, and LoRA on the language model only."""

# ruff: noqa: F811 -- pytest fixtures imported from vl_fixtures are test arguments
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_vl import synthetic_image, tiny_processor, tiny_vl_backbone  # noqa: E402
from vl_fixtures import GAMMA, processor, prompts, vl_lenvm  # noqa: E402, F401

from lenvm_rl import LengthPredictor, LenVM  # noqa: E402
from lenvm_rl.data.images import encode_vision_prompt  # noqa: E402
from lenvm_rl.modeling.vision import lora_language_model  # noqa: E402

ATOL = 1e-5


def encode(processor, prompt, completion=()):
    ids, images = encode_vision_prompt(processor, prompt)
    return ids + list(completion), images


def batch(processor, rows, padding_side):
    """Pad (ids, images) rows on ``padding_side``; the image inputs are joined in row order."""
    from lenvm_rl.data.rollouts import pad_token_ids
    from lenvm_rl.modeling.vision import batch_vision_rows

    input_ids, mask = pad_token_ids([ids for ids, _ in rows], processor.tokenizer.pad_token_id,
                                    padding_side=padding_side)
    return input_ids, mask, batch_vision_rows([images for _, images in rows])


def test_padding_invariance_with_images(vl_lenvm, processor, prompts):
    """Each row's values are the same alone, right-padded and left-padded beside rows with other images or none."""
    rows = [encode(processor, p, completion) for p, completion in zip(prompts, ([5, 6, 7], [8], [9, 10, 11, 12]))]
    assert [len(im["image_grid_thw"]) if im else 0 for _, im in rows] == [1, 1, 0]
    with torch.no_grad():
        alone = [vl_lenvm(torch.tensor([ids]), **(im or {})).values[0] for ids, im in rows]
        for side in ("right", "left"):
            input_ids, mask, images = batch(processor, rows, side)
            values = vl_lenvm(input_ids, mask, **images).values
            for b, expected in enumerate(alone):
                torch.testing.assert_close(values[b][mask[b].bool()], expected, atol=ATOL, rtol=ATOL)
                assert bool((values[b][~mask[b].bool()] == 0).all())


def test_the_head_reads_the_image_as_context(vl_lenvm, processor):
    """Another image changes the values from its first placeholder token on, and none before it (causal)."""
    text = "Describe it."
    ids_a, images_a = encode_vision_prompt(processor, [{"role": "user", "content": [
        {"type": "image", "image": synthetic_image(0)}, {"type": "text", "text": text}]}])
    _, images_b = encode_vision_prompt(processor, [{"role": "user", "content": [
        {"type": "image", "image": synthetic_image(1)}, {"type": "text", "text": text}]}])
    first_image = ids_a.index(vl_lenvm.config.image_token_id)
    with torch.no_grad():
        a = vl_lenvm(torch.tensor([ids_a]), **images_a).values[0]
        b = vl_lenvm(torch.tensor([ids_a]), **images_b).values[0]
    torch.testing.assert_close(a[:first_image], b[:first_image], atol=0, rtol=0)
    assert (a[first_image:] - b[first_image:]).abs().min() > 0


def test_mismatched_image_inputs_are_refused(vl_lenvm, processor, prompts):
    ids, images = encode(processor, prompts[0])
    with pytest.raises(ValueError, match="4 image placeholder tokens .* 0 image features"):
        vl_lenvm(torch.tensor([ids]))
    _, other = encode(processor, prompts[1])  # 6 image tokens' worth of patches
    with pytest.raises(ValueError, match="4 image placeholder tokens .* 6 image features"):
        vl_lenvm(torch.tensor([ids]), **other)
    with pytest.raises(ValueError, match="pixel_values and image_grid_thw together"):
        vl_lenvm(torch.tensor([ids]), pixel_values=images["pixel_values"])
    with pytest.raises(ValueError, match="unsupported vision inputs"):
        vl_lenvm(torch.tensor([ids]), **images, pixel_values_videos=images["pixel_values"])


def test_a_text_lenvm_refuses_image_inputs(processor, prompts):
    from conftest import tiny_backbone

    text_lenvm = LenVM(tiny_backbone("llama", vocab_size=len(processor.tokenizer)), gamma=GAMMA)
    ids, images = encode(processor, prompts[0])
    with pytest.raises(ValueError, match="LlamaForCausalLM is a text-only backbone"):
        text_lenvm(torch.tensor([ids]), **images)


def test_reference_layout_round_trip(vl_lenvm, processor, prompts, tmp_path):
    """Saved as the reference's VL LenVM: a Qwen2.5-VL directory with its processor and value_head.safetensors. It
    loads back here, and the reference's own recipe (the VL model's last hidden state, then the head) gives the same
    values as this library."""
    vl_lenvm.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Qwen2_5_VLForLengthValueModel"]
    assert config["lenvm_gamma"] == GAMMA and "vision_config" in config
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "processor_config.json").is_file()
    assert set(load_file(tmp_path / "value_head.safetensors")) == {
        "v_head.fc.weight", "v_head.fc.bias", "v_head.summary.weight", "v_head.summary.bias"}

    ids, images = encode(processor, prompts[1], [20, 21, 22])
    with torch.no_grad():
        expected = vl_lenvm(torch.tensor([ids]), **images).values[0]
        loaded = LenVM.from_pretrained(tmp_path)
        assert type(loaded.backbone).__name__ == "Qwen2_5_VLForConditionalGeneration"
        torch.testing.assert_close(loaded(torch.tensor([ids]), **images).values[0], expected, atol=0, rtol=0)

        # the reference's recipe (inference/visualization/real_sample_tree_value_visualization_vl_hf.py): the VL
        # model on the processor's output with output_hidden_states, its last hidden state through the head
        from transformers import Qwen2_5_VLForConditionalGeneration

        reference = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
        text = processor.apply_chat_template(prompts[1], tokenize=False, add_generation_prompt=True)
        inputs = tiny_processor()(images=[synthetic_image(1, (84, 56))], text=[text], return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == ids[:-3]
        completion = torch.tensor([[20, 21, 22]])
        inputs.update(input_ids=torch.cat([inputs["input_ids"], completion], 1),
                      attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                      mm_token_type_ids=torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(completion)], 1))
        hidden = reference(**inputs, output_hidden_states=True).hidden_states[-1]
        head = {k.removeprefix("v_head."): v for k, v in load_file(tmp_path / "value_head.safetensors").items()}
        z = torch.nn.functional.linear(torch.nn.functional.silu(
            torch.nn.functional.linear(hidden[0], head["fc.weight"], head["fc.bias"])),
            head["summary.weight"], head["summary.bias"]).squeeze(-1)
        torch.testing.assert_close(-torch.sigmoid(z), expected, atol=ATOL, rtol=ATOL)

    predictor = LengthPredictor.from_pretrained(tmp_path)  # the processor comes back with the checkpoint
    assert type(predictor.tokenizer).__name__ == "TinyQwen2_5_VLProcessor"
    (trace,) = [predictor.trace(prompts[1], [20, 21, 22])]
    torch.testing.assert_close(trace.values, expected[len(ids) - 4:], atol=ATOL, rtol=ATOL)


def test_lora_on_the_language_model_only(processor, prompts, tmp_path):
    lenvm = LenVM(tiny_vl_backbone(seed=2), gamma=GAMMA)
    ids, images = encode(processor, prompts[0], [5, 6])
    with torch.no_grad():
        before = lenvm(torch.tensor([ids]), **images).values
    lora_language_model(lenvm, r=4, lora_alpha=8)
    trainable = [name for name, p in lenvm.named_parameters() if p.requires_grad]
    lora = [name for name in trainable if "lora_" in name]
    assert lora and all(".language_model.layers." in name for name in lora)
    assert set(trainable) - set(lora) == {f"v_head.{k}" for k in ("fc.weight", "fc.bias", "summary.weight",
                                                                    "summary.bias")}
    assert not any("visual" in name and "lora_" in name for name, _ in lenvm.named_parameters())
    with torch.no_grad():  # LoRA's B starts at zero: the same values until it trains
        torch.testing.assert_close(lenvm(torch.tensor([ids]), **images).values, before, atol=ATOL, rtol=ATOL)
    # one step moves only the adapters and the head
    frozen = {name: p.detach().clone() for name, p in lenvm.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in lenvm.parameters() if p.requires_grad], lr=0.5)
    lenvm(torch.tensor([ids]), **images).values.sum().backward()
    optimizer.step()
    assert all(torch.equal(p, frozen[name]) for name, p in lenvm.named_parameters() if name in frozen)
    with torch.no_grad():
        trained = lenvm(torch.tensor([ids]), **images).values
    assert not torch.allclose(trained, before)
    lenvm.merge_and_unload().save_pretrained(tmp_path)  # then the reference layout
    with torch.no_grad():
        torch.testing.assert_close(LenVM.from_pretrained(tmp_path)(torch.tensor([ids]), **images).values, trained,
                                   atol=ATOL, rtol=ATOL)
