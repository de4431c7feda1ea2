"""Limits that protect a server, through a real uvicorn server: context and body limits, invalid Unicode and
NUL bytes anywhere, disconnecting clients, API keys, 429 with Retry-After, rejections in /metrics, and vLLM's
runtime adapter endpoints."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import openai
import pytest

from lorakit.serve.api import create_app
from tests.serve.support import Server, engine_with, save_adapters

ADMIN, KEY = "admin-token", "api-key"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("limits")
    save_adapters(root, {"a": 4, "late": 4})
    return root


@pytest.fixture(scope="module")
def server(root):
    engine = engine_with({"a": root / "a"})
    app = create_app(engine, admin_token=ADMIN, adapter_root=root, api_key=KEY, max_body_bytes=8192)
    with Server(app) as url:
        yield url, engine


def _post(url: str, path: str, body, token: str | None = KEY, timeout: float = 60) -> httpx.Response:
    headers = {"content-type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers=headers, timeout=timeout)


def _metric(url: str, prefix: str) -> float:
    lines = httpx.get(url + "/metrics").text.splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))


def test_max_tokens_beyond_the_context_is_400_before_any_work(server):
    url, engine = server
    reply = _post(url, "/v1/completions", {"model": "a", "prompt": "Hello", "max_tokens": 10**9})
    assert reply.status_code == 400 and f"context of {engine.max_context}" in reply.json()["error"]["message"]
    ok = _post(url, "/v1/completions", {"model": "a", "prompt": [5] * 200, "max_tokens": engine.max_context - 200})
    assert ok.status_code == 200


def test_a_body_over_the_limit_is_413(server):
    url, _ = server
    reply = _post(url, "/v1/completions", {"model": "a", "prompt": "x" * 10000, "max_tokens": 2})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "body_too_large"
    chunked = httpx.post(
        url + "/v1/completions",
        content=iter([b'{"model": "a", "prompt": "', b"y" * 9000, b'"}']),
        headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"},
        timeout=60,
    )
    assert chunked.status_code == 413


@pytest.mark.parametrize(
    "path,raw",
    [
        ("/v1/completions", b'{"model": "a", "prompt": "abc \\ud800 def", "max_tokens": 2}'),
        ("/v1/completions", b'{"model": "a", "prompt": ["ok", "\\udfff"], "max_tokens": 2}'),
        ("/v1/completions", b'{"model": "a", "prompt": "x", "stop": ["\\ud83d"], "max_tokens": 2}'),
        ("/v1/completions", b'{"model": "a\\u0000", "prompt": "x", "max_tokens": 2}'),
        ("/v1/completions", b'{"model": "a", "prompt": "nul \\u0000 here", "max_tokens": 2}'),
        ("/v1/completions", b'{"model": "a", "prompt": "x", "\\ud800": 1}'),
        ("/v1/completions", b'{"model": "a", "prompt": "bad \xff\xfe bytes"}'),
        ("/v1/chat/completions", b'{"model": "a", "messages": [{"role": "user", "content": "abc \\udfff"}]}'),
        (
            "/v1/chat/completions",
            b'{"model": "a", "messages": [{"role": "user", "content": [{"type": "text", "text": "\\u0000"}]}]}',
        ),
    ],
)
def test_invalid_unicode_and_nul_bytes_are_400_and_the_server_goes_on(server, path, raw):
    url, _ = server
    reply = _post(url, path, raw)
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "invalid_unicode", reply.text
    assert _post(url, "/v1/completions", {"model": "a", "prompt": "Hello", "max_tokens": 2}).status_code == 200


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("POST", "/v1/adapters", {"name": "x", "path": "late\u0000/../late"}),
        ("POST", "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "late\u0000"}),
        ("POST", "/v1/unload_lora_adapter", {"lora_name": "a\u0000"}),
        ("DELETE", "/v1/adapters/a%00b", None),
        ("GET", "/v1/models/a%00", None),
    ],
)
def test_nul_bytes_in_admin_paths_and_names_are_400(server, method, path, body):
    url, _ = server
    token = KEY if path.startswith("/v1/models") else ADMIN
    reply = httpx.request(method, url + path, json=body, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert reply.status_code == 400 and "NUL" in reply.json()["error"]["message"], reply.text


def test_api_key_guards_inference_routes_and_errors_use_openai_bodies(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).completions.create(model="a", prompt="x")
    assert httpx.get(url + "/v1/models").status_code == 401
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert client.completions.create(model="a", prompt="x", max_tokens=2).choices[0].finish_reason == "length"
    assert httpx.get(url + "/health").status_code == 200
    missing = httpx.get(url + "/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["message"]
    wrong_method = httpx.get(url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["message"]


def test_vllm_adapter_endpoints_round_trip_with_the_admin_token_and_root(server, root, tmp_path):
    url, _ = server
    body = {"lora_name": "late", "lora_path": str(root / "late")}
    assert _post(url, "/v1/load_lora_adapter", body, token=None).status_code == 401
    assert (
        _post(url, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(tmp_path)}, token=ADMIN).status_code
        == 403
    )
    loaded = _post(url, "/v1/load_lora_adapter", body, token=ADMIN)
    assert loaded.status_code == 200 and "late" in loaded.text
    client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert "late" in {m.id for m in client.models.list().data}
    assert (
        client.completions.create(model="late", prompt="Hi", max_tokens=2, temperature=0).usage.completion_tokens == 2
    )
    assert _post(url, "/v1/unload_lora_adapter", {"lora_name": "late"}, token=ADMIN).status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="late", prompt="Hi", max_tokens=2)
    assert _post(url, "/v1/unload_lora_adapter", {"lora_name": "late"}, token=ADMIN).status_code == 404


def test_rejections_are_counted_per_adapter_and_inter_token_latency_is_recorded(server):
    url, _ = server
    before = _metric(url, 'lorakit_rejected_requests_total{adapter="a",status="400"}')
    unknown = _metric(url, 'lorakit_rejected_requests_total{adapter="unknown",status="404"}')
    assert _post(url, "/v1/completions", {"model": "a", "prompt": "x", "temperature": 9}).status_code == 400
    assert _post(url, "/v1/completions", {"model": "nobody", "prompt": "x"}).status_code == 404
    assert _metric(url, 'lorakit_rejected_requests_total{adapter="a",status="400"}') == before + 1
    assert _metric(url, 'lorakit_rejected_requests_total{adapter="unknown",status="404"}') == unknown + 1
    count = _metric(url, 'lorakit_inter_token_latency_seconds_count{adapter="a"}')
    _post(url, "/v1/completions", {"model": "a", "prompt": "x", "max_tokens": 5, "ignore_eos": True})
    assert _metric(url, 'lorakit_inter_token_latency_seconds_count{adapter="a"}') == count + 4


def test_tokenisation_runs_off_the_event_loop(server):
    url, engine = server
    threads = []
    encode = engine.encode
    engine.encode = lambda prompt: threads.append(threading.current_thread().name) or encode(prompt)
    try:
        assert _post(url, "/v1/completions", {"model": "a", "prompt": "Hello", "max_tokens": 1}).status_code == 200
    finally:
        del engine.encode
    assert threads and all(name.startswith("AnyIO worker thread") for name in threads), threads  # the thread pool


def test_a_non_streaming_client_that_disconnects_is_cancelled(root):
    engine = engine_with({"a": root / "a"}, max_batch=1)
    with Server(create_app(engine)) as url:
        before = _metric(url, 'lorakit_requests_total{adapter="a",outcome="cancelled"}')
        body = json.dumps({"model": "a", "prompt": "Go", "max_tokens": 250, "ignore_eos": True}).encode()
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            while not engine.scheduler.running:
                time.sleep(0.01)
        deadline = time.monotonic() + 120
        while (
            _metric(url, 'lorakit_requests_total{adapter="a",outcome="cancelled"}') == before
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert _metric(url, 'lorakit_requests_total{adapter="a",outcome="cancelled"}') == before + 1
        assert _metric(url, 'lorakit_requests_total{adapter="a",outcome="length"}') == 0
