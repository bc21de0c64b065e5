"""Issue 23, item 3: ``LengthPredictor.predict`` and ``trace`` on chat messages with images, and
``lenvm-rl predict --image PATH``."""

# ruff: noqa: F811 -- pytest fixtures imported from vl_fixtures are test arguments
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_vl import image_message, synthetic_image  # noqa: E402
from vl_fixtures import processor, prompts, vl_lenvm  # noqa: E402, F401

from lenvm_rl import LengthPredictor  # noqa: E402
from lenvm_rl.core import logits_to_length  # noqa: E402
from lenvm_rl.data.images import encode_vision_prompt  # noqa: E402

ATOL = 1e-5


def test_predict_and_trace_read_the_images(vl_lenvm, processor, prompts):
    predictor = LengthPredictor(vl_lenvm, processor, batch_size=2)  # batches mix image and text prompts
    predictions = predictor.predict(prompts)
    for prompt, prediction in zip(prompts, predictions):
        ids, images = encode_vision_prompt(processor, prompt)
        with torch.no_grad():
            out = vl_lenvm(torch.tensor([ids]), **(images or {}))
        assert prediction.value == pytest.approx(float(out.values[0, -1]), abs=ATOL)
        assert prediction.length == pytest.approx(float(logits_to_length(out.logits[0, -1], vl_lenvm.gamma)),
                                                  rel=1e-5)
        trace = predictor.trace(prompt, [30, 31, processor.tokenizer.eos_token_id])
        with torch.no_grad():
            full = vl_lenvm(torch.tensor([ids + trace.token_ids]), **(images or {})).values[0]
        torch.testing.assert_close(trace.values, full[len(ids) - 1:], atol=ATOL, rtol=ATOL)
        assert trace.values[0].item() == pytest.approx(prediction.value, abs=ATOL)
        assert trace.tokens[-1] == processor.tokenizer.eos_token
    other = predictor.predict([image_message("What colour is it?", synthetic_image(1))])[0]
    assert other.value != pytest.approx(predictions[0].value, abs=1e-7)  # same text, another image


def test_cli_predict_with_image(vl_lenvm, processor, tmp_path, capsys):
    from lenvm_rl.cli import main

    checkpoint, image = tmp_path / "lenvm", tmp_path / "picture.png"
    vl_lenvm.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    synthetic_image(2, (84, 56)).save(image)
    argv = ["predict", "--model", str(checkpoint), "--device", "cpu", "--image", str(image), "--prompt",
            "What is it?", "--prompt", "And the colour?", "--format", "jsonl"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    expected = LengthPredictor(vl_lenvm, processor).predict([image_message(t, str(image))
                                                             for t in ("What is it?", "And the colour?")])
    assert [r["prompt"] for r in rows] == [image_message(t, str(image)) for t in ("What is it?", "And the colour?")]
    for row, prediction in zip(rows, expected):
        assert row["value"] == pytest.approx(prediction.value, abs=ATOL)
    assert main(["predict", "--model", str(checkpoint), "--device", "cpu", "--image", str(tmp_path / "no.png"),
                 "--prompt", "x"]) == 2
    assert "--image takes image files" in capsys.readouterr().err
