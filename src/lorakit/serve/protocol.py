"""Request bodies of the OpenAI-compatible API: every field lorakit honours, and the ones it refuses by name.

A field that is not declared here is a 400 naming it (``unsupported_parameter``); a declared but refused field
(``suffix``, ``tools``, ``functions`` …) is accepted only when empty (``null``, ``[]``, ``tool_choice: "none"``),
as clients send them by default. ``user`` is accepted and has no effect (OpenAI uses it for abuse monitoring).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from lorakit.serve.sampling import SamplingParams

ADAPTER_NAME = r"^[A-Za-z0-9][A-Za-z0-9_\-]{0,63}$"
MAX_N = 16  # choices per prompt (n, best_of)
MAX_TOP_LOGPROBS = 20


def _refuse_unless_empty(value: Any, empty: tuple = (None, [], {})) -> Any:
    if value not in empty:
        raise PydanticCustomError("unsupported_parameter", "is not supported by lorakit")
    return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, description="an adapter's name, or the base model's name")
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    top_k: int = Field(default=0, ge=-1)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    presence_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(default=0.0, ge=-2.0, le=2.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    logit_bias: dict[int, float] | None = None
    min_tokens: int = Field(default=0, ge=0)
    response_format: dict | None = None
    ignore_eos: bool = False  # an extension (vLLM has it too): always generate max_tokens
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4:
            raise ValueError("at most 4 stop strings")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value):
        for token, bias in (value or {}).items():
            if not -100 <= bias <= 100:
                raise ValueError(f"bias {bias} of token {token} lies outside [-100, 100]")
            if token < 0:
                raise ValueError(f"token id {token} is negative")
        return value or {}

    @model_validator(mode="after")
    def _consistent(self):
        if self.stream_options is not None and not self.stream:
            raise PydanticCustomError("stream_options", "stream_options is only allowed with stream: true")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise PydanticCustomError("min_tokens", "min_tokens is larger than max_tokens")
        return self

    def sampling(self, max_tokens: int, logprobs: int | None, grammar: str | None, seed: int | None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=max(self.top_k, 0),
            min_p=self.min_p,
            seed=seed,
            stop=list(self.stop or []),
            stop_token_ids=list(self.stop_token_ids or []),
            ignore_eos=self.ignore_eos,
            min_tokens=self.min_tokens,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            repetition_penalty=self.repetition_penalty,
            logit_bias=dict(self.logit_bias or {}),
            logprobs=logprobs,
            grammar=grammar,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``: ``prompt`` is a string, token ids, or a list of either (one choice set each)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = None

    _suffix = field_validator("suffix")(classmethod(lambda cls, v: _refuse_unless_empty(v, (None, ""))))

    @field_validator("prompt")
    @classmethod
    def _prompts(cls, value):
        if isinstance(value, list) and (not value or any(isinstance(p, list) and not p for p in value)):
            raise ValueError("prompt is empty")
        return value

    @model_validator(mode="after")
    def _best_of(self):
        if self.best_of is not None and self.best_of < self.n:
            raise PydanticCustomError("best_of", "best_of must be at least n")
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise PydanticCustomError("best_of", "best_of larger than n cannot be streamed")
        if self.echo and self.logprobs is not None:
            raise PydanticCustomError(
                "echo", "echo with logprobs (log-probabilities of prompt tokens) is not supported"
            )
        return self

    @property
    def prompts(self) -> list[str | list[int]]:
        """The prompts, one per choice set."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: str


class Message(BaseModel):
    """A chat message; ``content`` is text or a list of text parts (joined). ``developer`` is ``system``."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None
    refusal: str | None = None
    tool_calls: list | None = None
    function_call: dict | None = None
    audio: dict | None = None
    annotations: list | None = None

    _empty = field_validator("name", "refusal", "tool_calls", "function_call", "audio")(
        classmethod(lambda cls, v: _refuse_unless_empty(v, (None, [], {})))
    )

    def template_dict(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(_Sampling):
    """``POST /v1/chat/completions``: messages go through the tokenizer's chat template."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: list | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool | None = None
    functions: list | None = None
    function_call: str | dict | None = None

    _tools = field_validator("tools", "functions")(classmethod(lambda cls, v: _refuse_unless_empty(v)))
    _choice = field_validator("tool_choice", "function_call")(
        classmethod(lambda cls, v: _refuse_unless_empty(v, (None, "none")))
    )

    @model_validator(mode="after")
    def _top(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise PydanticCustomError("top_logprobs", "top_logprobs needs logprobs: true")
        if self.max_completion_tokens is not None and self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens
        return self


class LoadAdapterRequest(BaseModel):
    """``POST /v1/adapters``: ``path`` under the server's adapter root, or a ``registry:name@version`` reference."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=ADAPTER_NAME)
    path: str = Field(min_length=1)


class LoadLoraRequest(BaseModel):
    """vLLM's ``POST /v1/load_lora_adapter``: ``lora_name`` and ``lora_path`` (same rules as above)."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(pattern=ADAPTER_NAME)
    lora_path: str = Field(min_length=1)
    load_inplace: bool = False

    _inplace = field_validator("load_inplace")(classmethod(lambda cls, v: _refuse_unless_empty(v, (False,))))


class UnloadLoraRequest(BaseModel):
    """vLLM's ``POST /v1/unload_lora_adapter``: ``lora_name`` (``lora_int_id`` is accepted and unused)."""

    model_config = ConfigDict(extra="forbid")

    lora_name: str = Field(min_length=1)
    lora_int_id: int | None = None
