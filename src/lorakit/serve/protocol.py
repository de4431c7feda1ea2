"""Request bodies of the OpenAI-compatible API (the fields lorakit honours; unknown fields are ignored)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lorakit.serve.sampling import SamplingParams

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, description="an adapter's name, or the base model's name")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    n: Literal[1] = 1
    ignore_eos: bool = False  # an extension (vLLM has it too): always generate max_tokens

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        return stops

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens or default_max_tokens, temperature=self.temperature,
                              top_p=self.top_p, seed=self.seed, stop=list(self.stop or []), ignore_eos=self.ignore_eos)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is a string, a list with one string, or token ids."""

    prompt: str | list[int] | list[str]

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value):
        if isinstance(value, list) and value and isinstance(value[0], str):
            if len(value) != 1:
                raise ValueError("one prompt per request")
            return value[0]
        if isinstance(value, list) and not value:
            raise ValueError("prompt is empty")
        return value


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``: messages go through the tokenizer's chat template."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def sampling(self, default_max_tokens: int) -> SamplingParams:
        params = super().sampling(default_max_tokens)
        if self.max_completion_tokens is not None and self.max_tokens is None:
            params.max_tokens = self.max_completion_tokens
        return params


class LoadAdapterRequest(BaseModel):
    """``POST /v1/adapters``: ``path`` under the server's adapter root, or a ``registry:name@version`` reference."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME)
    path: str = Field(min_length=1)
