"""``lenvm-rl rollout``: sample n completions per prompt from a policy, for value pretraining (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.commands.base import DEVICE_HELP, CLIError, DType, command

NAME = "rollout"
HELP = "sample n completions per prompt from a policy (resumable)"
DESCRIPTION = "Sample completions for value pretraining; re-running resumes with no duplicates."


@dataclass(kw_only=True)
class RolloutArguments:
    model: str = field(metadata={"help": "policy: model directory, Hub id or short name"})
    prompts: str = field(metadata={"help": "JSONL file or Hub dataset id (repo or repo:config)"})
    prompt_column: str | None = field(default=None, metadata={
        "help": "column with the prompt text or chat messages (default: messages, else prompt)"})
    prompt_format: Literal["raw", "chat"] = field(default="raw", metadata={
        "help": "how string prompts are sent: raw (the text as is; TRL's convention, what GRPO does with a string "
                "dataset) or chat (each as one user message under the chat template, as a conversational dataset); "
                "chat messages always use the template (default: raw)"})
    split: str = field(default="train", metadata={"help": "split of a Hub dataset (default: train)"})
    offset: int = field(default=0, metadata={
        "help": "first prompt row to use (default: 0); records keep source rows as prompt_index, so shards sampled "
                "with different offsets merge (pass several files to pretrain/evaluate)"})
    limit: int | None = field(default=None, metadata={"help": "number of prompt rows to use (default: all)"})
    output: str = field(metadata={"help": "JSONL file the records are appended to"})
    num_completions: int = field(default=8, metadata={"aliases": ["-n"], "help": "completions per prompt (default: 8)"})
    temperature: float = field(default=1.0, metadata={
        "help": "sampling temperature (default: 1.0); use the one RL or decoding will use"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus threshold (default: 1.0)"})
    max_new_tokens: int = field(default=512, metadata={
        "help": "length limit; longer completions are recorded as cut (censored) (default: 512)"})
    batch_size: int = field(default=16, metadata={
        "help": "sequences per generate call; records are written after each (default: 16; with vllm, use hundreds)"})
    seed: int = field(default=0, metadata={"help": "base seed (default: 0)"})
    backend: Literal["auto", "hf", "vllm"] = field(default="auto", metadata={
        "help": "generation backend; auto uses vLLM when installed (default: auto)"})
    dtype: DType | None = field(default=None, metadata={
        "help": "policy dtype (default: the checkpoint's for hf; vLLM's auto choice for vllm)"})
    device: str = field(default="auto", metadata={"help": "torch device for the hf backend: " + DEVICE_HELP})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow custom modelling code (off by default)"})
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={
        "help": "vllm backend: fraction of GPU memory vLLM may use (default: 0.9)"})
    vllm_tensor_parallel_size: int = field(default=1, metadata={
        "help": "vllm backend: GPUs the policy is split across (default: 1)"})
    vllm_max_model_length: int | None = field(default=None, metadata={
        "help": "vllm backend: longest prompt plus completion; smaller saves KV-cache memory "
                "(default: the model's context length)"})
    vllm_enforce_eager: bool = field(default=False, metadata={
        "help": "vllm backend: run without torch.compile and CUDA graphs (faster start-up, slower decoding)"})


ARGUMENTS = RolloutArguments


def run(args: RolloutArguments) -> None:
    from transformers import AutoTokenizer

    from lenvm_rl.data import load_prompts
    from lenvm_rl.data.prompts import apply_prompt_format
    from lenvm_rl.data.rollouts import RolloutConfig, resolve_backend, sample_rollouts
    from lenvm_rl.modeling import load_backbone, resolve_model_path

    try:
        config = RolloutConfig(
            num_completions=args.num_completions, temperature=args.temperature, top_p=args.top_p,
            max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, seed=args.seed, backend=args.backend,
        )
        prompts = [apply_prompt_format(p, args.prompt_format) for p in load_prompts(
            args.prompts, prompt_column=args.prompt_column, split=args.split, limit=args.limit, offset=args.offset)]
    except (FileNotFoundError, ValueError) as err:
        raise CLIError(str(err)) from None
    path = resolve_model_path(args.model)
    if resolve_backend(config.backend) == "vllm":
        model = _vllm_llm(path, args)
    else:
        try:
            model = load_backbone(args.model, dtype=args.dtype, trust_remote_code=args.trust_remote_code)
        except FileNotFoundError as err:
            raise CLIError(f"--model {args.model}: {err}") from None
        model = model.to(args.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=args.trust_remote_code)
    try:
        records = sample_rollouts(model, tokenizer, prompts, args.output, config, model_name=args.model,
                                   offset=args.offset)
    except ValueError as err:
        raise CLIError(str(err)) from None
    ended = sum(r["finish_reason"] == "eos" for r in records)
    mean = sum(r["completion_length"] for r in records) / len(records)
    print(f"{args.output}: {len(records)} completions, {ended} ended with EOS, "
          f"{len(records) - ended} cut at {config.max_new_tokens} tokens, mean length {mean:.1f}")


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)


def _vllm_llm(path: str, args: RolloutArguments):
    """A ``vllm.LLM`` with the ``--dtype``, ``--seed`` and ``--vllm_*`` options of ``lenvm-rl rollout``."""
    from lenvm_rl.data import vllm_engine

    try:
        return vllm_engine(
            path, dtype=args.dtype, seed=args.seed, trust_remote_code=args.trust_remote_code,
            gpu_memory_utilization=args.vllm_gpu_memory_utilization,
            tensor_parallel_size=args.vllm_tensor_parallel_size, max_model_len=args.vllm_max_model_length,
            enforce_eager=args.vllm_enforce_eager,
        )
    except ImportError as err:
        raise CLIError(str(err)) from None
