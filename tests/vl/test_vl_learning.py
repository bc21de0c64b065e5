"""Issue 23, item 6: value pretraining of a VL LenVM learns the remaining length from the image alone.

Synthetic image-conditioned rollouts: every prompt has the same text; a red-dominant image is answered in 2 tokens
and a blue-dominant one in 9. Only the image tells them apart, so a head that predicts both lengths at ``s_0``
reads the image through the trunk. The vision tower stays frozen (bit-identical); the language model trains.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_vl import image_message, synthetic_image, tiny_processor, tiny_vl_backbone  # noqa: E402

from lenvm_rl import LengthPredictor, LenVM, LenVMConfig, LenVMTrainer  # noqa: E402
from lenvm_rl.data import build_value_dataset  # noqa: E402
from lenvm_rl.data.images import encode_vision_prompt, image_data_url  # noqa: E402

GAMMA = 0.8
LENGTHS = {0: 2, 2: 9}  # dominant colour channel (seed % 3) -> completion length, EOS included


def image_prompt(seed):
    return image_message("How long is the answer?", image_data_url(synthetic_image(seed)))


def records(processor, seeds):
    eos = processor.tokenizer.eos_token_id
    out = []
    for i, seed in enumerate(seeds):
        prompt = image_prompt(seed)
        length = LENGTHS[seed % 3]
        out.append({"prompt_index": i, "sample_index": 0, "prompt": prompt,
                    "prompt_ids": encode_vision_prompt(processor, prompt)[0],
                    "completion_ids": [100 + t for t in range(length - 1)] + [eos], "completion_length": length,
                    "finish_reason": "eos", "sampler": {"model": "tiny-vl"}})
    return out


def test_head_learns_remaining_length_from_the_image(tmp_path):
    torch.manual_seed(0)
    processor = tiny_processor()
    lenvm = LenVM(tiny_vl_backbone(seed=5), gamma=GAMMA)
    train_seeds = [s for s in range(48) if s % 3 != 1]  # 32 prompts, half of each colour
    held_out = [s for s in range(48, 60) if s % 3 != 1]
    before = {name: p.detach().clone() for name, p in lenvm.named_parameters()}
    predictor = LengthPredictor(lenvm, processor)

    def mean_abs_error():
        predicted = [p.length for p in predictor.predict([image_prompt(s) for s in held_out])]
        return sum(abs(n - LENGTHS[s % 3]) for n, s in zip(predicted, held_out)) / len(held_out), predicted

    error_before, _ = mean_abs_error()
    args = LenVMConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=60, learning_rate=3e-3,
                       lr_scheduler_type="constant", use_cpu=True, report_to="none", save_strategy="no",
                       logging_steps=10, seed=0, disable_tqdm=True, boundary_weight=10.0)
    trainer = LenVMTrainer(lenvm, args, train_dataset=build_value_dataset(records(processor, train_seeds)),
                           processing_class=processor)
    trainer.train()
    error_after, predicted = mean_abs_error()
    short = [n for n, s in zip(predicted, held_out) if LENGTHS[s % 3] == 2]
    long = [n for n, s in zip(predicted, held_out) if LENGTHS[s % 3] == 9]
    assert max(short) < min(long), (short, long)  # the image alone separates them
    assert error_after < 0.5 and error_before > 2, (error_before, error_after)  # tokens, on held-out images

    changed = {name for name, p in lenvm.named_parameters() if not torch.equal(p, before[name])}
    vision = {name for name in before if ".visual." in name}
    assert vision and not changed & vision  # the frozen vision tower is bit-identical
    assert any(".language_model.layers." in name for name in changed) and "v_head.fc.weight" in changed
