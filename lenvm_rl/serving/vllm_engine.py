"""``lenvm-rl serve --engine vllm``: the server's engine on vLLM's async engine, with the LenVM plugin's pooling tasks.

- ``"encode"`` rows (token sequences) are ``token_classify`` requests: ``z`` of every token. vLLM does not read
  its prefix cache for them (it must run every token to return every token's ``z``) but fills it.
- ``"tree"`` rows ``(prefix, candidates)`` become one ``classify`` request per extension ``prefix + [c]``:
  ``z`` of the last token, which reads the prefix cache, so a prefix already seen (by ``/encode``, or by the
  previous step of a guided-decoding loop) is not run again, only its uncached tail and the candidate. vLLM
  caches whole blocks (``--vllm_block_size``), so the tail is shorter than one block.

vLLM batches every request in flight continuously; the HTTP layer, its validation and its answers are the same
as with our own batcher. ``/flush_cache`` empties vLLM's prefix cache. ``/health`` reports the rows and requests
served, the most rows in flight at once, and the prompt tokens sent against those read from the cache.
"""

from __future__ import annotations

import asyncio
import itertools
import logging

import torch

from lenvm_rl.serving.batcher import EngineStopped, Kind
from lenvm_rl.serving.validation import RequestError

__all__ = ["VLLMEngine"]

logger = logging.getLogger(__name__)


class VLLMEngine:
    """A vLLM ``AsyncLLM`` behind the server's engine interface (see :mod:`lenvm_rl.serving.batcher`).

    Args:
        engine_args: keyword arguments of ``vllm.AsyncEngineArgs``, from
            :func:`lenvm_rl.vllm.scoring.lenvm_engine_args`. The engine starts in :meth:`start` (in the server's
            event loop) and shuts down in :meth:`stop`.
    """

    def __init__(self, engine_args: dict):
        self.engine_args = engine_args
        self.max_model_len: int | None = None
        self._llm = None
        self._stopping = False
        self._ids = itertools.count()
        self._in_flight = 0
        self.counters = {"rows": 0, "requests": 0, "max_rows_in_flight": 0, "prompt_tokens": 0, "cached_tokens": 0}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "VLLMEngine":
        if self._llm is None:
            from vllm import AsyncEngineArgs, AsyncLLMEngine

            self._stopping = False
            self._llm = AsyncLLMEngine.from_engine_args(AsyncEngineArgs(**self.engine_args))
            self.max_model_len = self._llm.vllm_config.model_config.max_model_len
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests and shut vLLM down (the server has answered every request it accepted by then)."""
        self._stopping = True
        llm, self._llm = self._llm, None
        if llm is not None:
            llm.shutdown(timeout)

    @property
    def running(self) -> bool:
        return self._llm is not None and not self._stopping and not self._llm.errored

    # ------------------------------------------------------------------ requests
    async def run(self, kind: Kind, rows: list) -> list[torch.Tensor]:
        """One float32 CPU tensor of ``z`` per row, in order: every token's (``encode``) or each extension's
        (``tree``). A row longer than vLLM's ``max_model_len`` is refused (HTTP 422)."""
        if not self.running:
            raise EngineStopped("the vLLM engine is stopped: it takes no new requests")
        for i, row in enumerate(rows):
            tokens = len(row) if kind == "encode" else len(row[0]) + 1
            if tokens > self.max_model_len:
                raise RequestError(f"row {i} holds {tokens} tokens, over the engine's max_model_len of "
                                   f"{self.max_model_len} (--vllm_max_model_length)")
        self._in_flight += len(rows)
        self.counters["max_rows_in_flight"] = max(self.counters["max_rows_in_flight"], self._in_flight)
        try:
            if kind == "encode":
                results = await asyncio.gather(*(self._pool(seq, "token_classify") for seq in rows))
                results = [z.squeeze(-1) for z in results]
            else:
                results = await asyncio.gather(*(self._extensions(prefix, candidates) for prefix, candidates in rows))
        finally:
            self._in_flight -= len(rows)
        self.counters["rows"] += len(rows)
        self.counters["requests"] += 1
        return results

    async def _extensions(self, prefix: list[int], candidates: list[int]) -> torch.Tensor:
        """``z(prefix + [c])`` for each candidate ``c``: last-token requests that share the cached prefix."""
        return torch.cat(await asyncio.gather(*(self._pool(prefix + [c], "classify") for c in candidates)))

    async def _pool(self, token_ids: list[int], task: str) -> torch.Tensor:
        from vllm import PoolingParams

        request_id = f"lenvm-{next(self._ids)}"
        outputs = self._llm.encode({"prompt_token_ids": token_ids}, PoolingParams(task=task), request_id)
        final = [out async for out in outputs][-1]  # pooling answers once, when the request finishes
        self.counters["prompt_tokens"] += len(token_ids)
        self.counters["cached_tokens"] += final.num_cached_tokens
        return final.outputs.data.float().cpu()

    async def flush_cache(self) -> tuple[bool, str]:
        if not await self._llm.reset_prefix_cache():
            return False, "vLLM did not flush its prefix cache (requests were running); retry"
        return True, "Prefix cache flushed."

    def health(self) -> dict:
        config = self._llm.vllm_config if self._llm is not None else None
        return {"engine": "vllm", "device": config.device_config.device_type if config else None,
                "dtype": str(config.model_config.dtype).removeprefix("torch.") if config else None,
                "max_model_len": self.max_model_len, "max_batch_size": self.engine_args.get("max_num_seqs"),
                "prefix_cache": bool(config and config.cache_config.enable_prefix_caching), **self.counters}
