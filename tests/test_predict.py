import math

import pytest
import torch

from lenvm_rl.predict import LengthPredictor

PROMPTS = [
    "What is 2 + 2?",
    "Janet has 16 eggs a day. She eats 3 for breakfast and bakes muffins with 4. How many does she sell?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime number."}],
]


@pytest.fixture(scope="module")
def predictor(tiny_checkpoint):
    return LengthPredictor.from_pretrained(tiny_checkpoint, batch_size=2)


def test_prediction_is_the_inverse_of_the_value_at_the_last_prompt_token(predictor):
    predictions = predictor.predict(PROMPTS)
    assert len(predictions) == 3 and not predictor.untrained
    for prompt, pred in zip(PROMPTS, predictions):
        ids = predictor.encode_prompt(prompt)
        with torch.no_grad():
            v_s0 = predictor.model(torch.tensor([ids])).values[0, -1].item()
        assert pred.value == pytest.approx(v_s0, abs=1e-6)
        assert pred.length == pytest.approx(math.log1p(v_s0) / math.log(0.99), rel=1e-4)


def test_predictions_come_back_in_input_order_whatever_the_batching(tiny_checkpoint, predictor):
    one_by_one = LengthPredictor.from_pretrained(tiny_checkpoint, batch_size=1)
    reversed_order = predictor.predict(PROMPTS[::-1])[::-1]
    for a, b, c in zip(predictor.predict(PROMPTS), one_by_one.predict(PROMPTS), reversed_order):
        assert a.length == pytest.approx(b.length, rel=1e-4) == pytest.approx(c.length, rel=1e-4)


def test_a_checkpoint_without_a_recorded_format_takes_a_string_as_a_user_message(predictor):
    # tiny_checkpoint records no prompt format (model.prompt_format "unknown"): strings are formatted as every
    # LenVM was trained before formats were recorded; prompt_format="raw" / "chat" chooses explicitly.
    text = "Name a prime number."
    assert predictor.model.prompt_format == "unknown" and predictor.prompt_format == "chat"
    ids = predictor.encode_prompt(text)
    assert ids == predictor.encode_prompt([{"role": "user", "content": text}])
    rendered = predictor.tokenizer.decode(ids)
    assert rendered.rstrip().endswith("<|im_start|>assistant"), rendered  # generation prompt included
    raw = LengthPredictor(predictor.model, predictor.tokenizer, prompt_format="raw")
    assert raw.encode_prompt(text) == predictor.tokenizer(text)["input_ids"]


def test_trace_starts_at_the_prompt_boundary(predictor):
    eos = predictor.tokenizer.eos_token
    trace = predictor.trace(PROMPTS[0], "2 + 2 = 4." + eos)
    n = len(trace.token_ids)
    assert trace.values.shape == trace.lengths.shape == (n + 1,)
    assert trace.token_ids[-1] == predictor.tokenizer.eos_token_id
    assert "".join(trace.tokens).startswith("2 + 2")
    assert trace.values[0].item() == pytest.approx(predictor.predict([PROMPTS[0]])[0].value, abs=1e-6)
    ids = trace.token_ids
    assert predictor.trace(PROMPTS[0], ids).values.tolist() == trace.values.tolist()


def test_bad_prompts_are_rejected(predictor):
    with pytest.raises(TypeError, match="prompts must be a list"):
        predictor.predict("just a string")
    with pytest.raises(TypeError, match="a prompt must be a string or a list of chat messages"):
        predictor.predict([{"content": "no role"}])
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        LengthPredictor(predictor.model, predictor.tokenizer, batch_size=0)


def test_embedded_short_name_gets_a_labelled_untrained_head(caplog):
    # End to end on the real SmolLM2-135M-Instruct backbone.
    with caplog.at_level("WARNING"):
        predictor = LengthPredictor.from_pretrained("smollm2-135m", gamma=0.99)
    assert predictor.untrained and "UNTRAINED" in caplog.text
    assert predictor.tokenizer.eos_token_id == 2 == predictor.tokenizer.pad_token_id
    prompts = ["What is 15 + 27?", "Write a haiku about autumn leaves falling in a quiet park at dusk."]
    batched = predictor.predict(prompts)
    for prompt, pred in zip(prompts, batched):
        alone = predictor.predict([prompt])[0]
        assert -1 < pred.value < 0 and pred.length > 0
        assert pred.length == pytest.approx(alone.length, rel=1e-4)
    again = LengthPredictor.from_pretrained("smollm2-135m", gamma=0.99)  # same seeded head
    assert again.predict(prompts[:1])[0].value == pytest.approx(batched[0].value, abs=1e-6)
