"""Dynamic batching: one worker thread owns the model; concurrent requests share its forward passes.

A request is a list of rows of one kind: ``"encode"`` rows are token sequences (every token's logit
``z`` comes back), ``"tree"`` rows are ``(prefix, candidates)`` pairs (``z`` of each one-token
extension comes back). The worker takes everything queued (waiting ``max_wait_s`` for more after the
first request), sorts the rows of each kind by length and packs them into batches whose padded size,
``rows * width`` tokens, stays under ``max_batch_tokens``, with at most ``max_batch_size`` rows and at
most a ``max_padding`` fraction of padding (a padded token costs as much as a real one). A
request's future resolves once all its rows are done; rows of different requests never mix up
because each row carries its request and index.

Failures stay with the requests they belong to. A forward pass that raises is retried request by request,
so one bad request fails alone; any other error of a round fails that round's requests; the worker
keeps serving either way. A request becomes uncancellable once the worker takes it, so a client that
goes away mid-batch cannot break the delivery of the results. :meth:`DynamicBatcher.submit` refuses
requests once :meth:`DynamicBatcher.stop` began (:class:`EngineStopped`), and every request it accepted gets an
answer.

The server talks to an engine through ``start``, ``stop``, ``running``, ``async run(kind, rows)``, ``async
flush_cache()`` and ``health()``: this batcher (``--engine hf``) or
:class:`~lenvm_rl.serving.vllm_engine.VLLMEngine` (``--engine vllm``).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Literal

import torch

from lenvm_rl.decoding.scoring import tree_values
from lenvm_rl.modeling import LenVM

__all__ = ["DynamicBatcher", "EngineStopped", "row_tokens"]

logger = logging.getLogger(__name__)

Kind = Literal["encode", "tree"]


class EngineStopped(RuntimeError):
    """The engine takes no requests: it was stopped, or never started (the server answers HTTP 503)."""


def row_tokens(kind: Kind, row) -> int:
    """Tokens one row puts through the model: the sequence, or the prefix plus its candidates."""
    return len(row) if kind == "encode" else len(row[0]) + len(row[1])


@dataclass(eq=False)  # hashed by identity
class _Job:
    kind: Kind
    rows: list
    future: Future
    results: list = field(default_factory=list)
    pending: int = 0


@dataclass
class BatchStats:
    """Counters for ``/health``: forward passes run, rows and requests served, largest batch (rows)."""

    batches: int = 0
    rows: int = 0
    requests: int = 0
    max_rows: int = 0


class DynamicBatcher:
    """Groups rows of concurrent requests into length-sorted batches under a token budget.

    Args:
        model: the LenVM; only the worker thread calls it after :meth:`start`.
        max_batch_tokens: padded tokens (rows x width) per forward pass; a request must fit in it.
        max_batch_size: rows per forward pass.
        max_wait_s: how long the worker waits for more requests after the first one of a batch.
        max_padding: the largest fraction of a batch's padded tokens that may be padding; a shorter row
            that would exceed it starts the next batch.
    """

    def __init__(self, model: LenVM, *, max_batch_tokens: int = 16384, max_batch_size: int = 64,
                 max_wait_s: float = 0.002, max_padding: float = 0.25):
        if max_batch_tokens < 1 or max_batch_size < 1:
            raise ValueError(f"max_batch_tokens and max_batch_size must be >= 1, got {max_batch_tokens}, "
                             f"{max_batch_size}")
        if not 0.0 <= max_padding < 1.0:
            raise ValueError(f"max_padding must be in [0, 1), got {max_padding}")
        self.max_padding = max_padding
        self.model = model.eval()
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # orders submit's put against stop's sentinel
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "DynamicBatcher":
        with self._lock:
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name="lenvm-batcher", daemon=True)
                self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish every accepted one, then end the worker."""
        with self._lock:
            thread, self._stopping = self._thread, True
            if thread is not None:
                self._queue.put(None)  # after every accepted request: the worker serves them all first
        if thread is not None:
            thread.join(timeout)
            with self._lock:
                if self._thread is thread:
                    self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stopping

    def submit(self, kind: Kind, rows: list) -> Future:
        """Queue a request; its future resolves to one float32 CPU tensor of logits per row, in order."""
        if kind not in ("encode", "tree"):
            raise ValueError(f"kind must be 'encode' or 'tree', got {kind!r}")
        total = sum(row_tokens(kind, row) for row in rows)
        if total > self.max_batch_tokens:
            raise ValueError(f"{total} tokens exceed the batch budget of {self.max_batch_tokens}")
        job = _Job(kind, rows, Future(), results=[None] * len(rows), pending=len(rows))
        with self._lock:
            if self._stopping:
                raise EngineStopped("the batcher was stopped: it takes no new requests")
            if not self.running:
                raise EngineStopped("the batcher is not running; call start() first")
            if rows:
                self._queue.put(job)
        if not rows:
            job.future.set_result([])
        return job.future

    async def run(self, kind: Kind, rows: list) -> list[torch.Tensor]:
        """:meth:`submit`, awaited: one float32 CPU tensor of logits per row, in order."""
        return await asyncio.wrap_future(self.submit(kind, rows))

    async def flush_cache(self) -> tuple[bool, str]:
        return True, "Cache flushed (this server keeps no prefix cache)."

    def health(self) -> dict:
        """What ``/health`` reports of the engine: its device, dtype, limits and batching counters."""
        parameter = next(self.model.parameters())
        return {"engine": "hf", "device": str(parameter.device), "dtype": str(parameter.dtype).removeprefix("torch."),
                "max_batch_size": self.max_batch_size, "max_padding": self.max_padding, "prefix_cache": False,
                "batches": self.stats.batches, "rows": self.stats.rows, "requests": self.stats.requests,
                "max_rows_per_batch": self.stats.max_rows}

    # ------------------------------------------------------------------ worker
    def _collect(self, first: _Job | None) -> tuple[list[_Job], bool]:
        """``first`` plus whatever arrives within ``max_wait_s``; after a stop sentinel, only what is queued.

        Each request taken is marked running (``Future.set_running_or_notify_cancel``): one cancelled
        before is dropped, and none can be cancelled after, so setting its result cannot fail.
        """
        jobs, stop = [], first is None
        if first is not None and first.future.set_running_or_notify_cancel():
            jobs.append(first)
        deadline = time.monotonic() + (0.0 if stop else self.max_wait_s)
        while True:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                return jobs, stop
            if job is None:
                stop, deadline = True, 0.0  # finish what is queued, then end
            elif job.future.set_running_or_notify_cancel():
                jobs.append(job)

    def _run(self) -> None:
        stop = False
        while not stop:
            jobs: list[_Job] = []
            try:
                jobs, stop = self._collect(self._queue.get())
                for kind in ("encode", "tree"):
                    rows = [(job, i) for job in jobs if job.kind == kind for i in range(len(job.rows))]
                    for batch in self.plan(kind, rows):
                        self._run_batch(kind, batch)
            except Exception as err:  # a fault outside the forward pass: fail this round's requests, keep serving
                logger.exception("the LenVM batcher failed a round of %d requests", len(jobs))
                _fail(jobs, err)

    def plan(self, kind: Kind, rows: list[tuple[_Job, int]]) -> list[list[tuple[_Job, int]]]:
        """Length-sorted batches (longest first) within the token budget, the row limit and the padding limit.

        The width of a ``"tree"`` batch is its longest prefix plus its largest candidate count, since both
        are padded separately.
        """
        rows = sorted(rows, key=lambda r: row_tokens(kind, r[0].rows[r[1]]), reverse=True)
        batches, current, widest, real = [], [], (0, 0), 0
        for job, i in rows:
            row = job.rows[i]
            size = (len(row), 0) if kind == "encode" else (len(row[0]), len(row[1]))
            grown = (max(widest[0], size[0]), max(widest[1], size[1]))
            padded = sum(grown) * (len(current) + 1)
            if current and (padded > self.max_batch_tokens or len(current) >= self.max_batch_size
                            or real + sum(size) < (1.0 - self.max_padding) * padded):
                batches.append(current)
                current, grown, real = [], size, 0
            current.append((job, i))
            widest, real = grown, real + sum(size)
        if current:
            batches.append(current)
        return batches

    def _forward(self, kind: Kind, rows: list) -> list[torch.Tensor]:
        with torch.inference_mode():
            if kind == "encode":
                return [out.logits for out in self.model.score(rows, batch_size=len(rows))]
            return tree_values(self.model, [row[0] for row in rows], [row[1] for row in rows])

    def _run_batch(self, kind: Kind, batch: list[tuple[_Job, int]]) -> None:
        live = [(job, i) for job, i in batch if not job.future.done()]
        if not live:
            return
        try:
            results = self._forward(kind, [job.rows[i] for job, i in live])
            if len(results) != len(live):
                raise RuntimeError(f"the LenVM returned {len(results)} results for {len(live)} rows")
        except Exception as err:  # e.g. out of memory, or one request the model cannot take
            jobs = list(dict.fromkeys(job for job, _ in live))
            if len(jobs) > 1:  # retry request by request: only the request at fault fails
                logger.warning("LenVM batch of %d %s rows from %d requests failed (%s: %s); retrying each request "
                               "alone", len(live), kind, len(jobs), type(err).__name__, err)
                for job in jobs:
                    self._run_batch(kind, [(j, i) for j, i in live if j is job])
            else:
                logger.exception("LenVM batch of %d %s rows failed", len(live), kind)
                _fail(jobs, err)
            return
        self.stats.batches += 1
        self.stats.rows += len(live)
        self.stats.max_rows = max(self.stats.max_rows, len(live))
        for (job, i), result in zip(live, results):
            job.results[i] = result
            job.pending -= 1
            if job.pending == 0 and not job.future.done():
                self.stats.requests += 1
                job.future.set_result(job.results)


def _fail(jobs: list[_Job], err: BaseException) -> None:
    """Fail every request of ``jobs`` still unanswered with ``err`` (the server answers it with a 5xx)."""
    for job in jobs:
        if not job.future.done():
            job.future.set_exception(err)
