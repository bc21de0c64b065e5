"""Issue 23, item 5: the server and a VL LenVM. The reference fork's image request (``{"text": ..., "image_data":
"data:image/png;base64,..."}``, as its ``real_sample_tree_value_visualization_vl.py`` sends it) and image placeholder
ids are refused with a 422 naming the way out; text-only requests are served. An app under uvicorn in a thread."""

# ruff: noqa: F811 -- pytest fixtures imported from vl_fixtures are test arguments
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "serving"))
from test_server_tokenizer_and_faults import app_in_thread  # noqa: E402
from tiny_vl import image_message, synthetic_image  # noqa: E402
from vl_fixtures import processor, vl_lenvm  # noqa: E402, F401

from lenvm_rl import LengthPredictor  # noqa: E402
from lenvm_rl.data.images import encode_vision_prompt, image_data_url  # noqa: E402
from lenvm_rl.serving import create_app  # noqa: E402
from lenvm_rl.serving.client import ServerError  # noqa: E402


def test_image_requests_get_a_clear_422_and_text_is_served(vl_lenvm, processor):
    prompt = image_message("What colour?", synthetic_image(0))
    ids, _ = encode_vision_prompt(processor, prompt)
    text = processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    with app_in_thread(create_app(LengthPredictor(vl_lenvm, processor))) as server:
        refused = [
            ("/encode", {"text": text, "image_data": image_data_url(synthetic_image(0))}, "image_data is not supported"),
            ("/encode", {"input_ids": [ids]}, "holds image placeholder token ids"),
            ("/token_value", {"input_ids": ids}, "holds image placeholder token ids"),
            ("/tree_value", {"input_ids": [5, 6], "candidate_ids": [7], "image_data": ["x"]}, "image_data"),
            ("/tree_value", {"input_ids": ids, "candidate_ids": [7]}, "image placeholder"),
        ]
        for path, body, message in refused:
            with pytest.raises(ServerError) as err:
                server.request(path, body)
            reply = err.value.body["error"]["message"]
            assert err.value.status == 422 and message in reply and "lenvm-rl predict --image" in reply, (path, reply)
        with pytest.raises(ServerError) as err:  # /predict takes text messages only, as before
            server.request("/predict", {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
        assert err.value.status == 422
        text_ids = encode_vision_prompt(processor, [{"role": "user", "content": "No picture."}])[0]
        (z,) = server.encode([text_ids])
        torch.testing.assert_close(torch.tensor(z), vl_lenvm.score([text_ids])[0].logits, atol=1e-5, rtol=1e-5)
        (prediction,) = server.request("/predict", {"messages": [{"role": "user", "content": "No picture."}]}
                                       )["predictions"]
        assert prediction["prompt_tokens"] == len(text_ids)
