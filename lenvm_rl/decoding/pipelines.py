"""The pipelines behind ``lenvm-rl generate`` and ``lenvm-rl analyze`` (the CLI only parses and dispatches)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TextIO

from lenvm_rl.decoding.analysis import length_tokens, trace_html, trace_td_residuals
from lenvm_rl.decoding.generate import guided_generate
from lenvm_rl.decoding.guidance import GuidanceConfig

__all__ = ["analyze_completions", "generate_completions", "read_completions"]

UNTRAINED_NOTE = "NOTE: untrained value head (fresh, seed 0) -- its guidance and numbers are not meaningful.\n"


def generate_completions(
    *, policy: str, lenvm: str | None, prompts: list, guidance: GuidanceConfig, out: TextIO, fmt: str = "text",
    max_new_tokens: int = 256, do_sample: bool = False, batch_size: int = 8, seed: int | None = None,
    gamma: float | None = None, dtype=None, device=None, trust_remote_code: bool = False, prompt_format=None,
) -> list:
    """Load the policy (and the LenVM), generate one completion per prompt, write text or JSONL to ``out``.

    ``lenvm`` is a LenVM checkpoint (or an embedded short name: untrained head); ``None`` decodes the
    policy alone with the same candidate set. ``prompt_format`` formats string prompts (see
    :func:`~lenvm_rl.decoding.guided_generate`). JSONL lines are rollout-style records (``prompt``,
    ``completion_ids``, ``completion_length``, ``finish_reason``) plus ``completion`` text and the
    guidance settings, so ``lenvm-rl analyze --input`` reads them back.
    """
    from transformers import AutoTokenizer

    from lenvm_rl.modeling import load_backbone, resolve_model_path
    from lenvm_rl.predict import LengthPredictor

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(policy), trust_remote_code=trust_remote_code)
    model = load_backbone(policy, dtype=dtype, trust_remote_code=trust_remote_code).to(device or "cpu").eval()
    predictor = None
    if lenvm is not None:
        predictor = LengthPredictor.from_pretrained(lenvm, gamma=gamma, dtype=dtype, device=device,
                                                    trust_remote_code=trust_remote_code)
    completions = guided_generate(
        model, tokenizer, prompts, lenvm=predictor.model if predictor else None, guidance=guidance,
        lenvm_tokenizer=predictor.tokenizer if predictor else None, max_new_tokens=max_new_tokens,
        do_sample=do_sample, batch_size=batch_size, seed=seed, prompt_format=prompt_format,
    )
    settings = {"constraint": guidance.constraint, "target": guidance.target, "beta": guidance.beta,
                "top_k": guidance.top_k, "top_p": guidance.top_p, "min_p": guidance.min_p,
                "temperature": guidance.temperature, "guided": predictor is not None}
    if fmt == "jsonl":
        for i, c in enumerate(completions):
            out.write(json.dumps({"index": i, "prompt": c.prompt, "completion": c.text, "completion_ids": c.token_ids,
                                  "completion_length": c.length, "finish_reason": c.finish_reason, **settings}) + "\n")
        return completions
    if predictor is not None and predictor.untrained:
        out.write(UNTRAINED_NOTE)
    for i, c in enumerate(completions):
        target = f", target {guidance.target} ({guidance.constraint})" if guidance.constraint else ""
        out.write(f"=== [{i}] {c.length} tokens, {c.finish_reason}{target}\n{c.text}\n")
    return completions


def read_completions(path: str | Path) -> list[dict]:
    """Records with ``prompt`` and ``completion_ids`` (rollouts, or ``lenvm-rl generate --format jsonl``)."""
    from lenvm_rl.data.prompts import read_jsonl

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    records = []
    for lineno, record in read_jsonl(path):
        for key in ("prompt", "completion_ids"):
            if key not in record:
                raise ValueError(f"{path} line {lineno} has no {key!r} (expected rollout records or "
                                 "lenvm-rl generate --format jsonl output)")
        records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def analyze_completions(
    predictor, records: list[dict], *, out: TextIO, fmt: str = "table", top: int = 10, min_count: int = 3,
    html_path: str | Path | None = None, index: int = 0,
) -> None:
    """Per-token trace and TD residuals of ``records[index]``, the length tokens over all records, an HTML page.

    ``records`` hold ``prompt`` and ``completion_ids`` (and ``finish_reason``; ``"eos"`` when absent).
    """
    if not 0 <= index < len(records):
        raise ValueError(f"index {index} is out of range for {len(records)} completions")
    traces = [predictor.trace(r["prompt"], r["completion_ids"]) for r in records]
    ended = [r.get("finish_reason", "eos") == "eos" for r in records]
    gamma = predictor.gamma
    trace = traces[index]
    deltas = trace_td_residuals(trace, gamma, ended=ended[index]).tolist()
    tokens = length_tokens(traces, top=top, min_count=min_count)
    if html_path is not None:
        prompt = records[index]["prompt"]
        text = prompt if isinstance(prompt, str) else " | ".join(str(m.get("content", "")) for m in prompt)
        Path(html_path).write_text(trace_html(trace, gamma=gamma, prompt=text, ended=ended[index],
                                              title=f"LenVM trace of completion {index}"), encoding="utf-8")
    if fmt == "jsonl":
        for t in range(len(trace.tokens) + 1):
            out.write(json.dumps({
                "t": t, "token": trace.tokens[t - 1] if t else None, "token_id": trace.token_ids[t - 1] if t else None,
                "value": trace.values[t].item(), "remaining": trace.lengths[t].item(),
                "td_residual": deltas[t] if t < len(deltas) else None}) + "\n")
        out.write(json.dumps({"length_tokens": {k: [vars(x) for x in v] for k, v in tokens.items()},
                              "completions": len(records)}) + "\n")
        return
    if predictor.untrained:
        out.write(UNTRAINED_NOTE)
    out.write(f"completion {index}: {len(trace.tokens)} tokens, gamma {gamma}\n")
    out.write(f"{'t':>4}  {'token':<16}  {'value':>8}  {'remaining':>9}  {'TD resid.':>9}\n")
    for t in range(len(trace.tokens) + 1):
        token = repr(trace.tokens[t - 1]) if t else "<s0>"
        delta = f"{deltas[t]:>+9.4f}" if t < len(deltas) else f"{'':>9}"
        out.write(f"{t:>4}  {token:<16.16}  {trace.values[t].item():>8.4f}  {trace.lengths[t].item():>9.1f}  {delta}\n")
    out.write(f"\nlength tokens over {len(records)} completions (mean shift of the predicted end, tokens; "
              f"seen >= {min_count} times):\n")
    for kind in ("raise", "lower"):
        row = ", ".join(f"{x.token!r} {x.mean_shift:+.1f} (x{x.count})" for x in tokens[kind]) or "none"
        out.write(f"  {kind}: {row}\n")
    if html_path is not None:
        out.write(f"\nHTML: {html_path}\n")
