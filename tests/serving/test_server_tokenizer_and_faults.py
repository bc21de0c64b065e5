"""`lenvm-rl serve` without a tokenizer, with `--tokenizer` (on each engine: see serving_fixtures), and a request
the model fails on (our engine: a fault cannot be injected into vLLM's worker process).

Real servers on loopback: the CLI in a subprocess, and an app under uvicorn in a thread for the injected fault.
"""

import threading
import time
from contextlib import contextmanager

import pytest
import torch
from serving_fixtures import ENGINES, engine_checkpoint, engine_server, vllm_tiny_checkpoint  # noqa: F401

from lenvm_rl import LengthPredictor, LenVM
from lenvm_rl.decoding.scoring import naive_extension_logits
from lenvm_rl.serving import create_app
from lenvm_rl.serving.client import LenVMClient, ServerError, free_port

ATOL = 1e-5


@pytest.fixture(scope="module")
def lenvm(tiny_checkpoint):
    return LenVM.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture
def checkpoint(engine, request):
    return engine_checkpoint(request, engine)


@pytest.fixture
def bare_checkpoint(checkpoint, tmp_path):
    """The engine's tiny LenVM saved alone: weights, config and value head, no tokenizer files."""
    path = tmp_path / "bare-lenvm"
    LenVM.from_pretrained(checkpoint).save_pretrained(path)
    assert not any(p.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")) for p in path.iterdir())
    return path


def test_a_checkpoint_without_tokenizer_serves_token_ids_and_predict_names_the_tokenizer(bare_checkpoint, engine,
                                                                                        tmp_path):
    lenvm = LenVM.from_pretrained(bare_checkpoint).eval()
    with engine_server(bare_checkpoint, engine, log=tmp_path / "server.log") as server:
        (z,) = server.encode([[5, 6, 7]])
        torch.testing.assert_close(torch.tensor(z), lenvm.score([[5, 6, 7]])[0].logits, atol=ATOL, rtol=ATOL)
        (tree,) = server.tree_value([[5, 6]], [[7, 8]])
        torch.testing.assert_close(torch.tensor(tree), naive_extension_logits(lenvm, [[5, 6]], [[7, 8]])[0],
                                   atol=ATOL, rtol=ATOL)
        assert server.flush_cache()["success"] is True
        assert server.health()["predict"] is False
        with pytest.raises(ServerError) as info:
            server.predict(["How many legs do 3 spiders have?"])
        assert info.value.status == 400 and "--tokenizer" in info.value.body["error"]["message"]
        assert server.encode([[9]])  # and it keeps serving
    assert "holds no tokenizer" in (tmp_path / "server.log").read_text()


def test_tokenizer_flag_serves_predict_for_a_checkpoint_without_one(bare_checkpoint, checkpoint, engine, tmp_path):
    prompts = ["How many legs do 3 spiders have?", [{"role": "user", "content": "Hi"}]]
    local = LengthPredictor.from_pretrained(checkpoint).predict(prompts)
    with engine_server(bare_checkpoint, engine, "--tokenizer", str(checkpoint), log=tmp_path / "server.log") as server:
        got = server.predict(prompts)
    for g, w in zip(got, local):
        assert g["value"] == pytest.approx(w.value, abs=ATOL) and g["length"] == pytest.approx(w.length, rel=1e-4)


@contextmanager
def app_in_thread(app):
    """Run a FastAPI app under uvicorn in a thread on a loopback port; yield a client once /health answers."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    client = LenVMClient(f"http://127.0.0.1:{port}", timeout=30)
    try:
        for _ in range(300):
            try:
                client.health()
                break
            except OSError:
                time.sleep(0.1)
        yield client
    finally:
        server.should_exit = True
        thread.join(30)


POISON = 13  # a token id the injected fault makes the model's forward fail on


def test_a_request_the_model_fails_on_gets_a_500_and_the_others_are_served(lenvm):
    def fault(module, args):
        if (args[0] == POISON).any():
            raise RuntimeError("injected fault")

    handle = lenvm.register_forward_pre_hook(fault)
    try:
        with app_in_thread(create_app(lenvm, max_wait_s=0.2)) as server:
            results = {}

            def call(name, ids):
                try:
                    results[name] = server.encode(ids)
                except ServerError as err:
                    results[name] = err

            threads = [threading.Thread(target=call, args=(name, ids))
                       for name, ids in (("good", [[5, 6, 7]]), ("bad", [[5, POISON]]), ("other", [[8, 9]]))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert isinstance(results["bad"], ServerError) and results["bad"].status == 500
            assert "injected fault" in results["bad"].body["error"]["message"]
            handle.remove()
            for name, seq in (("good", [5, 6, 7]), ("other", [8, 9])):
                torch.testing.assert_close(torch.tensor(results[name][0]), lenvm.score([seq])[0].logits,
                                           atol=ATOL, rtol=ATOL)
            (z,) = server.encode([[5, POISON]])  # the worker lives on: the same request succeeds now
            assert len(z) == 2
    finally:
        handle.remove()
