"""``lorakit serve`` as a real process: a local base directory, two adapters, the openai client."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import openai

from tests.serve.support import free_port, save_adapters, tiny_base, tokenizer


def test_lorakit_serve_answers_the_openai_client_for_several_adapters(tmp_path):
    base_dir = tmp_path / "base"
    tiny_base().save_pretrained(base_dir)
    tokenizer().save_pretrained(base_dir)
    adapters = save_adapters(tmp_path / "adapters", {"support": 4, "legal": 8})
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "lorakit.cli",
        "serve",
        "--base",
        str(base_dir),
        "--port",
        str(port),
        "--adapter",
        f"support={adapters['support']}",
        "--adapter",
        f"legal={adapters['legal']}",
        "--adapter-root",
        str(tmp_path / "adapters"),
        "--max-resident",
        "2",
        "--threads",
        "1",
    ]
    env = {**os.environ, "LORAKIT_ADMIN_TOKEN": "t0ken"}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, server.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        models = {m.id for m in client.models.list().data}
        assert {str(base_dir), "support", "legal"} <= models
        texts = {
            name: client.completions.create(model=name, prompt="Hello", max_tokens=5, temperature=0).choices[0].text
            for name in ("support", "legal", str(base_dir))
        }
        assert len(set(texts.values())) == 3
        unauthorised = httpx.delete(f"http://127.0.0.1:{port}/v1/adapters/legal")
        assert unauthorised.status_code == 401
        deleted = httpx.delete(f"http://127.0.0.1:{port}/v1/adapters/legal", headers={"Authorization": "Bearer t0ken"})
        assert deleted.status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_rejects_a_malformed_adapter_option():
    result = subprocess.run(
        [sys.executable, "-m", "lorakit.cli", "serve", "--adapter", "no-equals-sign"], capture_output=True, text=True
    )
    assert result.returncode == 2 and "expected NAME=PATH" in result.stderr
