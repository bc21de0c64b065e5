"""``lenvm-rl serve``: a LenVM length-prediction server speaking the reference serving protocol.

- :func:`create_app` / :func:`serve`: the FastAPI app (``/encode``, ``/tree_value``, ``/token_value``,
  ``/candidate_value``, ``/flush_cache``, ``/v1/models``, ``/predict``, ``/health``) and its uvicorn runner;
  they need ``pip install 'lenvm-rl[serve]'``, and only ``/predict`` needs a tokenizer;
- :class:`~lenvm_rl.serving.batcher.DynamicBatcher`: length-sorted dynamic batching under a token budget (the
  ``hf`` engine), or :class:`~lenvm_rl.serving.vllm_engine.VLLMEngine`: vLLM's async engine with its prefix cache
  (``--engine vllm``, ``pip install 'lenvm-rl[vllm]'``);
- :func:`~lenvm_rl.decoding.scoring.score_extensions`: ``z`` of many one-token extensions in one forward;
- :class:`~lenvm_rl.serving.client.LenVMClient`: a small client for the protocol, and
  :func:`~lenvm_rl.serving.client.launch_server` to run a server in a subprocess.

Importing this package is light: the server modules load on first use of :func:`create_app` or :func:`serve`.
"""

from __future__ import annotations

import importlib.util

__all__ = ["create_app", "require_serving_dependencies", "serve"]


def require_serving_dependencies() -> None:
    """Raise ``ImportError`` telling how to install FastAPI and uvicorn when either is missing."""
    missing = [name for name in ("fastapi", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"lenvm-rl serve needs {' and '.join(missing)}: pip install 'lenvm-rl[serve]'")


def __getattr__(name: str):
    if name in ("create_app", "serve"):
        from lenvm_rl.serving import app

        return getattr(app, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
