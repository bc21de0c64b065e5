"""What the benchmarks in ``bench/`` share: the ``--device`` and ``--dtype`` options, wall time that waits for
the GPU, and the header naming the hardware and library versions a number was measured on.

CUDA kernels run asynchronously: without a synchronisation a timer stops when the work is queued, not done.
:func:`timed` synchronises the device before starting and before stopping the clock.

Speed does not depend on the weights' values: :func:`save_random_models` builds a policy of a named shape
(:data:`RANDOM_SHAPES`) with random weights, and a LenVM on its trunk, on machines with no Hub (``bench/gpu_check.sh``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import torch

from lenvm_rl.modeling.devices import resolve_device

__all__ = ["DTYPES", "RANDOM_SHAPES", "add_device_arguments", "environment_header", "resolve_device_arguments",
           "save_random_models", "synchronize", "timed"]

DTYPES = ("float32", "bfloat16", "float16")
"""The ``--dtype`` choices: the models' parameter dtype."""


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--device`` (default ``auto``: CUDA when available) and ``--dtype`` (default ``float32``)."""
    parser.add_argument("--device", default="auto",
                        help="torch device, e.g. cpu or cuda:0; auto: cuda when available, else cpu (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="model dtype (default: float32)")


def resolve_device_arguments(args: argparse.Namespace) -> argparse.Namespace:
    """Replace ``args.device`` ``auto`` by the device it names; ``args.dtype`` stays a name of :data:`DTYPES`."""
    args.device = resolve_device(args.device)
    return args


def synchronize(device: torch.device | str) -> None:
    """Wait for the queued work of ``device`` to finish (a no-op off CUDA)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device | str = "cpu") -> float:
    """Seconds ``fn()`` takes on ``device``: its queued work is finished before the clock starts and stops."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def environment_header(device: torch.device | str, dtype: str) -> str:
    """One line: the device (a GPU's name, or the CPU's torch threads), the dtype, and the versions of torch
    (with its CUDA), transformers and trl. Print it first, so that every number has its setting."""
    device = torch.device(device)
    if device.type == "cuda":
        where = f"{device} ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
    else:
        where = f"{device} ({torch.get_num_threads()} torch threads)"
    return (f"device {where}, dtype {dtype}; torch {torch.__version__}, transformers {_version('transformers')}, "
            f"trl {_version('trl')}")


RANDOM_SHAPES: dict[str, tuple[str, dict]] = {
    "SmolLM2-135M": ("llama", dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                   num_key_value_heads=3, intermediate_size=1536, tie_word_embeddings=True,
                                   max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5)),
    "Qwen2.5-1.5B": ("qwen2", dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                                   num_key_value_heads=2, intermediate_size=8960, tie_word_embeddings=True,
                                   max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6)),
}
"""Model shapes for :func:`save_random_models`: the ``model_type`` and the config of the real model, but the
vocabulary, which is the tokenizer's."""


def save_random_models(shape: str, directory: str | Path, tokenizer: str | Path, *, dtype: str = "bfloat16",
                       device: str = "cpu", gamma: float = 0.99, seed: int = 0, **overrides) -> tuple[Path, Path]:
    """Save a random-weight policy of ``shape`` (a key of :data:`RANDOM_SHAPES`) and a LenVM on its trunk.

    The policy goes to ``directory/policy`` and the LenVM (a fresh head on the same weights, so that its trunk is
    the policy's: the shared-trunk case of guided decoding) to ``directory/lenvm``, each with the tokenizer of the
    directory ``tokenizer`` (its chat template included). The vocabulary is the tokenizer's: with SmolLM2's, 49152
    for every shape (Qwen2.5's own is 151936). ``overrides`` replace config entries (e.g. tiny sizes for a dry run).
    The weights are drawn on ``device`` in ``dtype`` (seeded). A directory already built with the same arguments is
    kept (``directory/random_models.json`` records them, written last).
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from lenvm_rl.modeling import LenVM

    if shape not in RANDOM_SHAPES:
        raise ValueError(f"shape must be one of {sorted(RANDOM_SHAPES)}, got {shape!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    directory = Path(directory)
    policy_dir, lenvm_dir, record_file = directory / "policy", directory / "lenvm", directory / "random_models.json"
    record = {"shape": shape, "tokenizer": str(Path(tokenizer).resolve()), "dtype": dtype, "gamma": gamma,
              "seed": seed, "overrides": overrides}
    if record_file.is_file() and json.loads(record_file.read_text()) == record:
        return policy_dir, lenvm_dir
    record_file.unlink(missing_ok=True)
    tok = AutoTokenizer.from_pretrained(tokenizer)
    model_type, kwargs = RANDOM_SHAPES[shape]
    config = AutoConfig.for_model(model_type, **kwargs | overrides, vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    with torch.device(device):
        policy = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype)).eval()
    policy.save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    LenVM(policy, gamma=gamma).save_pretrained(lenvm_dir)  # after the policy: it records gamma in their config
    tok.save_pretrained(lenvm_dir)
    record_file.write_text(json.dumps(record, indent=1) + "\n")
    return policy_dir, lenvm_dir
