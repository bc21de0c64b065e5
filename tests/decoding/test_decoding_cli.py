"""``lenvm-rl generate`` and ``lenvm-rl analyze`` on a tiny saved LenVM (also loaded as the policy)."""

import json
import re

import pytest
from conftest import tiny_backbone

from lenvm_rl import LenVM
from lenvm_rl.cli import main


def test_generate_jsonl_with_a_target(tiny_checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps({"prompt": "What is 2 + 2?"}) + "\n")
    args = ["generate", "--policy", str(tiny_checkpoint), "--lenvm", str(tiny_checkpoint), "--input", str(prompts),
            "--prompt", "Hello", "--constraint", "equal", "--target", "4", "--top_k", "4", "--max_new_tokens", "5",
            "--format", "jsonl"]
    assert main(args) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in records] == [0, 1, 2] and records[0]["prompt"] == "Hello"
    for r in records:
        assert r["completion_length"] == len(r["completion_ids"]) <= 5
        assert r["finish_reason"] in ("eos", "length") and r["constraint"] == "equal" and r["target"] == 4
        assert r["guided"] is True


def test_generate_help_says_equal_ignores_sampling_and_gives_the_min_p_default(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exit_info.value.code == 0
    assert "keep one candidate per step, so their output is deterministic: --sample and --seed change nothing" in out
    assert "default: 0.1 with equal, at_most or at_least" in out and "EOS included" in out


def test_generate_equal_with_sampling_warns_and_ends_at_the_target(tiny_checkpoint, capsys):
    args = ["generate", "--policy", str(tiny_checkpoint), "--lenvm", str(tiny_checkpoint), "--prompt", "Hi",
            "--constraint", "equal", "--target", "3", "--top_k", "4", "--max_new_tokens", "8", "--format", "jsonl"]
    with pytest.warns(UserWarning, match="constraint='equal' keeps one candidate per step.*do_sample=True"):
        assert main([*args, "--sample", "--seed", "5"]) == 0
    sampled = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    greedy = json.loads(capsys.readouterr().out)
    assert sampled["completion_ids"] == greedy["completion_ids"]
    assert (greedy["completion_length"], greedy["finish_reason"], greedy["min_p"]) == (3, "eos", 0.1)


def test_generate_text_tilt_and_unguided(tiny_checkpoint, capsys):
    base = ["generate", "--policy", str(tiny_checkpoint), "--prompt", "Hi", "--max_new_tokens", "3"]
    assert main([*base, "--lenvm", str(tiny_checkpoint), "--beta", "-5", "--sample", "--top_p", "0.9"]) == 0
    assert re.match(r"=== \[0\] \d+ tokens, (eos|length)\n", capsys.readouterr().out)
    assert main(base) == 0
    assert capsys.readouterr().out.startswith("=== [0] ")


@pytest.fixture(scope="module")
def other_vocab_lenvm(tmp_path_factory):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("other-vocab-lenvm")
    LenVM(tiny_backbone("llama", vocab_size=128, seed=2), gamma=0.9).save_pretrained(path)
    vocab = {f"w{i}": i for i in range(128)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")),
                            eos_token="w1").save_pretrained(path)
    return path


@pytest.mark.parametrize("extra, message", [
    (["--constraint", "equal", "--target", "0"], "target must be a positive integer"),
    (["--constraint", "at_most"], "needs a target"),
    (["--beta", "-1", "--constraint", "equal", "--target", "5"], "applies to tilting only"),
    (["--target", "5"], "needs a constraint"),
])
def test_generate_bad_settings_exit_2(tiny_checkpoint, capsys, extra, message):
    assert main(["generate", "--policy", str(tiny_checkpoint), "--lenvm", str(tiny_checkpoint), "--prompt", "Hi",
                 *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lenvm-rl generate: error: ") and re.search(message, err), err


def test_generate_unknown_constraint_is_rejected_by_the_parser(tiny_checkpoint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--policy", str(tiny_checkpoint), "--prompt", "Hi", "--constraint", "exactly"])
    assert exit_info.value.code == 2 and "invalid choice: 'exactly'" in capsys.readouterr().err


def test_generate_vocabulary_mismatch_names_both_tokenizers(tiny_checkpoint, other_vocab_lenvm, capsys):
    assert main(["generate", "--policy", str(tiny_checkpoint), "--lenvm", str(other_vocab_lenvm), "--prompt", "Hi",
                 "--beta", "-1"]) == 2
    err = capsys.readouterr().err
    assert "policy tokenizer" in err and str(tiny_checkpoint) in err and str(other_vocab_lenvm) in err
    assert "(128 tokens) differ" in err


def test_generate_then_analyze_with_html(tiny_checkpoint, tmp_path, capsys):
    assert main(["generate", "--policy", str(tiny_checkpoint), "--lenvm", str(tiny_checkpoint), "--prompt", "Hi",
                 "--prompt", "Hello there", "--beta", "-2", "--max_new_tokens", "6", "--format", "jsonl"]) == 0
    completions = tmp_path / "completions.jsonl"
    completions.write_text(capsys.readouterr().out)
    html = tmp_path / "trace.html"
    assert main(["analyze", "--model", str(tiny_checkpoint), "--input", str(completions), "--html", str(html),
                 "--min_count", "1", "--index", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("completion 1: ") and "TD resid." in out and "length tokens over 2 completions" in out
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<span style=") >= 6 and "remaining=" in page


def test_analyze_prompt_and_completion_jsonl(tiny_checkpoint, capsys):
    assert main(["analyze", "--model", str(tiny_checkpoint), "--prompt", "Hi", "--completion", "Hello there!",
                 "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["t"] == 0 and lines[0]["token"] is None and "length_tokens" in lines[-1]
    steps = lines[:-1]
    assert all(s["td_residual"] is not None for s in steps[:-1]) and steps[-1]["td_residual"] is None
    assert -1 < steps[0]["value"] < 0 and steps[0]["remaining"] > 0


@pytest.mark.parametrize("args, message", [
    (["--input", "missing.jsonl"], "--input: .*missing.jsonl does not exist"),
    (["--prompt", "Hi"], "give --input, or --prompt with --completion"),
    (["--prompt", "Hi", "--completion", "x", "--index", "3"], "--index 3 is out of range for 1 completions"),
])
def test_analyze_bad_input_exits_2(tiny_checkpoint, capsys, args, message):
    assert main(["analyze", "--model", str(tiny_checkpoint), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lenvm-rl analyze: error: ") and re.search(message, err), err
