"""Serve many adapters over one base model: per-row adapter batching, a bounded adapter cache, continuous
batching, and an OpenAI-compatible HTTP API (``lorakit.serve.api``, needs FastAPI)."""

from lorakit.serve.cache import AdapterCache, CacheFullError, UnknownAdapterError
from lorakit.serve.engine import Completion, Engine, PromptTooLongError
from lorakit.serve.sampling import SamplingParams
from lorakit.serve.scheduler import QueueFullError, Request

__all__ = [
    "Engine",
    "Completion",
    "AdapterCache",
    "SamplingParams",
    "Request",
    "CacheFullError",
    "UnknownAdapterError",
    "PromptTooLongError",
    "QueueFullError",
]
