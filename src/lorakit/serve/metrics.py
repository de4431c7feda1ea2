"""Prometheus metrics of a server: requests, rejections, tokens and latencies per adapter; the adapter cache;
the batch. Rejections are labelled with the adapter asked for, or ``unknown`` when the server does not know it
(so arbitrary names cannot grow the label set)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    """One registry per server (so several servers in one process never collide)."""

    def __init__(self, base_name: str = "base") -> None:
        self.base_name = base_name
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "lorakit_requests", "Finished requests by adapter and outcome", ["adapter", "outcome"], registry=r
        )
        self.prompt_tokens = Counter("lorakit_prompt_tokens", "Prompt tokens processed", ["adapter"], registry=r)
        self.completion_tokens = Counter("lorakit_completion_tokens", "Tokens generated", ["adapter"], registry=r)
        self.latency = Histogram(
            "lorakit_request_latency_seconds",
            "Time from arrival to the last token",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "lorakit_time_to_first_token_seconds",
            "Time from arrival to the first token",
            ["adapter"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.inter_token_latency = Histogram(
            "lorakit_inter_token_latency_seconds",
            "Time between consecutive tokens of a request",
            ["adapter"],
            buckets=_INTER_TOKEN_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "lorakit_rejected_requests",
            "Requests refused before generating, by adapter and HTTP status",
            ["adapter", "status"],
            registry=r,
        )
        self.cache = Counter(
            "lorakit_adapter_cache", "Adapter cache events (hit, miss, load, evict)", ["event"], registry=r
        )
        self.resident = Gauge("lorakit_resident_adapters", "Adapters resident in the model", registry=r)
        self.resident_bytes = Gauge("lorakit_resident_adapter_bytes", "Bytes of resident adapter factors", registry=r)
        self.queued = Gauge("lorakit_queued_requests", "Requests waiting to join the batch", registry=r)
        self.running = Gauge("lorakit_running_requests", "Requests in the running batch", registry=r)

    def _label(self, adapter: str | None) -> str:
        return adapter if adapter is not None else self.base_name

    def finished(self, request) -> None:
        label = self._label(request.adapter)
        self.requests.labels(label, request.finish_reason).inc()
        self.prompt_tokens.labels(label).inc(len(request.prompt))
        self.completion_tokens.labels(label).inc(len(request.tokens))
        now = time.perf_counter()
        self.latency.labels(label).observe(now - request.created)
        if request.first_token_at is not None:
            self.first_token.labels(label).observe(request.first_token_at - request.created)

    def inter_token(self, request, seconds: float) -> None:
        self.inter_token_latency.labels(self._label(request.adapter)).observe(seconds)

    def reject(self, adapter: str, status: int) -> None:
        """Count a refused request (4xx or 429) for ``adapter`` (a known name, the base's, or ``unknown``)."""
        self.rejected.labels(adapter, str(status)).inc()

    def failed(self, request, err: Exception) -> None:
        self.requests.labels(self._label(request.adapter), "error").inc()

    def cache_event(self, event: str, name: str) -> None:
        self.cache.labels(event).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
