"""ensure_lenvm: a LenVM for a policy, built once per settings and cached behind a lock, on a tiny random policy."""

import fcntl
import hashlib
import json
import threading

import pytest
import torch
from conftest import tiny_backbone

import lenvm_rl
from lenvm_rl.lenvm_cache import LENVM_AUTO_MARKER, LenVMAutoSettings, cache_key, ensure_lenvm, lenvm_cache_dir

PROMPTS = [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(6)]
SOURCE = {"dataset": "word-problems", "dataset_config": "main", "train_split": "train", "question_column": "question",
          "instruction": "", "word_problems_seed": 0}


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory, smollm2_tokenizer):
    path = tmp_path_factory.mktemp("lenvm-cache") / "policy"
    model = tiny_backbone("llama", vocab_size=len(smollm2_tokenizer))
    model.generation_config.eos_token_id = smollm2_tokenizer.eos_token_id
    model.save_pretrained(path)
    smollm2_tokenizer.save_pretrained(path)
    return str(path)


def small(cache, **overrides):
    return LenVMAutoSettings(**{"prompts": 3, "samples": 2, "epochs": 1.0, "batch_size": 4,
                                "max_completion_length": 6, "cache_dir": str(cache), **overrides})


def test_the_key_is_the_recipes_key_of_before_the_move():
    # The dict the recipe hashed before ensure_lenvm existed (scripts/grpo.py's lenvm_auto_settings), written by
    # hand: caches built by earlier runs keep their keys.
    legacy = {"policy": "some/hub-id", "dtype": "float32", "temperature": 0.7, "top_p": 0.9,
              "max_completion_length": 128, **SOURCE, "prompts": 12, "samples": 4, "seed": 3, "epochs": 2.0,
              "learning_rate": 1e-3, "batch_size": 8, "freeze_backbone": True}
    settings = LenVMAutoSettings(prompts=12, samples=4, epochs=2.0, learning_rate=1e-3, batch_size=8, temperature=0.7,
                                 top_p=0.9, max_completion_length=128, seed=3, dtype="float32", cache_dir="/c",
                                 sampling_batch_size=5)
    expected = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:16]
    assert cache_key("some/hub-id", settings, SOURCE) == (expected, legacy)
    with_kwargs = LenVMAutoSettings(**{**vars(settings), "chat_template_kwargs": {"enable_thinking": False}})
    legacy["chat_template_kwargs"] = {"enable_thinking": False}
    assert cache_key("some/hub-id", with_kwargs, SOURCE)[1] == legacy


@pytest.mark.parametrize("change", [dict(prompts=4), dict(samples=3), dict(epochs=3.0), dict(learning_rate=2e-3),
                                    dict(batch_size=2), dict(freeze_backbone=False), dict(temperature=0.5),
                                    dict(top_p=0.5), dict(max_completion_length=7), dict(seed=1), dict(dtype="float32"),
                                    dict(chat_template_kwargs={"enable_thinking": False})])
def test_every_setting_that_shapes_the_lenvm_changes_the_key(tmp_path, change):
    base = lenvm_cache_dir("p", PROMPTS, small(tmp_path))
    assert lenvm_cache_dir("p", PROMPTS, small(tmp_path, **change)) != base
    # the sampling batch size does not change the samples' distribution, the directory is the cache itself
    assert lenvm_cache_dir("p", PROMPTS, small(tmp_path, sampling_batch_size=1)) == base
    assert lenvm_cache_dir("p", PROMPTS, small(tmp_path / "other")).name == base.name


def test_without_a_source_the_prompts_sampled_are_the_key():
    settings = small("/c", prompts=3)
    base = lenvm_cache_dir("p", PROMPTS, settings)
    assert lenvm_cache_dir("p", PROMPTS[:3] + PROMPTS[:1], settings) == base  # only the first 3 are sampled
    assert lenvm_cache_dir("p", PROMPTS[1:], settings) != base
    assert lenvm_cache_dir("p", PROMPTS, settings, prompts_source=SOURCE) != base


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from more on a busy machine
    yield
    torch.set_num_threads(threads)


def test_builds_once_then_returns_the_cached_lenvm(tiny_policy, tmp_path, capsys, one_thread):
    path = lenvm_rl.ensure_lenvm(tiny_policy, PROMPTS, small(tmp_path))
    first = capsys.readouterr().out
    assert "[lenvm auto] sampling 3 training prompts x 2" in first and "cached the LenVM" in first
    folder = lenvm_cache_dir(tiny_policy, PROMPTS, small(tmp_path))
    assert path == str(folder / "lenvm") and len((folder / "rollouts.jsonl").read_text().splitlines()) == 6
    marker = json.loads((folder / "lenvm" / LENVM_AUTO_MARKER).read_text())
    assert marker["key"] == folder.name and marker["settings"]["samples"] == 2
    head = folder / "lenvm" / "value_head.safetensors"
    stamp = head.stat().st_mtime_ns
    assert lenvm_rl.LenVM.from_pretrained(path).gamma > 0

    assert ensure_lenvm(tiny_policy, PROMPTS, small(tmp_path)) == path  # nothing sampled or trained again
    second = capsys.readouterr().out
    assert f"reusing the cached LenVM {path}" in second and "sampling" not in second and "pretraining" not in second
    assert head.stat().st_mtime_ns == stamp


def test_a_second_caller_waits_for_the_builder_holding_the_lock(tmp_path):
    settings = small(tmp_path)
    folder = lenvm_cache_dir("no/such-policy", PROMPTS, settings)
    (folder / "lenvm").mkdir(parents=True)
    (folder / "lenvm" / LENVM_AUTO_MARKER).write_text("{}")  # a finished entry: no policy is ever loaded
    result = []
    with open(tmp_path / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run is building this key
        waiter = threading.Thread(target=lambda: result.append(ensure_lenvm("no/such-policy", PROMPTS, settings)))
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not result
    waiter.join(timeout=30)
    assert result == [str(folder / "lenvm")]


def test_refuses_to_pretrain_under_deepspeed(tmp_path):
    class DeepSpeedArgs:
        deepspeed_plugin = object()

    with pytest.raises(ValueError, match="cannot pretrain under DeepSpeed"):
        ensure_lenvm("p", PROMPTS, small(tmp_path), args=DeepSpeedArgs())
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [(dict(prompts=0), "prompts must be >= 1"),
                                             (dict(epochs=0.0), "epochs must be > 0"),
                                             (dict(top_p=1.5), r"top_p must be in \(0, 1\]")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LenVMAutoSettings(**kwargs)
