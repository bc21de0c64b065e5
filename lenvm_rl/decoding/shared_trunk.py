"""Shared-trunk guided decoding: when the LenVM is a value head on the policy's own trunk, its candidate step IS
the policy's forward.

Two-model guided decoding runs, per token, a policy decode step (the chosen token) and a LenVM candidate step
(the chosen token and ``K`` candidates under a 4D mask, :mod:`lenvm_rl.decoding.scoring`). When the LenVM is a
head on the policy's frozen trunk (``--lenvm auto``, ``LenVMConfig(freeze_backbone=True)``, the committed
SmolLM2 critic), one forward of the ``K`` candidates on the **policy's** cache gives each candidate's final
hidden state ``h(s_t + x)``: the value head on it is ``V(s_t + x)``, the policy's LM head on it the next-token
logits after ``x``. Once a token is picked, its keys and values move into place and the other candidates are
dropped (:func:`~lenvm_rl.decoding.scoring.keep_candidate`), so the next step needs no policy decode step:
one ``K``-token forward per token, where the two-model path runs ``1`` and ``1 + K``. Only the candidates in
some row's set run (the set is the top-k's most probable prefix that top-p and min-p keep: under a hard
constraint's default ``min_p = 0.1`` often a few), the others are left unscored (``-inf``: they never change the
output); with ``compile`` all ``K`` run, so the compiled step keeps one shape.

:class:`SharedTrunkDecoder` runs the loop (greedy or sampling, as ``generate`` does, with the same random
draws); :func:`shared_trunk_mismatch` says why a LenVM does not qualify. ``guided_generate(shared_trunk=...)``
picks this path by itself when the trunks are equal.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor
from transformers import GenerationConfig

from lenvm_rl.decoding.guidance import LenVMLogitsProcessor
from lenvm_rl.decoding.scoring import StaticTrunk, compile_options, extension_forward, keep_candidate
from lenvm_rl.modeling import PrepackedLinears
from lenvm_rl.modeling.lenvm import base_causal_lm

__all__ = ["SharedTrunkDecoder", "generation_config_extras", "shared_trunk_mismatch"]

_CONFIG_KEYS_IGNORED = frozenset({
    "architectures", "transformers_version", "use_cache", "dtype", "torch_dtype", "id2label", "label2id",
    "output_attentions", "output_hidden_states", "return_dict", "problem_type", "chunk_size_feed_forward",
    "is_encoder_decoder", "bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id",
    "decoder_start_token_id", "tie_word_embeddings", "tokenizer_class", "prefix", "task_specific_params",
    "finetuning_task", "torchscript", "pruned_heads",
})
"""``config.json`` keys that do not change the trunk's computation (names, special-token ids, output flags)."""
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config keys of models whose logits are not their LM head's plain product (the decoder applies the LM head)."""
_GENERATION_EXTRAS = ("bad_words_ids", "begin_suppress_tokens", "encoder_repetition_penalty",
                      "exponential_decay_length_penalty", "forced_bos_token_id", "forced_eos_token_id",
                      "guidance_scale", "min_length", "min_new_tokens", "no_repeat_ngram_size", "remove_invalid_values",
                      "renormalize_logits", "sequence_bias", "suppress_tokens", "watermarking_config", "typical_p",
                      "epsilon_cutoff", "eta_cutoff", "top_h")
"""``GenerationConfig`` fields that add a logits processor to ``generate``, which the shared-trunk loop does not run
(``guided_generate`` passes the repetition penalty, temperature, top-k, top-p and min-p itself)."""


def _architecture(config) -> dict:
    return {k: v for k, v in config.to_dict().items()
            if k not in _CONFIG_KEYS_IGNORED and not k.startswith(("_", "lenvm_"))}


def shared_trunk_mismatch(policy, lenvm) -> str | None:
    """Why ``lenvm`` is not a value head on ``policy``'s own trunk; ``None`` when it is.

    The trunks (each causal LM without its LM head; a PEFT model with its adapter layers) must be of one class
    with the same architecture settings (``config.json`` apart from names, special-token ids, output flags and
    the ``lenvm_*`` records) and equal parameters and buffers: same names, dtype and device, equal values (a
    head trained on the frozen policy loads its trunk bit for bit). The policy's logits must be its LM head's
    product (no soft-capping or scaling), and every attention layer global (no sliding window). Comparing
    the weights reads each tensor once (a few milliseconds per 100M parameters on a GPU).
    """
    mine, theirs = base_causal_lm(policy), base_causal_lm(lenvm.backbone)
    if type(mine.base_model) is not type(theirs.base_model):
        return (f"the policy's trunk is a {type(mine.base_model).__name__} and the LenVM's a "
                f"{type(theirs.base_model).__name__}")
    ours, other = _architecture(mine.config), _architecture(theirs.config)
    differ = sorted(k for k in ours.keys() | other.keys() if ours.get(k) != other.get(k))
    if differ:
        return "their configs differ in " + ", ".join(f"{k} ({ours.get(k)!r} vs {other.get(k)!r})" for k in differ[:4])
    for key in _LOGIT_TRANSFORMS:
        if getattr(mine.config, key, None) not in (None, 1, 1.0):
            return f"the policy's logits are not its LM head's product ({key}={getattr(mine.config, key)!r})"
    layer_types = getattr(mine.config, "layer_types", None) or ["full_attention"]
    if any(kind != "full_attention" for kind in layer_types) or getattr(mine.config, "use_sliding_window", False):
        return "the policy has sliding-window attention layers (their cache cannot keep one candidate)"
    tensors = [dict(mine.base_model.named_parameters()) | dict(mine.base_model.named_buffers()),
               dict(theirs.base_model.named_parameters()) | dict(theirs.base_model.named_buffers())]
    if tensors[0].keys() != tensors[1].keys():
        extra = sorted(tensors[0].keys() ^ tensors[1].keys())
        return f"their trunks hold different tensors (e.g. {extra[0]!r}: an adapter on one of them?)"
    for name, a in tensors[0].items():
        b = tensors[1][name]
        if a is b:
            continue
        if (a.shape, a.dtype, a.device) != (b.shape, b.dtype, b.device):
            return (f"{name} is {tuple(a.shape)} {a.dtype} on {a.device} in the policy and {tuple(b.shape)} {b.dtype} "
                    f"on {b.device} in the LenVM")
        if not torch.equal(a, b):
            return f"their weights differ ({name})"
    return None


def generation_config_extras(policy, do_sample: bool) -> list[str]:
    """The ``policy.generation_config`` settings that make ``generate`` run logits processors beyond the LenVM's.

    ``guided_generate`` passes the candidate set, temperature and (no) repetition penalty itself; any other
    processor (banned words, a minimum length, ...) runs in ``generate`` and not in :class:`SharedTrunkDecoder`.
    """
    config, default = policy.generation_config, GenerationConfig()
    fields = _GENERATION_EXTRAS if do_sample else _GENERATION_EXTRAS[:-4]  # the last four warp sampling only
    return [f"{name}={getattr(config, name)!r}" for name in fields
            if getattr(config, name, None) != getattr(default, name, None)]


class SharedTrunkDecoder:
    """Guided decoding with the policy's own forward as the LenVM's candidate step (see the module docstring).

    Args:
        policy: the causal LM that decodes.
        processor: a :class:`LenVMLogitsProcessor` with ``scoring="cached"`` whose LenVM is a value head on
            ``policy``'s trunk (:func:`shared_trunk_mismatch`, else ``ValueError`` with the reason). It does
            the mode math and records ``last_step`` and ``state_logits`` as under ``generate``; with its
            ``cpu_prepack`` the policy's linear layers run on packed weights.

    :meth:`generate` emits the tokens of ``policy.generate(..., logits_processor=[processor])`` (greedy, or
    sampled with the same draws after the same seed), up to kernel round-off in the values and logits,
    which can flip a near tie. It runs the processor only: none of ``policy.generation_config``'s own
    processors (:func:`generation_config_extras`).
    """

    def __init__(self, policy, processor: LenVMLogitsProcessor):
        if processor.scoring != "cached":
            raise ValueError("the shared trunk scores on the policy's cache: the processor must have "
                             f"scoring='cached', not {processor.scoring!r}")
        why = shared_trunk_mismatch(policy, processor.lenvm)
        if why:
            raise ValueError(f"the LenVM is not a value head on the policy's own trunk: {why}")
        self.policy = policy.eval()
        self.processor = processor
        self._lm_head = base_causal_lm(policy).get_output_embeddings()
        self._prepacked = PrepackedLinears(policy, rows=processor.config.top_k) if processor.cpu_prepack else None
        device = next(policy.parameters()).device
        self._static = StaticTrunk(policy, compile_options(processor.compile, device)) if processor.compile else None

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, *, max_new_tokens: int,
                 eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
                 do_sample: bool = False) -> Tensor:
        """Prompts (B, P), left-padded, and their completions: (B, P + T) token ids as ``generate`` returns them.

        A row ends at an ``eos_token_id`` and is padded with ``pad_token_id`` afterwards; decoding stops when
        every row has ended or after ``max_new_tokens``. Sampling draws ``torch.multinomial`` from the guided
        distribution, one draw per row and step, as ``generate`` does.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        eos = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        if eos and pad_token_id is None:
            raise ValueError("eos_token_id needs a pad_token_id for the rows that have ended")
        unscored = set(self.processor.eos_token_ids.tolist()) - set(eos)
        if unscored:  # the processor's end candidate is never scored: it must end the row
            raise ValueError(f"eos_token_id={eos_token_id!r} must include the processor's end tokens "
                             f"{sorted(unscored)}")
        with self._prepacked or nullcontext():
            return self._generate(input_ids, attention_mask, max_new_tokens, eos, pad_token_id, do_sample)

    def _generate(self, input_ids, attention_mask, max_new_tokens, eos, pad_token_id, do_sample) -> Tensor:
        device = next(self.policy.parameters()).device
        ids = input_ids.to(device)
        key_mask = (torch.ones_like(ids) if attention_mask is None else attention_mask.to(device)).long()
        eos = torch.tensor(eos, dtype=torch.long, device=device)
        processor, v_head = self.processor, self.processor.lenvm.v_head
        rows = torch.arange(ids.shape[0], device=device)
        processor.begin(key_mask, max_new_tokens)
        cache = None
        if self._static is not None:
            cache = self._static.new_cache(ids.shape[0], ids.shape[1] + max_new_tokens + processor.config.top_k)

        def static(step: bool) -> dict:  # a static cache's width and the compiled trunk for a step
            return self._static.forward_kwargs(cache, step) if self._static is not None else {}

        hidden, cache = extension_forward(self.policy, ids, ids[:, :0], key_mask, cache=cache, use_cache=True,
                                          **static(False))
        chosen = hidden[:, -1]
        step: dict[str, Tensor] = {}

        def score(_, candidates: Tensor, in_set: Tensor) -> Tensor:
            """The policy's candidate step; the candidates stay in the cache. Eagerly, only the columns up to the
            last one in any row's set run (the set is a prefix: top-p and min-p keep the most probable)."""
            k = candidates.shape[1]
            if self._static is None:
                k = int((in_set * torch.arange(1, k + 1, device=in_set.device)).amax())
            step["candidates"] = candidates[:, :k]
            step["hidden"], _ = extension_forward(self.policy, ids[:, :0], step["candidates"], key_mask, cache=cache,
                                                  keep_candidates=True, **static(True))
            logits = torch.full(candidates.shape, -torch.inf, device=candidates.device)
            logits[:, :k] = v_head(step["hidden"]).float()
            return logits

        unfinished = torch.ones(ids.shape[0], dtype=torch.bool, device=device)
        for t in range(max_new_tokens):
            processor.state_logits.append(v_head(chosen).float().cpu())  # V(s_t), as the LenVM's cache gives it
            logits = self._lm_head(chosen).float()
            scores = processor.guide(ids, logits, score)
            if do_sample:
                next_tokens = torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1).squeeze(1)
            else:
                next_tokens = torch.argmax(scores, dim=-1)
            if eos.numel():
                next_tokens = torch.where(unfinished, next_tokens, pad_token_id)
                unfinished &= ~torch.isin(next_tokens, eos)
            ids = torch.cat([ids, next_tokens[:, None]], dim=1)
            if t + 1 == max_new_tokens or not unfinished.any():
                break
            # the chosen candidate's column; a row that has ended (padding, or an end token added to the set
            # unscored) keeps column 0: its states no longer matter
            columns = (step["candidates"] == next_tokens[:, None]).int().argmax(dim=-1)
            keep_candidate(cache, key_mask.shape[1], columns, step["candidates"].shape[1])
            key_mask = torch.cat([key_mask, torch.ones_like(key_mask[:, :1])], dim=1)
            chosen = step["hidden"][rows, columns]
        return ids
