"""Batched, left-padded ``generate`` with or without LenVM guidance, returning completions with their lengths."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import LogitsProcessorList

from lenvm_rl.data.prompts import (
    PromptFormat,
    apply_prompt_format,
    encode_prompt,
    prompt_mismatch,
    resolve_prompt_format,
)
from lenvm_rl.data.rollouts import _eos_ids, finish_reasons, pad_token_ids
from lenvm_rl.decoding.guidance import GuidanceConfig, LenVMLogitsProcessor
from lenvm_rl.decoding.scoring import static_generate_kwargs
from lenvm_rl.decoding.shared_trunk import SharedTrunkDecoder, generation_config_extras
from lenvm_rl.modeling import LenVM

__all__ = ["GuidedCompletion", "guided_generate"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GuidedCompletion:
    """One completion: ``length`` counts its tokens, EOS included when ``finish_reason == "eos"``."""

    prompt: object
    text: str
    token_ids: list[int]
    length: int
    finish_reason: Literal["eos", "length"]


def left_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deprecated: ``pad_token_ids(sequences, pad_id, padding_side="left")`` (:mod:`lenvm_rl.data.rollouts`)."""
    warnings.warn("lenvm_rl.decoding.generate.left_pad is deprecated and will be removed in the next release: use "
                  "lenvm_rl.data.rollouts.pad_token_ids(sequences, pad_id, padding_side='left')",
                  DeprecationWarning, stacklevel=2)
    return pad_token_ids(sequences, pad_id, padding_side="left")


@torch.no_grad()
def guided_generate(
    policy,
    tokenizer,
    prompts: list,
    *,
    lenvm: LenVM | None = None,
    guidance: GuidanceConfig | None = None,
    lenvm_tokenizer=None,
    max_new_tokens: int = 256,
    do_sample: bool = False,
    batch_size: int = 8,
    seed: int | None = None,
    scoring: Literal["cached", "naive"] = "cached",
    prompt_format: PromptFormat | None = None,
    chat_template_kwargs: dict | None = None,
    tools: list | None = None,
    shared_trunk: bool | None = None,
    compile: bool | dict = False,
) -> list[GuidedCompletion]:
    """Generate a completion per prompt with ``policy.generate``, guided by ``lenvm`` when given.

    Prompts (text or chat messages) are encoded like the LenVM's states (:func:`lenvm_rl.data.encode_prompt`,
    with ``chat_template_kwargs`` and ``tools``), batched ``batch_size`` at a time with left padding. A string
    is formatted as ``prompt_format`` says (``"raw"`` or ``"chat"``; default: as the LenVM's training prompts,
    see :func:`lenvm_rl.data.prompts.resolve_prompt_format`); a prompt formatted otherwise logs a warning.
    Without ``lenvm`` the policy decodes alone with the same temperature and candidate set
    (``top_k``, ``top_p``, ``min_p`` of ``guidance``): the unguided baseline.

    Under ``constraint="equal"`` or ``"at_most"`` one candidate is left per step, so decoding is
    deterministic: ``do_sample`` and ``seed`` change nothing there and ``temperature`` and ``top_p`` only
    reshape the candidate set (the reference is one-hot too); a ``UserWarning`` says so when they are given.

    Args:
        guidance: the mode and candidate set; default :class:`GuidanceConfig()` (tilt with beta 0).
        do_sample: sample from the guided distribution, else greedy.
        seed: ``torch.manual_seed`` before each batch, for reproducible sampling.
        scoring: ``"cached"`` or ``"naive"``, see :class:`LenVMLogitsProcessor`.
        shared_trunk: decode with the policy's own forward as the LenVM's candidate step
            (:mod:`lenvm_rl.decoding.shared_trunk`: one ``K``-token forward per token instead of a policy step
            and a LenVM step). ``None`` (default): when the LenVM is a value head on the policy's trunk
            (:func:`~lenvm_rl.decoding.shared_trunk.shared_trunk_mismatch`), ``scoring="cached"`` and the
            policy's ``generation_config`` adds no logits processor of its own; ``True``: required (refused
            with the reason otherwise); ``False``: the two-model path (``policy.generate`` with the processor).
            Both paths emit the same tokens.
        compile: static KV caches and ``torch.compile``'d decode steps (on CUDA with CUDA graphs) for the policy
            (``generate``'s ``cache_implementation="static"``), the LenVM's candidate step and the shared-trunk
            step (:class:`~lenvm_rl.decoding.scoring.StaticTrunk`); ``True`` or a dict of ``torch.compile``
            arguments. The first batch of each size compiles (seconds to minutes). The same tokens as eager
            decoding, up to kernel round-off. Off by default: on the CPU compiling takes minutes per model and
            batch shape and gains little per token (docs/decoding.md).
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    guidance = guidance or GuidanceConfig()
    if lenvm is None and guidance.constraint is not None:
        raise ValueError(f"constraint={guidance.constraint!r} needs a lenvm")
    guidance.warn_if_sampling_ignored(do_sample)
    eos_ids = _eos_ids(policy.generation_config.eos_token_id, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    device = next(policy.parameters()).device
    processor = decoder = None
    if lenvm is not None:
        processor = LenVMLogitsProcessor(
            lenvm, guidance, eos_token_id=eos_ids, pad_token_id=pad_id, scoring=scoring,
            policy_tokenizer=tokenizer, lenvm_tokenizer=lenvm_tokenizer, compile=compile,
        )
        decoder = _shared_trunk_decoder(shared_trunk, policy, processor, do_sample)
    elif shared_trunk:
        raise ValueError("shared_trunk=True needs a lenvm")
    sampling = _sampling_kwargs(guidance, guided=lenvm is not None, do_sample=do_sample, compile=compile,
                                device=device)
    string_format = resolve_prompt_format(prompt_format, lenvm, tokenizer)
    formatted = [apply_prompt_format(p, string_format) for p in prompts]
    why = lenvm is not None and formatted and prompt_mismatch(lenvm, formatted[0], tokenizer,
                                                              chat_template_kwargs=chat_template_kwargs)
    if why:
        logger.warning(why)
    results: list[GuidedCompletion] = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        input_ids, attention_mask = pad_token_ids([
            encode_prompt(tokenizer, p, tools=tools, chat_template_kwargs=chat_template_kwargs)
            for p in formatted[start : start + batch_size]], pad_id, padding_side="left")
        if processor is not None:
            processor.begin(attention_mask, max_new_tokens)
        if seed is not None:
            torch.manual_seed(seed + start)
        if decoder is not None:
            out = decoder.generate(input_ids, attention_mask, max_new_tokens=max_new_tokens, eos_token_id=eos_ids,
                                   pad_token_id=pad_id, do_sample=do_sample)
        else:
            out = policy.generate(
                input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), do_sample=do_sample,
                max_new_tokens=max_new_tokens, eos_token_id=eos_ids, pad_token_id=pad_id, repetition_penalty=None,
                logits_processor=LogitsProcessorList([processor] if processor is not None else []), **sampling,
            )
        if processor is not None:
            processor.reset()  # frees the LenVM's cache
        results += _completions(batch, out[:, input_ids.shape[1] :].cpu(), tokenizer, eos_ids)
    return results


def _sampling_kwargs(guidance: GuidanceConfig, *, guided: bool, do_sample: bool, compile: bool | dict,
                     device) -> dict:
    """``generate``'s sampling arguments: the guidance's temperature and candidate set unguided (guided, the
    processor applies them), none when greedy, and the static-cache arguments when compiling."""
    sampling = {}
    if do_sample:
        sampling = (dict(temperature=1.0, top_k=0, top_p=1.0, min_p=None) if guided else
                    dict(temperature=guidance.temperature, top_k=guidance.top_k, top_p=guidance.top_p,
                         min_p=guidance.min_p or None))
    if compile:
        sampling |= static_generate_kwargs(compile, device)
    return sampling


def _completions(prompts: list, generated: torch.Tensor, tokenizer, eos_ids: list[int]) -> list[GuidedCompletion]:
    """One :class:`GuidedCompletion` per row of ``generated`` (B, T): the tokens up to the first EOS, included."""
    lengths, ended = finish_reasons(generated, eos_ids)
    completions = []
    for row, prompt in enumerate(prompts):
        ids = generated[row, : lengths[row]].tolist()
        completions.append(GuidedCompletion(
            prompt=prompt, text=tokenizer.decode(ids, skip_special_tokens=True), token_ids=ids,
            length=int(lengths[row]), finish_reason="eos" if ended[row] else "length",
        ))
    return completions


def _shared_trunk_decoder(shared_trunk: bool | None, policy, processor: LenVMLogitsProcessor,
                          do_sample: bool) -> SharedTrunkDecoder | None:
    """The shared-trunk decoder ``shared_trunk`` asks for (see :func:`guided_generate`), or ``None``."""
    if shared_trunk is False:
        return None
    if processor.scoring != "cached":
        why = f"scoring={processor.scoring!r} re-encodes with the LenVM (the reference); the shared trunk is cached"
    elif extras := generation_config_extras(policy, do_sample):
        why = f"the policy's generation_config adds logits processors the shared-trunk loop does not run: {extras}"
    else:
        try:
            return SharedTrunkDecoder(policy, processor)  # compares the trunks
        except ValueError as error:
            why = str(error)
    if shared_trunk:
        raise ValueError(f"shared_trunk=True: {why}; pass shared_trunk=None or False to decode with two models")
    logger.info("guided decoding with two models (no shared trunk): %s", why)
    return None
