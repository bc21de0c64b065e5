"""The LenVM HTTP server: FastAPI endpoints over an engine, our :class:`~lenvm_rl.serving.batcher.DynamicBatcher`
(``--engine hf``, the default) or vLLM's async engine (:class:`~lenvm_rl.serving.vllm_engine.VLLMEngine`,
``--engine vllm``); both answer every endpoint the same way.

Endpoints (request bodies in :mod:`lenvm_rl.serving.validation`):

- ``POST|PUT /encode``: one ``{"embedding": [z_0, ..., z_{n-1}], "meta_info": {"prompt_tokens": n}}`` per
  sequence, a list for a batch and a single object for a flat ``input_ids``; ``z`` is the value head's
  raw output, ``V = -sigmoid(z)``, ``length = ln(1 + V) / ln(gamma)``.
- ``POST|PUT /tree_value``: one ``{"embedding": [z(prefix + c_1), ..., z(prefix + c_k)], "meta_info":
  {"prompt_tokens": len(prefix) + k}}`` per prefix; a list, or one object for a single prefix (flat, or a batch
  of one, as the reference server answers). ``hf``: all candidates in one forward, nothing cached; ``vllm``: one
  last-token request per extension, the prefix read from vLLM's prefix cache.
- ``POST|PUT /token_value`` and ``/candidate_value``: the same ``z`` as ``/encode`` and ``/tree_value`` in
  the reference's other shape, ``{"values": [[z, ...], ...], "meta_info": ...}``: ``values`` always a
  list of lists, ``meta_info`` one object for a single request and a list otherwise.
- ``GET|POST /flush_cache``: ``{"success": true, ...}``; ``hf`` keeps no prefix cache, ``vllm`` empties its own.
- ``POST /predict``: ``{"gamma": g, "untrained": bool, "predictions": [{"value": V, "length": l,
  "prompt_tokens": n}, ...]}`` at the prompt boundary; it needs a tokenizer (HTTP 400 without one).
- ``GET /health``: ``{"status": "ok", "engine": "hf" or "vllm", ...}`` with the model, its limits and the
  engine's counters.
- ``GET /v1/models``: the OpenAI-style model list that the reference launch scripts wait on.

Only ``/predict`` needs a tokenizer: the reference protocol sends token ids.

Bad requests get ``{"error": {"message": ..., "type": ..., "code": status}}`` with a 4xx status, and a
request the model fails on gets a 500 in the same shape (it alone: see the batcher); the server keeps
serving. On SIGTERM uvicorn stops accepting, finishes in-flight requests, then the
engine finishes its queue and ends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager

import torch

from lenvm_rl.core import logits_to_length, logits_to_value
from lenvm_rl.modeling import LenVM
from lenvm_rl.modeling.vision import placeholder_token_ids
from lenvm_rl.predict import LengthPredictor
from lenvm_rl.serving import require_serving_dependencies
from lenvm_rl.serving.batcher import DynamicBatcher, EngineStopped
from lenvm_rl.serving.validation import (
    RequestError,
    check_budget,
    check_placeholders,
    parse_body,
    parse_encode,
    parse_predict,
    parse_tree_value,
)

require_serving_dependencies()

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.responses import JSONResponse  # noqa: E402
from starlette.exceptions import HTTPException  # noqa: E402

__all__ = ["DEFAULT_MAX_BATCH_TOKENS", "create_app", "serve"]

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_TOKENS = 16384
_ERROR_TYPES = {400: "BadRequest", 404: "NotFound", 405: "MethodNotAllowed", 413: "PayloadTooLarge",
                422: "InvalidRequest", 500: "InternalError", 503: "Unavailable"}
_BYTES_PER_TOKEN = 16  # a generous JSON size of one token id: digits, comma, space, brackets


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": _ERROR_TYPES.get(status, "Error"), "code": status}},
                        status_code=status)


def _items(logits: list[torch.Tensor], tokens: list[int], single: bool):
    """The ``/encode`` and ``/tree_value`` body: one object per row, or the object alone for a single request."""
    items = [{"embedding": z.tolist(), "meta_info": {"prompt_tokens": n}} for z, n in zip(logits, tokens)]
    return items[0] if single else items


def _values(logits: list[torch.Tensor], tokens: list[int], single: bool) -> dict:
    """The ``/token_value`` and ``/candidate_value`` body: every row's ``z`` under ``values``."""
    meta = [{"prompt_tokens": n} for n in tokens]
    return {"values": [z.tolist() for z in logits], "meta_info": meta[0] if single else meta}


def create_app(
    model: LenVM | LengthPredictor,
    *,
    engine=None,
    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
    max_batch_size: int = 64,
    max_wait_s: float = 0.002,
    max_padding: float = 0.25,
) -> FastAPI:
    """A FastAPI app serving ``model`` (a :class:`LengthPredictor`, or a bare :class:`LenVM` without ``/predict``).

    Args:
        model: the LenVM, with its tokenizer when given as a :class:`LengthPredictor`; only ``/predict``
            needs the tokenizer, and a bare :class:`LenVM` serves every other endpoint.
        engine: what runs the LenVM (see :mod:`lenvm_rl.serving.batcher`); by default a :class:`DynamicBatcher`
            on ``model`` with the batching arguments below, which only it reads. A
            :class:`~lenvm_rl.serving.vllm_engine.VLLMEngine` comes with a :class:`~lenvm_rl.vllm.VLLMLenVM`
            ``model`` (the config and records of the checkpoint it serves).
        max_batch_tokens: padded tokens per forward pass; a request holding more gets a 413.
        max_batch_size: rows (sequences or prefixes) per forward pass; 1 turns batching off.
        max_wait_s: how long the batcher waits for more requests after the first of a batch.
        max_padding: the largest fraction of padding in a batch (padding costs as much as real tokens).
    """
    predictor = model if isinstance(model, LengthPredictor) else None
    lenvm = predictor.model if predictor is not None else model
    if engine is None:
        engine = DynamicBatcher(lenvm, max_batch_tokens=max_batch_tokens, max_batch_size=max_batch_size,
                                max_wait_s=max_wait_s, max_padding=max_padding)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.to_thread(engine.stop)

    app = FastAPI(title="lenvm-rl serve", summary="LenVM length prediction", lifespan=lifespan)
    app.state.engine = engine
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    routes = _Routes(lenvm, predictor, engine, max_batch_tokens)
    for path, endpoint, methods in (
        ("/encode", routes.encode, ["POST", "PUT"]),
        ("/tree_value", routes.tree_value, ["POST", "PUT"]),
        ("/token_value", routes.token_value, ["POST", "PUT"]),
        ("/candidate_value", routes.candidate_value, ["POST", "PUT"]),
        ("/flush_cache", routes.flush_cache, ["GET", "POST"]),
        ("/predict", routes.predict, ["POST"]),
        ("/v1/models", routes.models, ["GET"]),
        ("/health", routes.health, ["GET"]),
    ):
        app.add_api_route(path, endpoint, methods=methods)
    return app


async def _request_error(request: Request, err: RequestError) -> JSONResponse:
    return _error(err.status, err.message)


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:  # unknown path, wrong method
    return _error(err.status_code, str(err.detail))


async def _internal_error(request: Request, err: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s", request.url.path)
    return _error(500, f"{type(err).__name__}: {err}")


class _Routes:
    """The endpoints of :func:`create_app` over one engine; each reads its request body and answers as the module
    docstring says."""

    def __init__(self, lenvm: LenVM, predictor: LengthPredictor | None, engine, max_batch_tokens: int):
        self.lenvm, self.predictor, self.engine = lenvm, predictor, engine
        self.max_batch_tokens = max_batch_tokens
        self.vocab_size = self.lenvm.config.get_text_config().vocab_size  # a VL config keeps it in its text_config
        self.placeholders = placeholder_token_ids(self.lenvm.config)  # a VL LenVM's image tokens: refused
        self.created = int(time.time())

    async def _body(self, request: Request) -> dict:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > _BYTES_PER_TOKEN * self.max_batch_tokens + 65536:
            raise RequestError(f"a {declared}-byte body cannot fit the batch budget of {self.max_batch_tokens} "
                               "tokens", status=413)
        return parse_body(await request.body())

    async def _run(self, kind: str, rows: list) -> list[torch.Tensor]:
        try:
            return await self.engine.run(kind, rows)
        except EngineStopped as err:
            raise RequestError(str(err), status=503) from None

    async def _run_encode(self, request: Request) -> tuple[list[torch.Tensor], list[int], bool]:
        sequences, single = parse_encode(await self._body(request), vocab_size=self.vocab_size,
                                         max_tokens=self.max_batch_tokens)
        check_placeholders(sequences, self.placeholders)
        return await self._run("encode", sequences), [len(seq) for seq in sequences], single

    async def _run_tree(self, request: Request) -> tuple[list[torch.Tensor], list[int], bool]:
        rows, single = parse_tree_value(await self._body(request), vocab_size=self.vocab_size,
                                        max_tokens=self.max_batch_tokens)
        check_placeholders([prefix + cands for prefix, cands in rows], self.placeholders)
        return await self._run("tree", rows), [len(prefix) + len(cands) for prefix, cands in rows], single

    async def encode(self, request: Request):
        return _items(*await self._run_encode(request))

    async def tree_value(self, request: Request):
        return _items(*await self._run_tree(request))

    async def token_value(self, request: Request):
        return _values(*await self._run_encode(request))

    async def candidate_value(self, request: Request):
        return _values(*await self._run_tree(request))

    async def flush_cache(self):
        success, message = await self.engine.flush_cache()
        return {"success": success, "message": message}

    async def predict(self, request: Request):
        if self.predictor is None:
            raise RequestError("/predict needs a tokenizer and this server has none (its checkpoint holds no "
                               "tokenizer files): restart it with --tokenizer PATH, or send token ids to /encode",
                               status=400)
        prompts = parse_predict(await self._body(request))
        try:
            encoded = [self.predictor.encode_prompt(p) for p in prompts]
        except Exception as err:  # a chat template rejecting the messages, ...
            raise RequestError(f"could not tokenize the prompts: {err}") from None
        check_budget(sum(map(len, encoded)), self.max_batch_tokens)
        last = torch.stack([z[-1] for z in await self._run("encode", encoded)])
        values, lengths = logits_to_value(last).tolist(), logits_to_length(last, self.lenvm.gamma).tolist()
        return {
            "gamma": self.lenvm.gamma,
            "untrained": self.predictor.untrained,
            "predictions": [{"value": v, "length": n, "prompt_tokens": len(ids)}
                            for v, n, ids in zip(values, lengths, encoded)],
        }

    async def models(self):  # OpenAI-style, as the reference server; its launch scripts poll it until it answers
        name = str(self.lenvm.config.name_or_path)
        return {"object": "list", "data": [{
            "id": name, "object": "model", "created": self.created, "owned_by": "lenvm-rl", "root": name,
            "max_model_len": getattr(self.lenvm.config, "max_position_embeddings", None)}]}

    async def health(self):
        running = self.engine.running
        body = {
            "status": "ok" if running else "unavailable",
            "model": str(self.lenvm.config.name_or_path),
            "gamma": self.lenvm.gamma,
            "vocab_size": self.vocab_size,
            "max_batch_tokens": self.max_batch_tokens,
            "predict": self.predictor is not None,
            **self.engine.health(),
        }
        return JSONResponse(body, status_code=200 if running else 503)


def serve(
    model: LenVM | LengthPredictor,
    *,
    host: str = "127.0.0.1",
    port: int = 30010,
    log_level: str = "info",
    **app_kwargs,
) -> None:
    """Run :func:`create_app` under uvicorn until SIGINT/SIGTERM; in-flight requests finish first."""
    import uvicorn

    app = create_app(model, **app_kwargs)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=None)
    uvicorn.Server(config).run()
