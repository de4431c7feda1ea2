"""Reading request bodies safely and answering errors in OpenAI's body.

:func:`read_body` refuses a body over the size limit (413, checked on ``Content-Length`` and while reading),
bytes that are not UTF-8 JSON (400), and any string — value or key, anywhere in the body — holding a NUL byte
or a lone UTF-16 surrogate (400 naming the field), before pydantic validates it. Validation errors become a
400 naming the field; undeclared or refused fields are ``unsupported_parameter``.
"""

from __future__ import annotations

import json

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from lorakit.core.errors import AdapterFileError, AdapterMismatchError, AdapterStateError, ConfigError, LorakitError
from lorakit.serve.cache import CacheFullError, UnknownAdapterError
from lorakit.serve.scheduler import QueueFullError

MAX_BODY_BYTES = 4 * 2**20  # default request body limit (a 4 MB prompt is ~1M tokens, far past any context)
RETRY_AFTER_SECONDS = 1

_STATUS = [
    (UnknownAdapterError, 404, "model_not_found"),
    (QueueFullError, 429, "rate_limit_exceeded"),
    (CacheFullError, 503, "adapters_busy"),
    (AdapterMismatchError, 409, "adapter_base_mismatch"),
    (AdapterStateError, 409, "conflict"),
    (AdapterFileError, 400, "invalid_adapter"),
    (ConfigError, 400, "invalid_request"),
    (LorakitError, 400, "invalid_request"),
]


class ApiError(Exception):
    """An HTTP error answered with OpenAI's error body; ``param`` names the offending field."""

    def __init__(self, status: int, message: str, code: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


def error_response(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    """``{"error": {"message", "type", "param", "code"}}``; 429 and 503 carry ``Retry-After``."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status in (429, 503) else None
    return JSONResponse(
        {"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status, headers=headers
    )


def from_lorakit(err: Exception) -> ApiError:
    for kind, status, code in _STATUS:
        if isinstance(err, kind):
            return ApiError(status, str(err), code, "model" if status == 404 else None)
    return ApiError(500, f"internal error: {type(err).__name__}: {err}", "internal_error")


def check_text(value: str, where: str) -> None:
    """400 if ``value`` holds a NUL byte or a lone surrogate (not encodable as UTF-8)."""
    if "\x00" in value:
        raise ApiError(
            400, f"{where} holds a NUL byte (\\u0000), which lorakit does not accept", "invalid_unicode", where
        )
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ApiError(
            400,
            f"{where} holds invalid Unicode ({err.reason} at character {err.start}): send valid UTF-8 text",
            "invalid_unicode",
            where,
        ) from None


def _check_strings(value, path: str) -> None:
    if isinstance(value, str):
        check_text(value, path or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_text(key, f"{path}.{key}" if path else "a key of the body")
            _check_strings(item, f"{path}.{key}" if path else key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{path}.{i}")


async def read_body(request: Request, model: type[BaseModel], limit: int = MAX_BODY_BYTES) -> BaseModel:
    """The request body parsed into ``model``; raises :class:`ApiError` (413 over ``limit`` bytes, else 400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"request body of {int(declared):,} bytes is over the limit of {limit:,} bytes", "body_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit:,} bytes", "body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ApiError(
            400, f"request body is not UTF-8 (byte {err.start}): send UTF-8 JSON", "invalid_unicode"
        ) from None
    except ValueError as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", "invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object", "invalid_request")
    _check_strings(data, "")
    if isinstance(data.get("model"), str):
        request.state.model = data["model"]  # labels a rejection in /metrics
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise validation_error(err, model) from None


def validation_error(err: ValidationError, model: type[BaseModel]) -> ApiError:
    """A 400 naming the first offending field (``unsupported_parameter`` for undeclared or refused fields)."""
    first = err.errors()[0]
    kind = first.get("type", "")
    field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
    if kind in ("extra_forbidden", "unsupported_parameter"):
        return ApiError(
            400,
            f"parameter {field!r} is not supported by lorakit (see the README's serving section)",
            "unsupported_parameter",
            field,
        )
    if field is None and kind in model.model_fields:  # a check across fields, named after the field it refuses
        return ApiError(400, f"{kind}: {first['msg']}", "invalid_request", kind)
    return ApiError(400, f"field {field or 'body'}: {first['msg']}", "invalid_request", field)
