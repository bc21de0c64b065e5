"""Value-pretraining features through vLLM: ``extract_features`` with a ``VLLMLenVM`` caches what it caches with the
``LenVM`` (hidden states within 1e-4 in float32, every other tensor exactly), for both position modes, directly and
through ``bench_pretrain.py --backend vllm``; states beyond the float16 range are refused on both backends.

The vLLM tests run where vLLM is installed (``vllm-cpu`` here, eager and float32 as the plugin's other tests);
the ``hf`` float16 test runs everywhere.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from analysis.analysis_fixtures import PROMPTS, make_records, write
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.analysis import extract_features, load_features
from lenvm_rl.vllm.scoring import VLLMLenVM

ATOL = 1e-4
ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=64 * 2**20)
# records of different lengths (one cut at max_new_tokens 12), two of them past a 128-token KV block
RECORDS = make_records(PROMPTS, [[4, 7, -12], [2, 150], [5, 3, 130]], seed=0)
SETTINGS = dict(gamma=0.9, model_name="tiny", batch_size=2, chunk_records=3, progress=False)


def save_lenvm(path: Path, norm_scale: float = 1.0) -> Path:
    """A tiny random Qwen2 LenVM (head size 32, vLLM's CPU minimum); ``norm_scale`` multiplies the final norm's
    weight, and so every trunk state."""
    backbone = tiny_backbone("qwen2", vocab_size=512, seed=2, hidden_size=64, num_attention_heads=2,
                             num_key_value_heads=1)
    with torch.no_grad():
        backbone.model.norm.weight.mul_(norm_scale)
    LenVM(backbone, gamma=0.9).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_lenvm(tmp_path_factory.mktemp("lenvm") / "qwen2")


@pytest.fixture(scope="module")
def vllm_lenvm(checkpoint):
    pytest.importorskip("vllm")
    model = VLLMLenVM.from_pretrained(checkpoint, **ENGINE)
    yield model
    model.close()


def assert_same_features(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    torch.testing.assert_close(got["hidden"], want["hidden"], atol=ATOL, rtol=1e-5)
    for key in want.keys() - {"hidden"}:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("positions", ["all", "boundary"])
def test_features_through_vllm_equal_the_lenvm_ones(vllm_lenvm, checkpoint, tmp_path, positions):
    path = write(tmp_path / "train.jsonl", RECORDS)
    lenvm = LenVM.from_pretrained(checkpoint).eval()
    want = load_features(extract_features(lambda: lenvm, path, tmp_path / "hf", positions=positions,
                                          feature_dtype="float32", **SETTINGS))
    got = load_features(extract_features(lambda: vllm_lenvm, path, tmp_path / "vllm", positions=positions,
                                         feature_dtype="float32", **SETTINGS))
    assert len(want["targets"]) == (sum(r["completion_length"] + 1 for r in RECORDS) if positions == "all"
                                    else len(RECORDS))
    assert_same_features(got, want)


@pytest.mark.parametrize("backend", ["hf", pytest.param("vllm", marks=pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None, reason="vLLM is not installed"))])
def test_states_beyond_float16_are_refused(tmp_path, backend):
    path = save_lenvm(tmp_path / "loud", norm_scale=1e6)
    model = LenVM.from_pretrained(path).eval() if backend == "hf" else VLLMLenVM.from_pretrained(path, **ENGINE)
    rollouts = write(tmp_path / "train.jsonl", RECORDS[:2])
    try:
        with pytest.raises(ValueError, match="exceed the float16 range; use --feature-dtype float32"):
            extract_features(lambda: model, rollouts, tmp_path / "c16", positions="all", feature_dtype="float16",
                             **SETTINGS)
        features = load_features(extract_features(lambda: model, rollouts, tmp_path / "c32", positions="all",
                                                  feature_dtype="float32", **SETTINGS))
        assert features["hidden"].abs().max() > torch.finfo(torch.float16).max
    finally:
        if backend == "vllm":
            model.close()


def test_bench_pretrain_backend_vllm_caches_the_hf_features(checkpoint, tmp_path, monkeypatch):
    """``bench_pretrain.py variants --backend vllm --extract-only``: the vLLM engine of ``lenvm-rl evaluate``'s
    ``--vllm_*`` options, a cache of its own model name, the same features as ``--backend hf``."""
    pytest.importorskip("vllm")
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; else vLLM's CPU build reserves 90 % of the memory
    spec = importlib.util.spec_from_file_location(
        "bench_pretrain", Path(__file__).resolve().parents[2] / "bench" / "bench_pretrain.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rollouts = write(tmp_path / "train.jsonl", RECORDS)
    features = {}
    for backend in ("hf", "vllm"):
        args = bench.parse_args([
            "variants", "--backend", backend, "--model", str(checkpoint), "--train-rollouts", str(rollouts),
            "--cache-dir", str(tmp_path / backend), "--positions", "boundary", "--feature-dtype", "float32",
            "--batch-size", "2", "--chunk-records", "3", "--extract-only", "--device", "cpu",
            "--vllm-enforce-eager", "--vllm-max-model-length", "256"])
        bench.variants(args)
        folder = tmp_path / backend / "train.jsonl.boundary"
        meta = json.loads((folder / "meta.json").read_text())
        assert meta["model"] == (str(checkpoint) if backend == "hf" else f"{checkpoint}+vllm")
        features[backend] = load_features(folder)
    assert_same_features(features["vllm"], features["hf"])
