"""Issue 23, item 2: image prompts in rollout records (paths and embedded data URLs), the HF-generate sampler for a
VL policy, and value-pretraining batches with images (row-ordered image inputs, no loss inside image spans)."""

# ruff: noqa: F811 -- pytest fixtures imported from vl_fixtures are test arguments
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_vl import image_message, synthetic_image, tiny_vl_backbone  # noqa: E402
from vl_fixtures import GAMMA, processor, prompts  # noqa: E402, F401

from lenvm_rl.core import monte_carlo_targets  # noqa: E402
from lenvm_rl.data import RolloutConfig, build_value_dataset, sample_rollouts  # noqa: E402
from lenvm_rl.data.images import (  # noqa: E402
    IMAGES_COLUMN,
    VisionValueDataCollator,
    encode_vision_prompt,
    image_data_url,
    image_refs,
    jsonable_prompt,
    load_image,
    with_images,
)


@pytest.fixture(scope="module")
def policy():
    return tiny_vl_backbone(seed=3)


def test_image_references_load_exactly(tmp_path):
    image = synthetic_image(4, (70, 42))
    path = tmp_path / "a.png"
    image.save(path)
    for ref in (str(path), image_data_url(image)):
        assert np.array_equal(np.asarray(load_image(ref)), np.asarray(image))
    with pytest.raises(FileNotFoundError, match="image file not found: .*missing.png"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(ValueError, match="not fetched from the network"):
        load_image("https://example.com/cat.png")
    with pytest.raises(ValueError, match="data:image/<type>;base64"):
        load_image("data:image/png,xyz")


def test_trl_image_column_joins_like_trl(processor):
    """A TRL row (chat prompt + ``images`` column) encodes as the same prompt with inline image parts."""
    image = synthetic_image(5)
    joined = with_images([{"role": "user", "content": "What colour?"}], [image])
    inline = image_message("What colour?", image)
    assert encode_vision_prompt(processor, joined)[0] == encode_vision_prompt(processor, inline)[0]


def test_hf_sampler_writes_image_records_and_resumes(policy, processor, tmp_path):
    image_path = tmp_path / "img.png"
    synthetic_image(6, (84, 56)).save(image_path)
    prompts = [image_message("What colour?", synthetic_image(0)),          # in memory: embedded as a data URL
               image_message("Describe it.", str(image_path)),             # a path: kept as the path
               [{"role": "user", "content": "No image."}]]
    config = RolloutConfig(num_completions=2, max_new_tokens=6, batch_size=4, backend="hf", seed=0)
    out = tmp_path / "rollouts.jsonl"
    records = sample_rollouts(policy, processor, prompts, out, config, model_name="tiny-vl", progress=False)
    assert len(records) == 6
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    refs = [image_refs(rec["prompt"]) for rec in lines]
    assert refs[0][0].startswith("data:image/png;base64,") and refs[2] == [str(image_path)] and refs[4] == []
    for rec in records:  # the stored ids are TRL's VLM encoding of the stored prompt, images expanded
        assert rec["prompt_ids"] == encode_vision_prompt(processor, rec["prompt"])[0]
        assert 1 <= rec["completion_length"] <= 6
    n_image_tokens = [rec["prompt_ids"].count(policy.config.image_token_id) for rec in records[::2]]
    assert n_image_tokens == [4, 6, 0]
    # resuming samples nothing new (the prompts compare equal to the stored, embedded ones)
    assert sample_rollouts(policy, processor, prompts, out, config, model_name="tiny-vl", progress=False) == records


def records_of(processor, prompts, completions, finished=None):
    records = []
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        ended = True if finished is None else finished[i]
        records.append({"prompt_index": i, "sample_index": 0, "prompt": prompt,
                        "prompt_ids": encode_vision_prompt(processor, prompt)[0], "completion_ids": completion,
                        "completion_length": len(completion), "finish_reason": "eos" if ended else "length",
                        "sampler": {"model": "tiny-vl"}})
    return records


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_value_batches_carry_row_ordered_images_and_skip_image_spans(processor, prompts, padding_side, policy):
    eos = processor.tokenizer.eos_token_id
    prompts = [jsonable_prompt(p) for p in [prompts[2], image_message("Two images?", synthetic_image(7),
                                                                      synthetic_image(8, (84, 56))), prompts[0]]]
    records = records_of(processor, prompts, [[5, eos], [6, 7, 8, eos], [9, 10]], finished=[True, True, False])
    dataset = build_value_dataset(records)
    assert dataset[0][IMAGES_COLUMN] == [] and len(dataset[1][IMAGES_COLUMN]) == 2
    collator = VisionValueDataCollator(gamma=GAMMA, pad_token_id=processor.tokenizer.pad_token_id,
                                       padding_side=padding_side, processor=processor, config=policy.config)
    batch = collator([dataset[i] for i in range(3)])
    # the image inputs: the processor's for rows 1 then 2, whatever the padding
    expected = [encode_vision_prompt(processor, p)[1] for p in prompts[1:]]
    torch.testing.assert_close(batch["pixel_values"], torch.cat([e["pixel_values"] for e in expected]))
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6], [1, 4, 4]]
    # targets: the text collator's, minus the states inside image spans (none is a target here: images are prompt)
    targets, target_mask = monte_carlo_targets(batch["attention_mask"], torch.tensor([len(r["prompt_ids"])
                                               for r in records]), torch.tensor([2, 4, 2]),
                                               torch.tensor([True, True, False]), GAMMA, censored="infinite")
    torch.testing.assert_close(batch["targets"], targets)
    assert torch.equal(batch["target_mask"], target_mask)
    config = policy.config
    inside = torch.isin(batch["input_ids"], torch.tensor([config.vision_start_token_id, config.image_token_id]))
    assert int(inside.sum()) == 2 + 4 + 6 + 1 + 4


def test_image_span_states_take_no_loss_even_as_targets(processor, policy):
    """A completion holding an image span (as a tool's image would): the states inside it get no target."""
    eos = processor.tokenizer.eos_token_id
    config = policy.config
    text_prompt = [{"role": "user", "content": "Hi"}]
    span = [config.vision_start_token_id] + [config.image_token_id] * 4 + [config.vision_end_token_id]
    (record,) = records_of(processor, [text_prompt], [[5] + span + [6, eos]])
    record["prompt"] = image_message("Hi", image_data_url(synthetic_image(9)))  # where the span's image comes from
    collator = VisionValueDataCollator(gamma=GAMMA, pad_token_id=0, processor=processor, config=config)
    batch = collator(list(build_value_dataset([record])))
    p = len(record["prompt_ids"])
    mask = batch["target_mask"][0]
    assert mask[p - 1] and mask[p] and not mask[p + 1:p + 6].any() and mask[p + 6:].all()
    assert bool((batch["targets"][0][p + 1:p + 6] == 0).all())


def test_collator_refuses_images_that_do_not_match_the_ids(processor, prompts, policy):
    eos = processor.tokenizer.eos_token_id
    prompt = image_message("What colour?", image_data_url(synthetic_image(0)))
    records = records_of(processor, [prompt], [[5, eos]])
    records[0]["prompt"] = image_message("What colour?", image_data_url(synthetic_image(1, (84, 56))))
    collator = VisionValueDataCollator(gamma=GAMMA, pad_token_id=0, processor=processor, config=policy.config)
    with pytest.raises(ValueError, match="prompt_ids and their images disagree"):
        collator(list(build_value_dataset(records)))
    with pytest.raises(ValueError, match="needs processor="):
        VisionValueDataCollator(gamma=GAMMA, processor=processor.tokenizer, config=policy.config)


def test_text_records_build_the_same_dataset_as_before(smollm2_tokenizer):
    from lenvm_rl.data import encode_prompt

    prompt = [{"role": "user", "content": "Hi"}]
    records = [{"prompt_index": 0, "sample_index": 0, "prompt": prompt,
                "prompt_ids": encode_prompt(smollm2_tokenizer, prompt), "completion_ids": [5, 2],
                "completion_length": 2, "finish_reason": "eos", "sampler": {"model": "x"}}]
    assert IMAGES_COLUMN not in build_value_dataset(records).column_names
