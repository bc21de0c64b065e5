"""``lenvm-rl serve``: a LenVM behind HTTP with the reference serving protocol."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from lenvm_rl.commands.base import CLIError, ModelArguments, command, load_predictor
from lenvm_rl.modeling import EMBEDDED_MODELS

NAME = "serve"
HELP = "HTTP length-prediction server (/encode, /tree_value, /predict, /health)"
DESCRIPTION = ("Serve a LenVM over HTTP with the reference serving protocol (/encode, /tree_value, /token_value, "
               "/candidate_value, /flush_cache, /v1/models) plus /predict and /health, batching concurrent requests, "
               "on our engine (--engine hf) or vLLM's (--engine vllm, with a prefix cache for /tree_value). Needs pip "
               "install 'lenvm-rl[serve]' (and 'lenvm-rl[vllm]'). SIGTERM finishes in-flight requests, then exits.")

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class VLLMEngineArguments:
    """The vLLM engine of a LenVM (``lenvm-rl serve --engine vllm``, ``lenvm-rl evaluate --backend vllm``)."""

    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={
        "help": "vllm: fraction of GPU memory vLLM may use (default: 0.9; on CPU set VLLM_CPU_KVCACHE_SPACE, in GiB)"})
    vllm_tensor_parallel_size: int = field(default=1, metadata={
        "help": "vllm: GPUs the LenVM is split across (default: 1)"})
    vllm_max_model_length: int | None = field(default=None, metadata={
        "help": "vllm: longest sequence; smaller saves KV-cache memory (default: the model's)"})
    vllm_enforce_eager: bool = field(default=False, metadata={
        "help": "vllm: run without torch.compile and CUDA graphs (faster start-up; needed on this project's CPUs)"})
    vllm_block_size: int | None = field(default=None, metadata={
        "help": "vllm: tokens per KV-cache block, the grain of its prefix cache (default: vLLM's, 128 on CPU)"})


def vllm_engine_options(args, **extra) -> dict:
    """The keyword arguments of :func:`lenvm_rl.vllm.scoring.lenvm_engine_args` from a command's arguments;
    ``--dtype`` unset is vLLM's ``auto``."""
    return dict(dtype=args.dtype, max_model_len=args.vllm_max_model_length, enforce_eager=args.vllm_enforce_eager,
                gpu_memory_utilization=args.vllm_gpu_memory_utilization,
                tensor_parallel_size=args.vllm_tensor_parallel_size, block_size=args.vllm_block_size,
                trust_remote_code=args.trust_remote_code, **extra)


@dataclass(kw_only=True)
class ServeArguments(VLLMEngineArguments, ModelArguments):
    engine: Literal["hf", "vllm"] = field(default="hf", metadata={
        "help": "hf: our batcher on a transformers forward (--device); vllm: vLLM's async engine (pip install "
                "'lenvm-rl[vllm]'; its own device, --vllm_* options, --batch_size and --max_batch_tokens per step, "
                "a prefix cache for /tree_value) (default: hf)"})
    batch_size: int = field(default=64, metadata={"help": "sequences per forward pass (default: 64)"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to bind (default: 127.0.0.1)"})
    port: int = field(default=30010, metadata={"help": "port (default: 30010)"})
    tokenizer: str | None = field(default=None, metadata={
        "metavar": "PATH",
        "help": "tokenizer directory or Hub id for /predict (default: the one saved with --model; without any, every "
                "endpoint but /predict serves, since they take token ids)"})
    max_batch_tokens: int = field(default=16384, metadata={
        "help": "padded tokens per forward pass; a request holding more gets HTTP 413 (default: 16384)"})
    max_padding: float = field(default=0.25, metadata={
        "help": "largest fraction of a batch that may be padding; shorter rows wait for the next batch "
                "(default: 0.25)"})


ARGUMENTS = ServeArguments


def run(args: ServeArguments) -> None:
    from lenvm_rl.serving import require_serving_dependencies

    try:
        require_serving_dependencies()
    except ImportError as err:
        raise CLIError(str(err)) from None
    if args.max_batch_tokens < 1:
        raise CLIError(f"--max_batch_tokens must be >= 1, got {args.max_batch_tokens}")
    if not 0.0 <= args.max_padding < 1.0:
        raise CLIError(f"--max_padding must be in [0, 1), got {args.max_padding}")
    model = load_served_model(args)
    from lenvm_rl.serving import serve

    engine = None
    if args.engine == "vllm":
        from lenvm_rl.predict import LengthPredictor
        from lenvm_rl.serving.vllm_engine import VLLMEngine

        engine = VLLMEngine((model.model if isinstance(model, LengthPredictor) else model).engine_args)
    serve(model, engine=engine, host=args.host, port=args.port, max_batch_tokens=args.max_batch_tokens,
          max_batch_size=args.batch_size, max_padding=args.max_padding)


make_parser, main = command(NAME, ARGUMENTS, DESCRIPTION, run)


def load_served_model(args: ServeArguments):
    """The LenVM to serve, as a ``LengthPredictor`` when it has a tokenizer (``--tokenizer``, else the one
    saved in the checkpoint), else as a bare ``LenVM``: the reference protocol sends token ids, so only
    ``/predict`` needs a tokenizer."""
    from transformers import AutoTokenizer

    from lenvm_rl.modeling import LenVM
    from lenvm_rl.modeling.vocabulary import check_vocabulary, saved_tokenizer
    from lenvm_rl.predict import LengthPredictor

    if args.model in EMBEDDED_MODELS and args.engine == "hf":  # a bare backbone (untrained head) and its tokenizer
        predictor = load_predictor(args)
        model, tokenizer, untrained = predictor.model, predictor.tokenizer, True
    else:
        try:
            if args.engine == "vllm":
                from lenvm_rl.vllm.scoring import VLLMLenVM

                model = VLLMLenVM.from_pretrained(args.model, gamma=args.gamma, **vllm_engine_options(
                    args, max_num_seqs=args.batch_size, max_num_batched_tokens=args.max_batch_tokens))
            else:
                model = LenVM.from_pretrained(args.model, gamma=args.gamma, dtype=args.dtype, device=args.device,
                                              trust_remote_code=args.trust_remote_code)
        except (FileNotFoundError, ValueError, ImportError) as err:
            raise CLIError(f"--model {args.model}: {err}") from None
        untrained = False
        try:
            tokenizer = None if args.tokenizer else saved_tokenizer(model.config.name_or_path)
        except (OSError, ValueError) as err:
            raise CLIError(f"--model {args.model}: its tokenizer does not load ({err}); "
                           "pass --tokenizer PATH") from None
    if args.tokenizer:
        try:
            tokenizer = AutoTokenizer.from_pretrained(args.tokenizer, trust_remote_code=args.trust_remote_code)
            check_vocabulary(tokenizer, model, names=(f"--tokenizer {args.tokenizer}", f"the LenVM {args.model}"))
        except (OSError, ValueError) as err:
            raise CLIError(f"--tokenizer {args.tokenizer}: {err}") from None
    if tokenizer is None:
        logger.warning("%s holds no tokenizer: serving /encode, /tree_value, /token_value, /candidate_value and "
                       "/flush_cache (token ids); /predict answers HTTP 400 until the server is started with "
                       "--tokenizer PATH", args.model)
        return model
    return LengthPredictor(model, tokenizer, batch_size=args.batch_size, untrained=untrained,
                           prompt_format=getattr(args, "prompt_format", None))
