"""`lenvm-rl serve` as a real server in a subprocess on a loopback port, with a tiny random LenVM, on each engine
(``hf``, and ``vllm`` where vLLM is installed: see serving_fixtures).

One server per engine serves the whole module (start-up dominates the time); the SIGTERM test runs last and stops it.
"""

import json
import random
import signal
import socket
import threading
import time

import pytest
import torch
from serving_fixtures import ENGINES, engine_checkpoint, engine_server, vllm_tiny_checkpoint  # noqa: F401

from lenvm_rl import LengthPredictor, LenVM
from lenvm_rl.decoding.scoring import naive_extension_logits
from lenvm_rl.serving.client import ServerError

BUDGET = 256  # --max-batch-tokens: small, so an over-budget request is cheap to build
ATOL = 1e-5


@pytest.fixture(scope="module", params=ENGINES)
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def checkpoint(engine, request):
    return engine_checkpoint(request, engine)


@pytest.fixture(scope="module")
def server(engine, checkpoint, tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "server.log"
    with engine_server(checkpoint, engine, "--max-batch-tokens", str(BUDGET), log=log) as client:
        yield client


@pytest.fixture(scope="module")
def lenvm(checkpoint):
    return LenVM.from_pretrained(checkpoint).eval()


def encoded(lenvm, seq):
    with torch.no_grad():
        return lenvm(torch.tensor([seq])).logits[0]


def random_ids(rng, n, vocab=49152):
    return [rng.randrange(vocab) for _ in range(n)]


def test_encode_equals_lenvm_forward(server, lenvm):
    rng = random.Random(0)
    seqs = [random_ids(rng, n) for n in (1, 7, 30, 3)]
    batch = server.request("/encode", {"input_ids": seqs, "bypass_cache": [True] * 4})
    assert isinstance(batch, list) and len(batch) == 4
    for item, seq in zip(batch, seqs):
        assert set(item) == {"embedding", "meta_info"} and item["meta_info"]["prompt_tokens"] == len(seq)
        torch.testing.assert_close(torch.tensor(item["embedding"]), encoded(lenvm, seq), atol=ATOL, rtol=ATOL)
    single = server.request("/encode", {"input_ids": seqs[1]})  # a flat list: one object back
    assert isinstance(single, dict)
    torch.testing.assert_close(torch.tensor(single["embedding"]), encoded(lenvm, seqs[1]), atol=ATOL, rtol=ATOL)


def test_tree_value_equals_reencoding_each_extension(server, lenvm):
    rng = random.Random(1)
    prefixes = [random_ids(rng, n) for n in (12, 1, 5)]
    candidates = [random_ids(rng, k) for k in (16, 1, 4)]
    got = server.request("/tree_value", {"input_ids": prefixes, "candidate_ids": candidates})
    want = naive_extension_logits(lenvm, prefixes, candidates)
    assert [len(g["embedding"]) for g in got] == [16, 1, 4]
    # the reference counts the prefix and the candidates
    assert [g["meta_info"]["prompt_tokens"] for g in got] == [12 + 16, 1 + 1, 5 + 4]
    for g, w in zip(got, want):
        torch.testing.assert_close(torch.tensor(g["embedding"]), w, atol=ATOL, rtol=ATOL)
    # one prefix, flat or a batch of one, gets one object back, as from the reference server
    for body in ({"input_ids": prefixes[2], "candidate_ids": candidates[2]},
                 {"input_ids": [prefixes[2]], "candidate_ids": [candidates[2]]}):
        single = server.request("/tree_value", body)
        assert isinstance(single, dict) and single["meta_info"]["prompt_tokens"] == 9
        torch.testing.assert_close(torch.tensor(single["embedding"]), want[2], atol=ATOL, rtol=ATOL)


def test_token_value_and_candidate_value_in_the_reference_shape(server, lenvm):
    seqs, prefixes, candidates = [[5, 6, 7], [8, 9]], [[5, 6], [8]], [[7, 1, 2], [9]]
    batch = server.request("/token_value", {"input_ids": seqs})
    assert set(batch) == {"values", "meta_info"} and [m["prompt_tokens"] for m in batch["meta_info"]] == [3, 2]
    for got, seq in zip(batch["values"], seqs):
        torch.testing.assert_close(torch.tensor(got), encoded(lenvm, seq), atol=ATOL, rtol=ATOL)
    single = server.request("/token_value", {"input_ids": seqs[0]})  # one sequence: values nested, meta one object
    assert single["meta_info"] == {"prompt_tokens": 3} and len(single["values"]) == 1
    torch.testing.assert_close(torch.tensor(single["values"][0]), encoded(lenvm, seqs[0]), atol=ATOL, rtol=ATOL)

    want = naive_extension_logits(lenvm, prefixes, candidates)
    batch = server.request("/candidate_value", {"input_ids": prefixes, "candidate_ids": candidates})
    assert [m["prompt_tokens"] for m in batch["meta_info"]] == [5, 2]
    for got, w in zip(batch["values"], want):
        torch.testing.assert_close(torch.tensor(got), w, atol=ATOL, rtol=ATOL)
    single = server.request("/candidate_value", {"input_ids": prefixes[:1], "candidate_ids": candidates[:1]})
    assert single["meta_info"] == {"prompt_tokens": 5} and len(single["values"]) == 1
    torch.testing.assert_close(torch.tensor(single["values"][0]), want[0], atol=ATOL, rtol=ATOL)


def test_put_and_the_model_list_as_the_reference_server(server, lenvm, checkpoint):
    for path, body in (("/encode", {"input_ids": [[5, 6, 7]]}), ("/token_value", {"input_ids": [[5, 6, 7]]}),
                       ("/tree_value", {"input_ids": [[5, 6]], "candidate_ids": [[7]]}),
                       ("/candidate_value", {"input_ids": [[5, 6]], "candidate_ids": [[7]]})):
        got = server.request(path, body, method="PUT")
        z = got["values"][0] if "values" in got else (got[0] if isinstance(got, list) else got)["embedding"]
        assert z[-1] == pytest.approx(encoded(lenvm, [5, 6, 7])[-1].item(), abs=ATOL), path
    models = server.request("/v1/models")  # the reference launch script polls it until the server is up
    assert models["object"] == "list"
    (card,) = models["data"]
    assert card["id"] == str(checkpoint) and card["object"] == "model" and card["owned_by"] == "lenvm-rl"


def test_predict_equals_length_predictor(server, checkpoint):
    prompts = ["How many legs do 3 spiders have?", [{"role": "user", "content": "Hi"}]]
    local = LengthPredictor.from_pretrained(checkpoint).predict(prompts)
    got = server.predict(prompts)
    assert [set(p) for p in got] == [{"value", "length", "prompt_tokens"}] * 2
    for g, w in zip(got, local):
        assert g["value"] == pytest.approx(w.value, abs=ATOL) and g["length"] == pytest.approx(w.length, rel=1e-4)
    assert server.request("/predict", {"prompt": prompts[0]})["predictions"][0]["value"] == pytest.approx(
        local[0].value, abs=ATOL)


def test_concurrent_requests_each_get_their_own_answers(server, lenvm, engine):
    threads, rounds = 12, 4
    errors = []

    def worker(seed):
        rng = random.Random(seed)
        try:
            for _ in range(rounds):
                if rng.random() < 0.5:
                    seqs = [random_ids(rng, rng.randint(1, 20)) for _ in range(rng.randint(1, 3))]
                    for got, seq in zip(server.encode(seqs), seqs):
                        torch.testing.assert_close(torch.tensor(got), encoded(lenvm, seq), atol=ATOL, rtol=ATOL)
                else:
                    prefix, cands = random_ids(rng, rng.randint(1, 20)), random_ids(rng, rng.randint(1, 6))
                    (got,) = server.tree_value([prefix], [cands])
                    want = torch.stack([encoded(lenvm, prefix + [c])[-1] for c in cands])
                    torch.testing.assert_close(torch.tensor(got), want, atol=ATOL, rtol=ATOL)
        except Exception as err:  # noqa: BLE001 - reported below with the seed
            errors.append((seed, repr(err)))

    before = server.health()["requests"]
    pool = [threading.Thread(target=worker, args=(seed,)) for seed in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join(120)
    assert not errors, errors
    health = server.health()
    assert health["requests"] - before == threads * rounds
    # concurrent requests did share forward passes (ours), or were in vLLM's continuous batch together
    assert health["max_rows_per_batch" if engine == "hf" else "max_rows_in_flight"] > 1


BAD_REQUESTS = [
    ("/encode", b"{not json", 400),
    ("/encode", b"[1, 2]", 422),
    ("/encode", b"{}", 422),
    ("/encode", json.dumps({"input_ids": []}).encode(), 422),
    ("/encode", json.dumps({"input_ids": [[1, 2], []]}).encode(), 422),
    ("/encode", json.dumps({"input_ids": [[1, 49152]]}).encode(), 422),
    ("/encode", json.dumps({"input_ids": [[1, -3]]}).encode(), 422),
    ("/encode", json.dumps({"input_ids": [[1, "2"]]}).encode(), 422),
    ("/encode", json.dumps({"input_ids": [[1, 2.5]]}).encode(), 422),
    ("/encode", json.dumps({"input_ids": [[1] * (BUDGET + 1)]}).encode(), 413),
    ("/encode", json.dumps({"input_ids": [[1] * 200, [1] * 100]}).encode(), 413),
    ("/tree_value", json.dumps({"input_ids": [[1, 2]]}).encode(), 422),
    ("/tree_value", json.dumps({"input_ids": [[1, 2], [3]], "candidate_ids": [[4]]}).encode(), 422),
    ("/tree_value", json.dumps({"input_ids": [[1, 2]], "candidate_ids": [[]]}).encode(), 422),
    ("/tree_value", json.dumps({"input_ids": [1, 2], "candidate_ids": [[4]]}).encode(), 422),
    ("/tree_value", json.dumps({"input_ids": [[1, 2]], "candidate_ids": [[10 ** 9]]}).encode(), 422),
    ("/tree_value", json.dumps({"input_ids": [[1] * 200], "candidate_ids": [[1] * 100]}).encode(), 413),
    ("/predict", json.dumps({}).encode(), 422),
    ("/predict", json.dumps({"prompts": []}).encode(), 422),
    ("/predict", json.dumps({"prompts": ["hi", 3]}).encode(), 422),
    ("/predict", json.dumps({"prompt": "hi", "messages": []}).encode(), 422),
    ("/predict", json.dumps({"prompt": "word " * 400}).encode(), 413),
    ("/encode", json.dumps({"input_ids": [[1] * 200] * 200}).encode(), 413),  # a body far over the budget
    ("/no_such_endpoint", b"{}", 404),
]


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(server, lenvm):
    for path, body, status in BAD_REQUESTS:
        with pytest.raises(ServerError) as info:
            server.request(path, data=body)
        assert info.value.status == status, (path, body[:60], info.value.body)
        error = info.value.body["error"]
        assert error["code"] == status and isinstance(error["message"], str) and error["message"]
        (z,) = server.encode([[5, 6, 7]])  # the next good request succeeds
        torch.testing.assert_close(torch.tensor(z), encoded(lenvm, [5, 6, 7]), atol=ATOL, rtol=ATOL)


def test_flush_cache_and_health(server, engine):
    assert server.request("/flush_cache", method="POST")["success"] is True
    assert server.request("/flush_cache", data=b"")["success"] is True  # the reference client posts no body
    assert server.request("/flush_cache", method="GET")["success"] is True
    health = server.health()
    assert health["status"] == "ok" and health["max_batch_tokens"] == BUDGET and health["gamma"] == 0.99
    assert health["vocab_size"] == 49152 and health["predict"] is True
    assert health["engine"] == engine and health["prefix_cache"] is (engine == "vllm")
    assert (health["device"], health["dtype"]) == ("cpu", "float32")


def test_tree_value_reads_the_prefix_encode_left_in_the_cache(server, lenvm, engine):
    """vLLM: a prefix sent to /encode is cached whole blocks (32 tokens here) at a time; each extension of it in
    /tree_value reads them instead of running them again, and still gets the re-encoded z. Our engine caches
    nothing."""
    rng = random.Random(7)
    prefix, candidates = random_ids(rng, 70), random_ids(rng, 4)
    server.flush_cache()
    server.encode([prefix])
    before = server.health()
    (got,) = server.tree_value([prefix], [candidates])
    torch.testing.assert_close(torch.tensor(got), naive_extension_logits(lenvm, [prefix], [candidates])[0],
                               atol=ATOL, rtol=ATOL)
    if engine == "vllm":
        after = server.health()
        assert after["prompt_tokens"] - before["prompt_tokens"] == 4 * 71
        assert after["cached_tokens"] - before["cached_tokens"] == 4 * 64  # two whole blocks per extension


def test_a_row_over_the_engines_model_length_gets_a_422(server, lenvm, engine):
    body = {"input_ids": [[5] * 220]}  # within the token budget; over --vllm_max_model_length 200
    if engine == "hf":
        assert len(server.request("/encode", body)[0]["embedding"]) == 220
        return
    with pytest.raises(ServerError) as info:
        server.request("/encode", body)
    assert info.value.status == 422 and "max_model_len of 200" in info.value.body["error"]["message"]
    assert server.encode([[5, 6, 7]])  # and it keeps serving


def test_sigterm_finishes_the_request_in_flight(server, lenvm):
    """Send the headers and half the body, SIGTERM, then the rest: the response still comes, then the exit."""
    body = json.dumps({"input_ids": [[9, 8, 7, 6]]}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
        time.sleep(1.0)  # the server has read the headers: the request is in flight
        server.process.terminate()
        time.sleep(1.0)
        assert server.process.poll() is None  # still serving the request in flight
        sock.sendall(body[10:])
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    (item,) = json.loads(payload)
    torch.testing.assert_close(torch.tensor(item["embedding"]), encoded(lenvm, [9, 8, 7, 6]), atol=ATOL, rtol=ATOL)
    # uvicorn re-raises the signal once shut down, so the exit status says SIGTERM
    assert server.process.wait(30) in (0, -signal.SIGTERM)
    with pytest.raises(OSError):  # and it is gone
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
