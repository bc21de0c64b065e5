"""ensure_lenvm: a LenVM for a policy, built once per settings and cached behind a lock, on a tiny random policy;
and the LenVM the package ships for the embedded SmolLM2, returned without sampling."""

import fcntl
import hashlib
import json
import threading
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone
from safetensors.torch import load_file

import lenvm_rl
from lenvm_rl.lenvm_cache import (
    LENVM_AUTO_MARKER,
    PRETRAINED_DIR,
    LenVMAutoSettings,
    cache_key,
    ensure_lenvm,
    lenvm_cache_dir,
    pretrained_lenvm,
    training_constant,
)

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


class DeepSpeedArgs:
    """What ``accelerate launch --config_file zero3.yaml`` sets up: ensure_lenvm cannot pretrain under it."""

    deepspeed_plugin = object()


def test_refuses_to_pretrain_under_deepspeed(tmp_path):
    with pytest.raises(ValueError, match="cannot pretrain under DeepSpeed"):
        ensure_lenvm("p", PROMPTS, small(tmp_path), args=DeepSpeedArgs())
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [(dict(prompts=0), "prompts must be >= 1"),
                                             (dict(epochs=0.0), "epochs must be > 0"),
                                             (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
                                             (dict(retrain="yes"), "retrain must be True or False")])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LenVMAutoSettings(**kwargs)


# ----------------------------------------------------------------------------- the shipped LenVM

SHIPPED = PRETRAINED_DIR / "smollm2-135m-gsm8k"
RECIPE_SAMPLER = dict(temperature=0.7, max_completion_length=128)  # recipes/configs/*_gsm8k_cpu.yaml


def test_the_embedded_policy_gets_the_shipped_lenvm_without_sampling(smollm2_dir, tmp_path, capsys):
    path = ensure_lenvm(smollm2_dir, PROMPTS, small(tmp_path, **RECIPE_SAMPLER))
    out = capsys.readouterr().out
    assert "[lenvm auto] the LenVM shipped for smollm2-135m" in out and "sampling" not in out
    assert Path(path).parent == tmp_path and not list(tmp_path.rglob("rollouts.jsonl"))
    for name in ("model.safetensors", "tokenizer.json"):  # the embedded trunk, linked
        assert (Path(path) / name).resolve() == (Path(smollm2_dir) / name).resolve()
    model = lenvm_rl.LenVM.from_pretrained(path)
    assert model.gamma == pytest.approx(0.9910458562488609) and model.prompt_format == "chat"
    state = model.state_dict()
    assert all(torch.equal(state[key], value) for key, value in load_file(SHIPPED / "value_head.safetensors").items())
    recorded = json.loads((SHIPPED / "pretrained.json").read_text())
    assert training_constant(path, model.gamma) == recorded["constant_baseline_value"]

    stamp = (Path(path) / LENVM_AUTO_MARKER).stat().st_mtime_ns
    assert ensure_lenvm("smollm2-135m", PROMPTS, small(tmp_path, **RECIPE_SAMPLER)) == path  # the short name too
    assert (Path(path) / LENVM_AUTO_MARKER).stat().st_mtime_ns == stamp  # assembled once
    # a length limit up to the 512 tokens of its data is the same sampler; another policy has no shipped LenVM
    assert pretrained_lenvm(smollm2_dir, PROMPTS, small(tmp_path, temperature=0.7, max_completion_length=512)) \
        == SHIPPED
    assert pretrained_lenvm("some/other-policy", PROMPTS, small(tmp_path, **RECIPE_SAMPLER)) is None


def test_retrain_samples_and_pretrains_instead_of_the_shipped_lenvm(smollm2_dir, tmp_path):
    # Under DeepSpeed a LenVM cannot be built here: the shipped one is still returned, a retrain is refused.
    assert ensure_lenvm(smollm2_dir, PROMPTS, small(tmp_path, **RECIPE_SAMPLER), args=DeepSpeedArgs())
    settings = small(tmp_path, retrain=True, **RECIPE_SAMPLER)
    assert pretrained_lenvm(smollm2_dir, PROMPTS, settings) is None
    with pytest.raises(ValueError, match="cannot pretrain under DeepSpeed"):
        ensure_lenvm(smollm2_dir, PROMPTS, settings, args=DeepSpeedArgs())


@pytest.mark.parametrize("change, message", [
    (dict(temperature=1.0), r"temperature 1.0 \(it models 0.7\)"),
    (dict(top_p=0.9), r"top_p 0.9 \(it models 1.0\)"),
    (dict(max_completion_length=1024), r"max_completion_length 1024 \(its rollouts were cut at 512 tokens\)"),
    (dict(chat_template_kwargs={"enable_thinking": False}), "chat_template_kwargs"),
    (dict(prompts=["What is 1 + 1?"]), r"raw prompts \(it models chat prompts\)"),
])
def test_another_sampler_is_warned_about_and_gets_its_own_lenvm(smollm2_dir, tmp_path, change, message):
    prompts = change.pop("prompts", PROMPTS)
    settings = small(tmp_path, **{**RECIPE_SAMPLER, **change})
    with pytest.warns(UserWarning, match=f"the LenVM shipped for smollm2-135m .* models another sampler .*{message}"):
        with pytest.raises(ValueError, match="cannot pretrain under DeepSpeed"):  # it would sample and pretrain
            ensure_lenvm(smollm2_dir, prompts, settings, args=DeepSpeedArgs())


def test_another_trunk_under_the_embedded_name_is_refused(tiny_policy, tmp_path, monkeypatch):
    monkeypatch.setenv("LENVM_RL_HOME", str(tmp_path))
    (tmp_path / "smollm2-135m").symlink_to(tiny_policy)  # a converted "smollm2-135m" with other weights
    with pytest.raises(ValueError, match="model.safetensors is not the trunk the LenVM .* was trained on"):
        ensure_lenvm(str(tmp_path / "smollm2-135m"), PROMPTS, small(tmp_path / "cache", **RECIPE_SAMPLER))
    assert not list((tmp_path / "cache").glob("smollm2-135m-gsm8k-*"))


def test_the_package_data_ships_every_file_of_the_shipped_lenvms():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    pyproject = tomllib.loads((Path(lenvm_rl.__file__).parents[1] / "pyproject.toml").read_text())
    package = PRETRAINED_DIR.parent
    shipped = {path for pattern in pyproject["tool"]["setuptools"]["package-data"]["lenvm_rl"]
               for path in package.glob(pattern)}  # setuptools globs the patterns the same way
    files = {path for path in PRETRAINED_DIR.rglob("*") if path.is_file()}
    assert SHIPPED / "value_head.safetensors" in files and files <= shipped, files - shipped
