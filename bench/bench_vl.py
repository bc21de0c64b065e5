"""The extra cost of an image prompt against a text prompt of the same token count, on a vision-language LenVM.

    python bench/bench_vl.py --sizes 56 112 224 --batch-size 8 --repeats 5

The model is the tests' tiny random Qwen2.5-VL (``tests/vl/tiny_vl.py``: hidden size 32, 2 layers, a one-block
vision tower of width 16, 14-pixel patches merged 2 x 2), so the numbers say what the image path adds around a
model, not what a 3B one costs. For each image side ``s`` (an ``s x s`` image is ``(s / 14)^2`` patches and a
quarter as many image tokens), a batch of chat prompts "<image> Describe the picture." is scored four ways,
interleaved round by round:

- ``text forward``: the LenVM forward over the same ids with every image token replaced by a text token: a text
  prompt of exactly the same token count, the reference point.
- ``image forward``: the LenVM forward over the ids with the image inputs (vision encoder, 3-D rotary positions).
- ``vision encoder``: the vision tower alone on the batch's patches (part of ``image forward``).
- ``encode + forward``: from the messages' PIL images: chat template and image processor
  (:func:`lenvm_rl.data.images.encode_vision_prompt`), then ``image forward``: what ``LengthPredictor.predict``
  pays per image prompt.

Prints the device and library versions, then per size the tokens per prompt and each contender's median ms per
batch and its ratio to ``text forward``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

from lenvm_rl import LenVM
from lenvm_rl.benchmarking import add_device_arguments, environment_header, resolve_device_arguments, timed
from lenvm_rl.data.images import encode_vision_prompt
from lenvm_rl.data.rollouts import pad_token_ids
from lenvm_rl.modeling.vision import batch_vision_rows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "vl"))
from tiny_vl import image_message, synthetic_image, tiny_processor, tiny_vl_backbone  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[56, 112, 224], help="image sides in pixels")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    add_device_arguments(parser)
    args = resolve_device_arguments(parser.parse_args())

    print(environment_header(args.device, args.dtype), flush=True)
    torch.set_grad_enabled(False)
    processor = tiny_processor(max_pixels=max(args.sizes) ** 2)
    lenvm = LenVM(tiny_vl_backbone(seed=0), gamma=0.99).to(device=args.device, dtype=getattr(torch, args.dtype))
    lenvm.v_head.float()
    print(f"batch_size={args.batch_size} repeats={args.repeats} threads={torch.get_num_threads()}")
    print(f"{'side':>5} {'tokens':>7} {'img tok':>7}  " + "  ".join(f"{name:>24}" for name in (
        "text forward", "image forward", "vision encoder", "encode + forward")))
    for side in args.sizes:
        times, n_tokens, n_image = bench_size(side, lenvm, processor, args)
        base = statistics.median(times["text forward"])
        cells = [f"{1e3 * statistics.median(t):>9.2f} ms {statistics.median(t) / base:>8.2f}x" for t in times.values()]
        print(f"{side:>5} {n_tokens:>7} {n_image:>7}  " + "  ".join(f"{cell:>24}" for cell in cells), flush=True)


def bench_size(side: int, lenvm, processor, args) -> tuple[dict[str, list[float]], int, int]:
    """Each contender's seconds per batch of ``side x side`` image prompts, the tokens and image tokens per prompt."""
    dtype = getattr(torch, args.dtype)
    image_id = lenvm.config.image_token_id
    text_id = processor.tokenizer.convert_tokens_to_ids("a")
    messages = [image_message("Describe the picture.", synthetic_image(i, (side, side)))
                for i in range(args.batch_size)]
    encoded = [encode_vision_prompt(processor, m) for m in messages]
    input_ids, mask = (t.to(args.device) for t in pad_token_ids([ids for ids, _ in encoded], 0))
    images = batch_vision_rows([im for _, im in encoded], args.device)
    images["pixel_values"] = images["pixel_values"].to(dtype)
    text_ids = input_ids.masked_fill(input_ids == image_id, text_id)  # a text prompt of the same token count

    def encode_and_forward():
        rows = [encode_vision_prompt(processor, m) for m in messages]
        ids, attention = pad_token_ids([ids for ids, _ in rows], 0)
        pixels = batch_vision_rows([im for _, im in rows], args.device)
        pixels["pixel_values"] = pixels["pixel_values"].to(dtype)
        lenvm(ids.to(args.device), attention.to(args.device), **pixels)

    contenders = {
        "text forward": lambda: lenvm(text_ids, mask),
        "image forward": lambda: lenvm(input_ids, mask, **images),
        "vision encoder": lambda: lenvm.backbone.model.visual(images["pixel_values"],
                                                              grid_thw=images["image_grid_thw"]),
        "encode + forward": encode_and_forward,
    }
    times = {name: [] for name in contenders}
    for fn in contenders.values():  # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn, args.device))
    return times, int(mask[0].sum()), int((input_ids[0] == image_id).sum())

if __name__ == "__main__":
    main()
