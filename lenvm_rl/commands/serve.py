"""``lenvm-rl serve``: a LenVM behind HTTP with the reference serving protocol."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from lenvm_rl.commands.base import CLIError, ModelArguments, load_predictor, run_command
from lenvm_rl.commands.base import make_parser as _make_parser
from lenvm_rl.modeling import EMBEDDED_MODELS

NAME = "serve"
HELP = "HTTP length-prediction server (/encode, /tree_value, /predict, /health)"
DESCRIPTION = ("Serve a LenVM over HTTP with the reference serving protocol (/encode, /tree_value, /token_value, "
               "/candidate_value, /flush_cache, /v1/models) plus /predict and /health, batching concurrent requests. "
               "Needs pip install 'lenvm-rl[serve]'. SIGTERM finishes in-flight requests, then exits.")

logger = logging.getLogger(__name__)


@dataclass(kw_only=True)
class ServeArguments(ModelArguments):
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


def make_parser(prog: str = f"lenvm-rl {NAME}"):
    return _make_parser(ARGUMENTS, DESCRIPTION, prog=prog)


def main(argv: list[str]) -> int:
    return run_command(NAME, make_parser(), run, argv)


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

    serve(model, host=args.host, port=args.port, max_batch_tokens=args.max_batch_tokens,
          max_batch_size=args.batch_size, max_padding=args.max_padding)


def load_served_model(args: ServeArguments):
    """The LenVM to serve, as a ``LengthPredictor`` when it has a tokenizer (``--tokenizer``, else the one
    saved in the checkpoint), else as a bare ``LenVM``: the reference protocol sends token ids, so only
    ``/predict`` needs a tokenizer."""
    from transformers import AutoTokenizer

    from lenvm_rl.modeling import LenVM
    from lenvm_rl.modeling.vocabulary import check_vocabulary, saved_tokenizer
    from lenvm_rl.predict import LengthPredictor

    if args.model in EMBEDDED_MODELS:  # a bare backbone (untrained head) and its tokenizer
        predictor = load_predictor(args)
        model, tokenizer, untrained = predictor.model, predictor.tokenizer, True
    else:
        try:
            model = LenVM.from_pretrained(args.model, gamma=args.gamma, dtype=args.dtype, device=args.device,
                                          trust_remote_code=args.trust_remote_code)
        except (FileNotFoundError, ValueError) as err:
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
