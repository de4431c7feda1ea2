"""The OpenAI-compatible HTTP API over an :class:`~lorakit.serve.Engine` (FastAPI; run it with uvicorn).

``model`` in a request names an adapter (or the base). Errors use OpenAI's body,
``{"error": {"message", "type", "param", "code"}}``, on every route (unknown routes included). With
``api_key`` the inference routes (``/v1/completions``, ``/v1/chat/completions``, ``/v1/models``) need
``Authorization: Bearer <api_key>``, as vLLM's ``--api-key`` does. The admin routes — lorakit's
``POST``/``DELETE /v1/adapters`` and vLLM's ``POST /v1/load_lora_adapter`` / ``/v1/unload_lora_adapter`` — need
the admin bearer token and load only from below the adapter root (checked after resolving symlinks) or from
``registry:`` references. Tokenisation and grammar compilation run in worker threads, never on the event loop.
"""

from __future__ import annotations

import hmac
import time
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import PlainTextResponse, Response
from starlette.exceptions import HTTPException

from lorakit.core.errors import LorakitError
from lorakit.serve import generation
from lorakit.serve.bodies import MAX_BODY_BYTES, ApiError, check_text, error_response, from_lorakit, read_body
from lorakit.serve.engine import Engine
from lorakit.serve.grammar import grammar_for
from lorakit.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    LoadAdapterRequest,
    LoadLoraRequest,
    UnloadLoraRequest,
)

_INFERENCE = ("/v1/completions", "/v1/chat/completions")


def create_app(
    engine: Engine,
    *,
    admin_token: str | None = None,
    adapter_root: str | Path | None = None,
    chat_max_tokens: int = 256,
    api_key: str | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> FastAPI:
    """The FastAPI app; it starts the engine's background thread on startup and stops it on shutdown.

    ``chat_max_tokens``: a chat request's ``max_tokens`` when it gives none (16 for completions, as OpenAI),
    capped by what the context leaves; ``max_body_bytes``: the request body limit (413 beyond)."""
    root = Path(adapter_root).resolve() if adapter_root is not None else None

    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="lorakit", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, err: ApiError) -> Response:
        if request.url.path in _INFERENCE and 400 <= err.status < 500:
            name = getattr(request.state, "model", None)
            known = name == engine.base_name or name in engine.adapters()
            engine.metrics.reject(name if known else "unknown", err.status)
        return error_response(err.status, err.message, err.code, err.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> Response:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return error_response(400, f"field {field or 'body'}: {first['msg']}", "invalid_request", field)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> Response:
        return error_response(
            err.status_code,
            f"{request.method} {request.url.path}: {err.detail}",
            "not_found" if err.status_code == 404 else "invalid_request",
        )

    def _check_api_key(request: Request) -> None:
        if api_key is not None and not _bearer_matches(request, api_key):
            raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>", "invalid_api_key")

    def _check_admin(request: Request) -> None:
        if admin_token is None:
            raise ApiError(
                403,
                "admin endpoints are disabled: start the server with --admin-token or LORAKIT_ADMIN_TOKEN",
                "admin_disabled",
            )
        if not _bearer_matches(request, admin_token):
            raise ApiError(401, "missing or wrong bearer token for an admin endpoint", "unauthorized")

    @app.get("/health")
    async def health() -> dict:
        running = engine.scheduler.running
        return {
            "status": "ok",
            "base": engine.base_name,
            "resident_adapters": len(engine.cache.resident),
            "queued": engine.scheduler.queued,
            "running": len(running) if running is not None else 0,
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(engine.metrics.render(), media_type="text/plain; version=0.0.4")

    def _model_card(name: str, created: int) -> dict:
        if name == engine.base_name:
            return {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "lorakit",
                "parent": None,
                "root": name,
            }
        return {
            "id": name,
            "object": "model",
            "created": created,
            "owned_by": "lorakit",
            "parent": engine.base_name,
            "root": engine.adapters()[name],
        }

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        _check_api_key(request)
        created = int(time.time())
        return {
            "object": "list",
            "data": [_model_card(n, created) for n in [engine.base_name, *sorted(engine.adapters())]],
        }

    @app.get("/v1/models/{name:path}")
    async def model(name: str, request: Request) -> dict:
        _check_api_key(request)
        check_text(name, "model")
        generation.reject_unknown(engine, name)
        return _model_card(name, int(time.time()))

    @app.post("/v1/completions")
    async def completions(request: Request):
        _check_api_key(request)
        body = await read_body(request, CompletionRequest, max_body_bytes)
        generation.reject_unknown(engine, body.model)
        prompts = await run_in_threadpool(_encode_all, engine, body.prompts)
        grammar = _grammar(body.response_format)
        count = body.best_of or body.n
        scoring = body.logprobs if body.logprobs is not None else (0 if count > body.n else None)
        params = [
            body.sampling(_max_tokens(engine, body.max_tokens, 16, prompts), scoring, grammar, seed)
            for seed in generation.seeds(body.seed, count)
        ]
        return await generation.run(
            engine,
            request,
            body,
            prompts,
            params,
            chat=False,
            echo=body.echo,
            keep=body.n,
            report_logprobs=body.logprobs is not None,
        )

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        _check_api_key(request)
        body = await read_body(request, ChatRequest, max_body_bytes)
        generation.reject_unknown(engine, body.model)
        try:
            ids = await run_in_threadpool(engine.encode_chat, [m.template_dict() for m in body.messages])
        except LorakitError as err:
            raise from_lorakit(err) from None
        grammar = _grammar(body.response_format)
        top = (body.top_logprobs or 0) if body.logprobs else None
        params = [
            body.sampling(_max_tokens(engine, body.max_tokens, chat_max_tokens, [(ids, "")]), top, grammar, seed)
            for seed in generation.seeds(body.seed, body.n)
        ]
        return await generation.run(
            engine, request, body, [(ids, "")], params, chat=True, keep=body.n, report_logprobs=body.logprobs
        )

    @app.post("/v1/adapters", status_code=201)
    async def load(request: Request) -> dict:
        _check_admin(request)
        body = await read_body(request, LoadAdapterRequest, max_body_bytes)
        source = await _load(body.name, body.path, "path")
        return {"id": body.name, "object": "model", "parent": engine.base_name, "root": source}

    @app.delete("/v1/adapters/{name:path}")
    async def unload(name: str, request: Request) -> dict:
        _check_admin(request)
        await _unload(name, "name")
        return {"id": name, "object": "model", "deleted": True}

    @app.post("/v1/load_lora_adapter")
    async def load_lora(request: Request) -> Response:
        _check_admin(request)
        body = await read_body(request, LoadLoraRequest, max_body_bytes)
        await _load(body.lora_name, body.lora_path, "lora_path")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @app.post("/v1/unload_lora_adapter")
    async def unload_lora(request: Request) -> Response:
        _check_admin(request)
        body = await read_body(request, UnloadLoraRequest, max_body_bytes)
        await _unload(body.lora_name, "lora_name")
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    async def _load(name: str, path: str, param: str) -> str:
        source = _allowed_source(path, root, param)
        try:
            await run_in_threadpool(engine.load_adapter, name, source)
        except LorakitError as err:
            raise from_lorakit(err) from None
        return source

    async def _unload(name: str, param: str) -> None:
        check_text(name, param)
        try:
            await run_in_threadpool(engine.unload_adapter, name)
        except LorakitError as err:
            raise from_lorakit(err) from None

    return app


def _bearer_matches(request: Request, secret: str) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), secret.encode())


def _encode_all(engine: Engine, prompts: list) -> list[tuple[list[int], str]]:
    """``(ids, text)`` per prompt (text decoded from ids for token prompts, for ``echo``)."""
    return [(engine.encode(p), p) if isinstance(p, str) else (list(p), engine.tokenizer.decode(p)) for p in prompts]


def _grammar(response_format: dict | None) -> str | None:
    try:
        return grammar_for(response_format)
    except LorakitError as err:
        raise ApiError(400, str(err), "invalid_request", "response_format") from None


def _max_tokens(engine: Engine, asked: int | None, default: int, prompts: list[tuple[list[int], str]]) -> int:
    """``asked``, or ``default`` capped by what the longest prompt leaves of the context."""
    if asked is not None:
        return asked
    return max(1, min(default, engine.max_context - max(len(ids) for ids, _ in prompts)))


def _allowed_source(path: str, root: Path | None, param: str) -> str:
    """``path`` if it is a ``registry:`` reference or resolves (symlinks followed) inside ``root``."""
    check_text(path, param)
    if path.startswith("registry:"):
        return path
    if root is None:
        raise ApiError(
            403, "no --adapter-root is configured, so adapters cannot be loaded from paths", "path_forbidden", param
        )
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(403, f"path {path!r} lies outside the adapter root {str(root)!r}", "path_forbidden", param)
    return str(resolved)
