"""bench_decoding.py length-score and tradeoff: the command functions resume a results file, refuse one written
with other arguments, and print the tables (tiny random models with the SmolLM2 tokenizer; the decoding library
they call is tested in tests/decoding)."""

import json
import re
from types import SimpleNamespace

import pytest
from conftest import tiny_backbone
from test_bench_devices import load_bench

from lenvm_rl import LenVM

GAMMA = 0.9


def test_bench_length_score_and_tradeoff_resume_and_refuse_other_arguments(smollm2_tokenizer, tmp_path,
                                                                           monkeypatch, capsys):
    bench = load_bench("bench_decoding", monkeypatch)
    vocab = len(smollm2_tokenizer)
    loads = []

    def load_models(args):
        loads.append(args)
        return (tiny_backbone("llama", vocab_size=vocab, seed=0), smollm2_tokenizer,
                LenVM(tiny_backbone("llama", vocab_size=vocab, seed=1), gamma=GAMMA).eval())

    monkeypatch.setattr(bench, "load_models", load_models)
    monkeypatch.setattr(bench, "gsm8k", lambda offset, n: (["What is 2 + 2?", "Hi"][:n], ["4", "#### 1"][:n]))
    common = dict(policy="tiny", lenvm="tiny", candidates=4, top_p=1.0, min_p=0.0, threads=1, batch_size=2,
                  offset=200, num_prompts=2, sample=True, temperature=0.7, seed=0)

    out = tmp_path / "ls.json"
    ls_args = SimpleNamespace(**common, targets=[2, 3], max_factor=1.0, output=str(out), unit="tokens",
                              tokens_per_word=1.0)
    bench.length_score(ls_args)
    saved = json.loads(out.read_text())
    assert saved["command"] == "length-score" and saved["args"]["seed"] == 0 and "threads" not in saved["args"]
    assert list(saved["units"]) == ["2", "3"]
    assert set(saved["units"]["2"]) == {"unguided", "prompt-only", "lenvm"}
    assert saved["units"]["2"]["lenvm"]["n"] == 2 and "score_se" in saved["units"]["2"]["lenvm"]
    assert "[2/2] target 3" in capsys.readouterr().out
    saved["units"].pop("3")  # as if killed after the first target
    out.write_text(json.dumps(saved))
    bench.length_score(ls_args)
    printed = capsys.readouterr().out
    assert "resuming" in printed and "[1/1] target 3" in printed and "±" in printed and len(loads) == 2
    bench.length_score(ls_args)  # all done: nothing to generate, the models are not even loaded
    assert len(loads) == 2 and "[1/" not in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other arguments"):
        bench.length_score(SimpleNamespace(**{**vars(ls_args), "seed": 1}))

    out = tmp_path / "tradeoff.json"
    to_args = SimpleNamespace(**common, betas=[-50.0], budgets=[2, 4], max_new_tokens=4, output=str(out),
                              png=str(tmp_path / "tradeoff.png"))
    bench.tradeoff(to_args)
    saved = json.loads(out.read_text())
    assert list(saved["units"]) == ["unguided", "beta -50"]
    assert [(p["method"], p["setting"]) for p in saved["units"]["unguided"]["points"]] == [
        ("tilt", 0.0), ("budget", 2.0), ("budget", 4.0)]
    assert len(saved["units"]["beta -50"]["completions"]) == 2
    assert (tmp_path / "tradeoff.png").exists() and "[2/2] beta -50" in capsys.readouterr().out
    bench.tradeoff(to_args)
    assert len(loads) == 3 and "answer rate" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other arguments"):
        bench.tradeoff(SimpleNamespace(**{**vars(to_args), "budgets": [2]}))


def test_bench_length_score_in_words_prints_the_average_over_targets(smollm2_tokenizer, tmp_path, monkeypatch,
                                                                     capsys):
    bench = load_bench("bench_decoding", monkeypatch)
    vocab = len(smollm2_tokenizer)
    monkeypatch.setattr(bench, "load_models", lambda args: (
        tiny_backbone("llama", vocab_size=vocab, seed=0), smollm2_tokenizer,
        LenVM(tiny_backbone("llama", vocab_size=vocab, seed=1), gamma=GAMMA).eval()))
    monkeypatch.setattr(bench, "gsm8k", lambda offset, n: (["What is 2 + 2?", "Hi"][:n], ["4", "#### 1"][:n]))
    args = SimpleNamespace(policy="tiny", lenvm="tiny", candidates=4, top_p=1.0, min_p=None, threads=1, batch_size=2,
                           offset=200, num_prompts=2, sample=False, temperature=1.0, seed=0, targets=[2, 3],
                           max_factor=1.0, unit="words", tokens_per_word=1.5, output=str(tmp_path / "ls.json"))
    bench.length_score(args)
    printed = capsys.readouterr().out
    assert "length score in words" in printed and "1.5 tokens a word" in printed and "min-p the default" in printed
    assert re.search(r"average +LS \S+ +LS \S+ +LS \S+", printed)
    saved = json.loads((tmp_path / "ls.json").read_text())
    assert saved["args"]["unit"] == "words" and saved["args"]["tokens_per_word"] == 1.5
    assert {"dropped", "n"} <= set(saved["units"]["2"]["lenvm"])
