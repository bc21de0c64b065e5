"""Rollout records for the analysis tests and the bench_pretrain CLI tests: a few prompts of random tokens with
hand-picked completion lengths (a negative length is a completion cut at ``max_new_tokens``), and a tiny LenVM."""

from __future__ import annotations

import json
import random

from conftest import tiny_backbone

from lenvm_rl import LenVM

GAMMA = 0.9
EOS = 2


def make_records(prompts, lengths, seed=0):
    """One record per (prompt, length); a negative length is a completion cut at |length| tokens."""
    rng = random.Random(seed)
    records = []
    for prompt_index, (prompt_ids, sample_lengths) in enumerate(zip(prompts, lengths)):
        for sample_index, length in enumerate(sample_lengths):
            cut = length < 0
            completion = [rng.randrange(3, 128) for _ in range(abs(length))]
            if not cut:
                completion[-1] = EOS
            records.append({"prompt_index": prompt_index, "sample_index": sample_index,
                            "prompt": [{"role": "user", "content": str(prompt_index)}],
                            "prompt_ids": list(prompt_ids), "completion_ids": completion,
                            "completion_length": abs(length), "finish_reason": "length" if cut else "eos",
                            "sampler": {"max_new_tokens": 12}})
    return records


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def tiny_lenvm() -> LenVM:
    """A LenVM on a tiny random Llama (vocabulary 128), gamma ``GAMMA``, in eval mode."""
    return LenVM(tiny_backbone("llama", vocab_size=128, seed=1), gamma=GAMMA).eval()


PROMPTS = [[5, 17, 99], [42, 7], [1, 64, 3, 120, 9]]
TRAIN = make_records(PROMPTS, [[4, 7, -12], [2, 9], [5, 3, 11]], seed=0)
EVAL = make_records(PROMPTS, [[6, 3], [-12, 8, 1], [4, 10]], seed=1)

CURVE_PROMPTS = [[5, 17, 99], [42, 7], [1, 64, 3, 120, 9], [8, 8, 8, 8], [3, 4], [77, 66, 55, 44, 33, 22]]


def shard(prompt_indices, lengths, seed):
    """Records of ``prompt_indices`` (their ``CURVE_PROMPTS`` entry), as ``make_records`` but with the real
    indices."""
    records = make_records([CURVE_PROMPTS[i] for i in prompt_indices], lengths, seed=seed)
    for record in records:
        record["prompt_index"] = prompt_indices[record["prompt_index"]]
    return records


# like the GSM8K files: prompts 0-1 x 4, prompts 2-3 x 2, prompts 4-5 x 1, each in its own file
SHARDS = [shard([0, 1], [[4, 7, -12, 3], [2, 9, 5, 6]], 0), shard([2, 3], [[5, 3], [11, -12]], 1),
          shard([4, 5], [[6], [2]], 2)]
CURVE_EVAL = shard([0, 2, 4], [[6, 3], [-12, 8, 1], [4, 10]], 3)
