import json

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_backbone
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file

from lenvm_rl import LenVM
from lenvm_rl.modeling import VALUE_HEAD_FILE

ARCHS = ["llama", "qwen2"]


def pad_batch(seqs, side, pad_id=0):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl] = torch.tensor(s)
        mask[i, sl] = 1
    return ids, mask


def hand_head(hidden, head):
    """The head's formula written out: z = W2 SiLU(W1 h + b1) + b2."""
    return (F.silu(hidden @ head["fc.weight"].T + head["fc.bias"]) @ head["summary.weight"].T + head["summary.bias"]).squeeze(-1)


@pytest.mark.parametrize("arch", ARCHS)
def test_values_are_minus_sigmoid_of_the_mlp_head(arch):
    model = LenVM(tiny_backbone(arch), gamma=0.99)
    ids = torch.randint(0, 128, (2, 6))
    out = model(ids)
    hidden = model.backbone.base_model(input_ids=ids).last_hidden_state
    expected_z = hand_head(hidden, model.v_head.state_dict())
    torch.testing.assert_close(out.logits, expected_z)
    torch.testing.assert_close(out.values, -torch.sigmoid(expected_z))
    assert out.values.shape == (2, 6) and out.values.dtype == torch.float32
    assert ((out.values < 0) & (out.values > -1)).all()


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_each_sequence_alone(arch, side):
    model = LenVM(tiny_backbone(arch), gamma=0.99)
    seqs = [[5, 9, 3, 7, 1, 4, 8], [11, 12], [20, 21, 22, 23]]
    ids, mask = pad_batch(seqs, side, pad_id=2)
    with torch.no_grad():
        batched = model(ids, mask)
        for i, s in enumerate(seqs):
            alone = model(torch.tensor([s])).values[0]
            real = mask[i].bool()
            torch.testing.assert_close(batched.values[i, real], alone, atol=1e-5, rtol=1e-5)
            assert (batched.values[i, ~real] == 0).all() and (batched.logits[i, ~real] == 0).all()
        # Whatever sits at padding positions never changes a real position's value.
        other_pad = torch.where(mask.bool(), ids, torch.randint_like(ids, 0, 128))
        assert torch.equal(model(other_pad, mask).values, batched.values)


def test_head_runs_in_fp32_with_a_bf16_backbone_and_under_autocast():
    fp32 = LenVM(tiny_backbone("llama"), gamma=0.99)
    bf16 = LenVM(tiny_backbone("llama").to(torch.bfloat16), gamma=0.99, v_head=fp32.v_head)
    ids = torch.randint(0, 128, (2, 5))
    assert bf16.v_head.fc.weight.dtype == torch.float32
    out = bf16(ids)
    assert out.values.dtype == torch.float32 and out.logits.dtype == torch.float32
    torch.testing.assert_close(out.values, fp32(ids).values, atol=0.05, rtol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = fp32(ids)
    assert auto.logits.dtype == torch.float32


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_extension_matches_full_forward(arch):
    model = LenVM(tiny_backbone(arch), gamma=0.99)
    ids = torch.randint(0, 128, (1, 9))
    with torch.no_grad():
        full = model(ids).values
        prefix = model(ids[:, :6], use_cache=True)
        assert prefix.cache is not None
        rest = model(ids[:, 6:], attention_mask=torch.ones(1, 9, dtype=torch.long), cache=prefix.cache)
    torch.testing.assert_close(rest.values, full[:, 6:], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lora", [False, True])
def test_activation_checkpointing_gives_the_same_gradients(lora):
    # Trainer enables it through activation_checkpointing_enable (gradient_checkpointing_enable on
    # transformers 5.19, which vLLM pins); both must reach the backbone's layers.
    ids = torch.randint(0, 128, (2, 7))

    def grads(enable):
        backbone = tiny_backbone("llama")
        if lora:
            backbone = get_peft_model(backbone, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
        model = LenVM(backbone, gamma=0.99).train()  # seeded by tiny_backbone: the same weights each call
        if enable:
            enable(model)
            lm = model._causal_lm
            assert lm.is_activation_checkpointing if hasattr(lm, "is_activation_checkpointing") else \
                lm.is_gradient_checkpointing
        model(ids).values.square().sum().backward()
        return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    plain = grads(None)
    for enable in (LenVM.activation_checkpointing_enable, LenVM.gradient_checkpointing_enable):
        checkpointed = grads(enable)
        assert checkpointed.keys() == plain.keys() and any("backbone" in n for n in plain)
        for name in plain:
            torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5)


def test_score_returns_input_order_and_matches_forward():
    model = LenVM(tiny_backbone("llama"), gamma=0.99)
    seqs = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], [11, 12, 13, 14]]
    scored = model.score(seqs, batch_size=2)
    assert [len(s.values) for s in scored] == [3, 6, 1, 4]
    for seq, out in zip(seqs, scored):
        with torch.no_grad():
            alone = model(torch.tensor([seq]))
        torch.testing.assert_close(out.values, alone.values[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.logits, alone.logits[0], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"sequences\[1\] is empty"):
        model.score([[1], []])
    with pytest.raises(ValueError, match="batch_size"):
        model.score([[1]], batch_size=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_save_load_round_trip_is_exact_in_the_reference_layout(arch, tmp_path):
    model = LenVM(tiny_backbone(arch), gamma=0.995)
    model.save_pretrained(tmp_path)
    head = load_file(tmp_path / VALUE_HEAD_FILE)
    assert {k: tuple(v.shape) for k, v in head.items()} == {
        "v_head.fc.weight": (32, 32), "v_head.fc.bias": (32,),
        "v_head.summary.weight": (1, 32), "v_head.summary.bias": (1,),
    }
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["lenvm_gamma"] == 0.995
    assert config["architectures"] == [{"llama": "LlamaForLengthValueModel", "qwen2": "Qwen2ForLengthValueModel"}[arch]]
    assert (tmp_path / "model.safetensors").is_file()
    loaded = LenVM.from_pretrained(tmp_path)
    assert loaded.gamma == 0.995
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        assert torch.equal(loaded(ids).values, model(ids).values)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_save_pretrained_writes_a_given_state_dict(tmp_path):
    # What a ZeRO-3 Trainer does: it gathers the full state and hands it to save_pretrained.
    model = LenVM(tiny_backbone("llama"), gamma=0.99)
    state = {k: v + 1.0 for k, v in model.state_dict().items()}
    model.save_pretrained(tmp_path, state_dict=state)
    loaded = LenVM.from_pretrained(tmp_path)
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_hand_written_reference_checkpoint_loads_and_predicts_the_same_after_save_and_load(tmp_path):
    backbone = tiny_backbone("llama")
    backbone.save_pretrained(tmp_path / "ref")  # a plain backbone dir: no gamma, no LenVM architecture
    g = torch.Generator().manual_seed(3)
    head = {
        "v_head.fc.weight": torch.randn(32, 32, generator=g) * 0.2,
        "v_head.fc.bias": torch.randn(32, generator=g) * 0.1,
        "v_head.summary.weight": torch.randn(1, 32, generator=g) * 0.2,
        "v_head.summary.bias": torch.tensor([0.7]),
    }
    save_file(head, tmp_path / "ref" / VALUE_HEAD_FILE)
    model = LenVM.from_pretrained(tmp_path / "ref", gamma=0.99)
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        hidden = backbone.base_model(input_ids=ids).last_hidden_state
        expected = -torch.sigmoid(hand_head(hidden, {k.removeprefix("v_head."): v for k, v in head.items()}))
        torch.testing.assert_close(model(ids).values, expected)
        model.save_pretrained(tmp_path / "ours")
        again = LenVM.from_pretrained(tmp_path / "ours")
        assert torch.equal(again(ids).values, model(ids).values)
    assert again.gamma == 0.99


@pytest.fixture
def saved(tmp_path):
    LenVM(tiny_backbone("llama"), gamma=0.99).save_pretrained(tmp_path)
    return tmp_path


def test_missing_head_file_is_an_error_naming_file_and_keys(saved):
    (saved / VALUE_HEAD_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=r"value_head\.safetensors not found.*v_head\.fc\.bias"):
        LenVM.from_pretrained(saved)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h.pop("v_head.summary.bias"), r"missing keys \['v_head\.summary\.bias'\]"),
        (lambda h: h.update({"v_head.extra": torch.zeros(1)}), r"unexpected keys \['v_head\.extra'\]"),
        (lambda h: h.update({"v_head.fc.weight": torch.zeros(16, 32)}), r"v_head\.fc\.weight has shape \(16, 32\) but the backbone needs \(32, 32\)"),
    ],
)
def test_broken_head_is_an_error_naming_file_and_key(saved, edit, message):
    head = load_file(saved / VALUE_HEAD_FILE)
    edit(head)
    save_file(head, saved / VALUE_HEAD_FILE)
    with pytest.raises(ValueError, match=r"value_head\.safetensors.*" + message):
        LenVM.from_pretrained(saved)


def test_gamma_must_be_known_and_consistent(saved):
    config = json.loads((saved / "config.json").read_text())
    with pytest.raises(ValueError, match="gamma=0.5 disagrees with lenvm_gamma=0.99"):
        LenVM.from_pretrained(saved, gamma=0.5)
    del config["lenvm_gamma"]
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not record `lenvm_gamma`; pass gamma="):
        LenVM.from_pretrained(saved)
    assert LenVM.from_pretrained(saved, gamma=0.9).gamma == 0.9
    for bad in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="gamma must be a float in"):
            LenVM(tiny_backbone("llama"), gamma=bad)


def test_unknown_paths_and_pickle_checkpoints_are_refused(saved, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a local directory, a Hub id or a short name"):
        LenVM.from_pretrained(tmp_path / "does-not-exist")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        LenVM.from_pretrained(tmp_path / "empty")
    with pytest.raises(ValueError, match="bare backbone with no value head"):
        LenVM.from_pretrained("smollm2-135m")
    # A pickle-only backbone: safetensors are required, torch.load is never called.
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((saved / "config.json").read_text())
    torch.save(tiny_backbone("llama").state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(FileNotFoundError, match="could not load the backbone"):
        LenVM.from_pretrained(pickled)


def test_lora_backbone_trains_only_adapters_and_head_and_round_trips(tmp_path):
    base = tiny_backbone("llama")
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    peft_backbone = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model = LenVM(peft_backbone, gamma=0.99)
    ids = torch.randint(0, 128, (2, 6))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(ids).values.pow(2).mean().backward()
    grads = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert any("lora_A" in n for n in grads) and "v_head.fc.weight" in grads
    assert all("lora_" in n or n.startswith("v_head.") for n in grads)
    optimizer.step()
    for name, tensor in base.state_dict().items():
        if "lora_" not in name:
            assert torch.equal(tensor, frozen[name.replace("base_layer.", "")]), name

    adapter_dir = tmp_path / "adapter"
    tiny_backbone("llama").save_pretrained(tmp_path / "base")  # same seed: the frozen base weights
    peft_backbone.peft_config["default"].base_model_name_or_path = str(tmp_path / "base")
    model.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file() and (adapter_dir / VALUE_HEAD_FILE).is_file()
    with torch.no_grad():
        expected = model(ids).values
        torch.testing.assert_close(LenVM.from_pretrained(adapter_dir)(ids).values, expected)
        model.merge_and_unload().save_pretrained(tmp_path / "merged")
        assert not (tmp_path / "merged" / "adapter_config.json").exists()
        torch.testing.assert_close(LenVM.from_pretrained(tmp_path / "merged")(ids).values, expected, atol=1e-5, rtol=1e-5)
