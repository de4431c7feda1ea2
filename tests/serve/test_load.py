"""A bounded concurrent load through the real server: 200 requests over 20 adapters, 16 clients at once."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from lorakit.serve.api import create_app
from tests.serve.support import Server, engine_with, save_adapters

REQUESTS, ADAPTERS, CLIENTS, MAX_RESIDENT = 200, 20, 16, 8


def test_two_hundred_requests_over_twenty_adapters_complete_within_the_cache_bound(tmp_path):
    ranks = {f"ad{i}": (4, 8, 2)[i % 3] for i in range(ADAPTERS)}
    paths = save_adapters(tmp_path, ranks)
    engine = engine_with({}, max_resident=MAX_RESIDENT, max_batch=8, max_queue=REQUESTS)
    for name, path in paths.items():
        engine.cache.register(name, path, load=False)
    peak = {"resident": 0}
    done = threading.Event()

    def watch(url: str) -> None:
        while not done.is_set():
            peak["resident"] = max(peak["resident"], httpx.get(url + "/health").json()["resident_adapters"])
            done.wait(0.01)

    with Server(create_app(engine)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        watcher = threading.Thread(target=watch, args=(url,))
        watcher.start()

        models = [f"ad{i % ADAPTERS}" for i in range(REQUESTS - 10)] + ["tiny"] * 10
        random.Random(0).shuffle(models)

        def one(i: int) -> tuple[str, str]:
            model = models[i]
            reply = client.completions.create(model=model, prompt=f"Request {i}:", max_tokens=4, temperature=0)
            return model, reply.choices[0].finish_reason

        try:
            with ThreadPoolExecutor(CLIENTS) as pool:
                results = list(pool.map(one, range(REQUESTS)))
        finally:
            done.set()
            watcher.join()
        metrics = httpx.get(url + "/metrics").text
    assert len(results) == REQUESTS and all(reason in ("length", "stop") for _, reason in results)
    assert len({model for model, _ in results}) == ADAPTERS + 1
    assert peak["resident"] <= MAX_RESIDENT and len(engine.cache.resident) <= MAX_RESIDENT
    assert 'outcome="error"' not in metrics and 'lorakit_adapter_cache_total{event="evict"}' in metrics
