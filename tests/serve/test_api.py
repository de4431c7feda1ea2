"""The HTTP API through a real uvicorn server on a loopback port, driven by the official openai client."""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx
import openai
import pytest

import lorakit as lk
from lorakit.serve.api import create_app
from tests.serve.support import Server, engine_with, save_adapters

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("root")
    save_adapters(root, {"a": 4, "b": 4, "c": 8})
    save_adapters(root, {"late": 4}, seed=5)
    save_adapters(root / "other", {"foreign": 4}, base_seed=1)
    return root


@pytest.fixture(scope="module")
def server(root):
    engine = engine_with({name: root / name for name in ("a", "b", "c")}, max_prompt_tokens=64)
    app = create_app(engine, admin_token=TOKEN, adapter_root=root)
    with Server(app) as url:
        yield url, engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)


def _admin(url: str, method: str, path: str, token: str | None = TOKEN, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.request(method, url + path, headers=headers, timeout=60, **kwargs)


def test_completions_for_several_adapters_match_the_engine(server, client):
    url, engine = server
    for model in ["a", "b", "c", "tiny"]:
        reply = client.completions.create(model=model, prompt="Once upon a time", max_tokens=6, temperature=0)
        expected = engine.generate("Once upon a time", model, max_tokens=6, temperature=0)
        assert reply.choices[0].text == expected.text and reply.choices[0].finish_reason == expected.finish_reason
        assert reply.usage.prompt_tokens == expected.prompt_tokens and reply.model == model


def test_chat_and_its_stream_agree(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model="b", messages=messages, max_tokens=8, temperature=0)
    stream = client.chat.completions.create(model="b", messages=messages, max_tokens=8, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_stream_concatenates_to_the_completion(client):
    whole = client.completions.create(model="a", prompt="The cat", max_tokens=10, temperature=0)
    pieces = [
        c.choices[0].text
        for c in client.completions.create(model="a", prompt="The cat", max_tokens=10, temperature=0, stream=True)
    ]
    assert "".join(pieces) == whole.choices[0].text and len(pieces) > 2


def test_models_lists_the_base_and_each_adapter_with_its_parent(client):
    models = {m.id: m for m in client.models.list().data}
    assert {"tiny", "a", "b", "c"} <= set(models)
    assert models["a"].model_extra["parent"] == "tiny" and models["tiny"].model_extra["parent"] is None


def test_unknown_model_is_404_with_an_openai_error_body(client):
    with pytest.raises(openai.NotFoundError) as err:
        client.completions.create(model="nope", prompt="x", max_tokens=2)
    assert err.value.body["code"] == "model_not_found" and "nope" in err.value.body["message"]


def test_malformed_json_and_bad_fields_are_400_naming_the_field(server, client):
    url, _ = server
    raw = httpx.post(
        url + "/v1/completions", content=b'{"model": "a", "prompt": ', headers={"content-type": "application/json"}
    )
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_json"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="a", prompt="x", temperature=5)
    assert err.value.body["param"] == "temperature"
    missing = httpx.post(url + "/v1/chat/completions", json={"model": "a"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    wrong_role = httpx.post(
        url + "/v1/chat/completions", json={"model": "a", "messages": [{"role": "robot", "content": "x"}]}
    )
    assert wrong_role.status_code == 400 and wrong_role.json()["error"]["param"] == "messages.0.role"


def test_a_prompt_over_the_limit_is_400_with_the_limit(client):
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model="a", prompt=list(range(100, 165)), max_tokens=2)
    assert "limit is 64" in err.value.body["message"]


def test_admin_endpoints_need_the_bearer_token(server):
    url, _ = server
    assert _admin(url, "POST", "/v1/adapters", token=None, json={"name": "late", "path": "late"}).status_code == 401
    assert _admin(url, "POST", "/v1/adapters", token="wrong", json={"name": "late", "path": "late"}).status_code == 401
    assert _admin(url, "DELETE", "/v1/adapters/a", token="wrong").status_code == 401


def test_admin_refuses_paths_outside_the_root(server, root, tmp_path):
    url, _ = server
    outside = tmp_path / "outside"
    shutil.copytree(root / "late", outside)
    os.symlink(outside, root / "escape")
    try:
        for path in [str(outside), "../outside", f"{root}/../{root.name}/../x", "escape"]:
            reply = _admin(url, "POST", "/v1/adapters", json={"name": "sneaky", "path": path})
            assert reply.status_code == 403 and reply.json()["error"]["param"] == "path", path
    finally:
        os.unlink(root / "escape")
    assert _admin(url, "POST", "/v1/adapters", json={"name": "bad.name", "path": "late"}).status_code == 400


def test_admin_load_serve_and_unload_without_restart(server, client):
    url, _ = server
    reply = _admin(url, "POST", "/v1/adapters", json={"name": "late", "path": "late"})
    assert reply.status_code == 201, reply.text
    assert client.completions.create(model="late", prompt="Hello", max_tokens=3, temperature=0).choices[0].text
    assert _admin(url, "POST", "/v1/adapters", json={"name": "late", "path": "late"}).status_code == 409
    assert _admin(url, "DELETE", "/v1/adapters/late").status_code == 200
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="late", prompt="Hello", max_tokens=3)
    assert _admin(url, "DELETE", "/v1/adapters/late").status_code == 404


def test_admin_foreign_adapter_is_409_with_both_fingerprints_and_corrupt_is_400(server, client, root):
    url, engine = server
    foreign = _admin(url, "POST", "/v1/adapters", json={"name": "foreign", "path": "other/foreign"})
    assert foreign.status_code == 409
    message = foreign.json()["error"]["message"]
    assert message.count("fingerprint") == 2 and lk.bases.fingerprint(engine.model)[:12] in message
    broken = root / "broken"
    shutil.copytree(root / "late", broken, dirs_exist_ok=True)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00" * 40)
    corrupt = _admin(url, "POST", "/v1/adapters", json={"name": "broken", "path": "broken"})
    assert corrupt.status_code == 400 and corrupt.json()["error"]["code"] == "invalid_adapter"
    assert client.completions.create(model="a", prompt="Still here", max_tokens=2).choices[0].text is not None


def test_metrics_and_health(server, client):
    url, _ = server
    client.completions.create(model="c", prompt="Count", max_tokens=2)
    text = httpx.get(url + "/metrics").text
    assert 'lorakit_requests_total{adapter="c",outcome="length"}' in text
    for name in [
        "lorakit_request_latency_seconds_bucket",
        "lorakit_time_to_first_token_seconds_bucket",
        "lorakit_completion_tokens_total",
        "lorakit_adapter_cache_total",
        "lorakit_resident_adapters",
        "lorakit_resident_adapter_bytes",
    ]:
        assert name in text
    health = httpx.get(url + "/health").json()
    assert health["status"] == "ok" and health["base"] == "tiny" and health["resident_adapters"] >= 3


def test_a_full_queue_is_429_and_a_vanished_stream_is_dropped(root):
    engine = engine_with({"a": root / "a"}, max_batch=1, max_queue=1)
    with Server(create_app(engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        stream = client.completions.create(model="a", prompt="Go", max_tokens=200, temperature=0, stream=True)
        next(iter(stream))  # running: it holds the only row
        waiting = threading.Thread(target=lambda: client.completions.create(model="a", prompt="Wait", max_tokens=2))
        waiting.start()
        deadline = time.monotonic() + 30
        while engine.scheduler.queued == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError) as limited:
            client.completions.create(model="a", prompt="One too many", max_tokens=2)
        assert limited.value.response.headers["retry-after"] == "1"
        assert limited.value.body["code"] == "rate_limit_exceeded"
        stream.close()  # the client goes away mid-stream
        waiting.join(timeout=60)
        assert not waiting.is_alive()
        text = httpx.get(url + "/metrics").text
        assert 'lorakit_requests_total{adapter="a",outcome="cancelled"} 1.0' in text
        assert 'lorakit_requests_total{adapter="a",outcome="length"} 1.0' in text
