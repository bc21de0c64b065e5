import json
import random

import pytest
import torch
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.data import ValueDataCollator, build_value_dataset
from lenvm_rl.trainers import LenVMConfig, LenVMTrainer

EOS = 2


def synthetic_records(n, seed=0):
    """Prompt [10, 20] is answered in 2 tokens, prompt [10, 21] in 12: a learnable length signal."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        short = i % 2 == 0
        length = 2 if short else 12
        completion = [rng.randrange(30, 120) for _ in range(length - 1)] + [EOS]
        records.append({"prompt_index": i, "sample_index": 0, "prompt_ids": [10, 20 if short else 21],
                        "completion_ids": completion, "completion_length": length, "finish_reason": "eos"})
    return records


def config(tmp_path, **kwargs):
    defaults = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, per_device_eval_batch_size=8,
                    learning_rate=3e-3, num_train_epochs=1, logging_steps=1, save_strategy="no", report_to="none",
                    use_cpu=True, seed=0, data_seed=0, disable_tqdm=True, lr_scheduler_type="constant")
    return LenVMConfig(**{**defaults, **kwargs})


def test_training_lowers_eval_mse_and_changes_head_and_backbone(tmp_path):
    model = LenVM(tiny_backbone("llama"), gamma=0.8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train, evaluation = build_value_dataset(synthetic_records(64)), build_value_dataset(synthetic_records(16, seed=1))
    trainer = LenVMTrainer(model, config(tmp_path, num_train_epochs=3), train_dataset=train, eval_dataset=evaluation)
    start = trainer.evaluate()["eval_loss"]
    trainer.train()
    end = trainer.evaluate()["eval_loss"]
    assert end < 0.5 * start, (start, end)
    after = model.state_dict()
    assert not torch.equal(after["v_head.fc.weight"], before["v_head.fc.weight"])
    assert not torch.equal(after["backbone.model.layers.0.self_attn.q_proj.weight"],
                           before["backbone.model.layers.0.self_attn.q_proj.weight"])


def test_boundary_weight_counts_s0_that_many_times(tmp_path):
    model = LenVM(tiny_backbone("llama"), gamma=0.8)
    records = synthetic_records(4)
    batch = ValueDataCollator(gamma=0.8, pad_token_id=0)([dict(x) for x in build_value_dataset(records)])
    trainer = LenVMTrainer(model, config(tmp_path, boundary_weight=10.0), train_dataset=build_value_dataset(records))
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch).item()
        values = model(batch["input_ids"], batch["attention_mask"]).values
    squared = (values - batch["targets"]) ** 2
    mask = batch["target_mask"]
    first = mask & (mask.long().cumsum(1) == 1)  # s_0: the last prompt token
    expected = (squared[mask].sum() + 9 * squared[first].sum()) / (mask.sum() + 9 * first.sum())
    assert loss == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="boundary_weight must be >= 0"):
        config(tmp_path, boundary_weight=-1.0)


def test_frozen_backbone_stays_bit_identical(tmp_path):
    model = LenVM(tiny_backbone("llama"), gamma=0.8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = LenVMTrainer(model, config(tmp_path, freeze_backbone=True), train_dataset=build_value_dataset(synthetic_records(16)))
    trainer.train()
    for name, tensor in model.state_dict().items():
        if name.startswith("backbone."):
            assert torch.equal(tensor, before[name]), name
    assert not torch.equal(model.v_head.summary.weight, before["v_head.summary.weight"])


def test_loss_is_token_mean_over_the_whole_accumulated_step(tmp_path):
    """With gradient accumulation, the step's loss divides by all target positions of the step."""
    model = LenVM(tiny_backbone("llama"), gamma=0.8)
    data = build_value_dataset(synthetic_records(4))
    trainer = LenVMTrainer(model, config(tmp_path, per_device_train_batch_size=2, gradient_accumulation_steps=2),
                           train_dataset=data)
    collate = ValueDataCollator(gamma=0.8)
    micro = [collate([data[0], data[1]]), collate([data[2], data[3]])]
    n = trainer._get_num_items_in_batch(micro, torch.device("cpu"))
    assert n == (2 + 1) * 2 + (12 + 1) * 2  # L + 1 states per completion
    with torch.no_grad():
        parts = [trainer.compute_loss(model, b, num_items_in_batch=n) for b in micro]
        whole = collate([data[i] for i in range(4)])
        out = model(whole["input_ids"], whole["attention_mask"])
        expected = ((out.values - whole["targets"])[whole["target_mask"]] ** 2).sum() / n
    torch.testing.assert_close(sum(parts), expected)


def test_resume_gives_the_same_next_step_loss(tmp_path):
    data = build_value_dataset(synthetic_records(24))

    def run(output_dir, max_steps, resume=None, save_steps=None):
        model = LenVM(tiny_backbone("llama"), gamma=0.8)
        args = config(tmp_path, output_dir=str(output_dir), max_steps=max_steps,
                      save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)
        trainer = LenVMTrainer(model, args, train_dataset=data)
        trainer.train(resume_from_checkpoint=resume)
        return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}

    full = run(tmp_path / "full", max_steps=4)
    run(tmp_path / "part", max_steps=4, save_steps=2)
    checkpoint = tmp_path / "part" / "checkpoint-2"
    assert (checkpoint / "value_head.safetensors").is_file() and (checkpoint / "model.safetensors").is_file()
    assert json.loads((checkpoint / "config.json").read_text())["lenvm_gamma"] == 0.8
    assert LenVM.from_pretrained(checkpoint).gamma == 0.8
    resumed = run(tmp_path / "resumed", max_steps=4, resume=str(checkpoint))
    assert resumed[3] == pytest.approx(full[3], rel=1e-5) and resumed[4] == pytest.approx(full[4], rel=1e-5)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss_type": "huber"}, "loss_type must be 'mse' or 'bce'"),
        ({"lam": 1.5}, r"lam must be in \[0, 1\]"),
        ({"censored": "ignore"}, "censored must be 'infinite' or 'drop'"),
        ({"lam": 0.9, "loss_type": "bce"}, "use it with loss_type='mse'"),
        ({"remove_unused_columns": True}, "leave it False"),
    ],
)
def test_bad_config(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(tmp_path, **kwargs)


def test_bce_and_lambda_losses_train(tmp_path):
    for kwargs in ({"loss_type": "bce"}, {"lam": 0.9}):
        model = LenVM(tiny_backbone("llama"), gamma=0.8)
        evaluation = build_value_dataset(synthetic_records(16, seed=1))
        trainer = LenVMTrainer(model, config(tmp_path, num_train_epochs=3, **kwargs),
                               train_dataset=build_value_dataset(synthetic_records(64)), eval_dataset=evaluation)
        start = trainer.evaluate()["eval_loss"]
        trainer.train()
        assert trainer.evaluate()["eval_loss"] < start, kwargs


def test_bf16_mixed_precision_trains_with_an_fp32_head(tmp_path):
    model = LenVM(tiny_backbone("llama"), gamma=0.8)
    evaluation = build_value_dataset(synthetic_records(16, seed=1))
    trainer = LenVMTrainer(model, config(tmp_path, num_train_epochs=3, bf16=True),
                           train_dataset=build_value_dataset(synthetic_records(64)), eval_dataset=evaluation)
    start = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < start
    assert model.v_head.fc.weight.dtype == torch.float32
