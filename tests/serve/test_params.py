"""Every generation parameter of the OpenAI API through a real uvicorn server and the official openai client:
each changes the output the way OpenAI documents, matches the engine offline token for token, or is a 400
naming it."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import torch

import lorakit as lk
from lorakit.serve.api import create_app
from tests.serve.support import Server, engine_with, save_adapters, tiny_base, tokenizer

ATOL = 1e-4  # fp32 log-probabilities: batched server versus a merged model alone
PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("params")
    save_adapters(root, {"a": 4, "b": 8})
    return root


@pytest.fixture(scope="module")
def server(root):
    engine = engine_with({"a": root / "a", "b": root / "b"})
    with Server(create_app(engine)) as url:
        yield url, engine


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _offline(engine, prompt, adapter, **params):
    """The engine alone (inline, not through HTTP) with the same parameters."""
    return engine.generate(prompt, adapter, **params)


@pytest.mark.parametrize(
    "params",
    [
        {"presence_penalty": 1.5},
        {"frequency_penalty": 2.0},
        {"repetition_penalty": 1.3},
        {"top_k": 5, "temperature": 0.8, "seed": 3},
        {"min_p": 0.2, "temperature": 1.0, "seed": 4},
        {"top_p": 0.5, "temperature": 1.0, "seed": 5},
        {"logit_bias": {"28": 30.0}},
        {"min_tokens": 4},
        {"stop_token_ids": [28]},
    ],
    ids=lambda p: ",".join(p),
)
def test_each_parameter_served_equals_offline(server, client, params):
    _, engine = server
    params = {"temperature": 0, **params}
    reply = client.completions.create(
        model="a",
        prompt=PROMPT,
        max_tokens=8,
        temperature=params["temperature"],
        extra_body={k: v for k, v in params.items() if k != "temperature"},
    )
    offline = dict(params, logit_bias={int(k): v for k, v in params.get("logit_bias", {}).items()})
    expected = _offline(engine, PROMPT, "a", max_tokens=8, **offline)
    assert reply.choices[0].text == expected.text and reply.usage.completion_tokens == len(expected.tokens)
    assert reply.choices[0].finish_reason == expected.finish_reason


def test_logit_bias_minus_100_removes_a_token(server, client):
    _, engine = server
    greedy = _offline(engine, PROMPT, "a", max_tokens=6, temperature=0)
    banned = greedy.tokens[0]
    biased = _offline(engine, PROMPT, "a", max_tokens=6, temperature=0, logit_bias={banned: -100.0})
    reply = client.completions.create(
        model="a", prompt=PROMPT, max_tokens=6, temperature=0, logit_bias={str(banned): -100}
    )
    assert banned not in biased.tokens and reply.choices[0].text == biased.text != greedy.text


def test_top_k_1_and_min_p_1_sample_the_greedy_token(server, client):
    greedy = client.completions.create(model="b", prompt=PROMPT, max_tokens=6, temperature=0).choices[0].text
    for extra in ({"top_k": 1}, {"min_p": 1.0}):
        sampled = client.completions.create(model="b", prompt=PROMPT, max_tokens=6, temperature=1.5, extra_body=extra)
        assert sampled.choices[0].text == greedy, extra


def test_top_logprobs_equal_a_direct_log_softmax(server, client, root):
    _, engine = server
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = client.chat.completions.create(
        model="a", messages=messages, max_tokens=4, temperature=0, logprobs=True, top_logprobs=5
    )
    content = reply.choices[0].logprobs.content
    model = tiny_base()
    lk.load_adapter(model, root / "a", "ref")
    lk.merge(model, "ref")
    ids = engine.encode_chat(messages)
    tok = tokenizer()
    assert len(content) == reply.usage.completion_tokens
    with torch.no_grad():
        for entry in content:
            logprobs = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, -1], dim=-1)
            values, best = logprobs.topk(5)
            assert [t.token for t in entry.top_logprobs] == [tok.decode([i]) for i in best.tolist()]
            assert torch.allclose(torch.tensor([t.logprob for t in entry.top_logprobs]), values, atol=ATOL)
            assert entry.token == tok.decode([int(best[0])]) and abs(entry.logprob - float(values[0])) < ATOL
            ids.append(int(best[0]))


def test_completion_logprobs_form_and_stream_agree(client):
    whole = client.completions.create(model="b", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3)
    lp = whole.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == whole.usage.completion_tokens
    assert all(
        max(top.values()) == pytest.approx(chosen, abs=1e-6) for top, chosen in zip(lp.top_logprobs, lp.token_logprobs)
    )
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    chunks = list(
        client.completions.create(model="b", prompt=PROMPT, max_tokens=5, temperature=0, logprobs=3, stream=True)
    )
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.token_logprobs]
    assert streamed == lp.token_logprobs


def test_n_3_with_a_seed_gives_three_reproducible_choices(server, client):
    _, engine = server
    first, again = (
        client.completions.create(model="a", prompt=PROMPT, max_tokens=8, temperature=1.0, n=3, seed=11)
        for _ in range(2)
    )
    texts = [c.text for c in first.choices]
    assert texts == [c.text for c in again.choices] and [c.index for c in first.choices] == [0, 1, 2]
    assert len(set(texts)) > 1
    assert texts == [_offline(engine, PROMPT, "a", max_tokens=8, temperature=1.0, seed=11 + j).text for j in range(3)]
    chat = client.chat.completions.create(
        model="a", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, n=2, temperature=1.0, seed=2
    )
    assert [c.index for c in chat.choices] == [0, 1]


def test_best_of_keeps_the_most_likely_candidate(server, client):
    _, engine = server
    reply = client.completions.create(model="b", prompt=PROMPT, max_tokens=6, temperature=1.0, best_of=3, n=1, seed=21)
    candidates = [
        _offline(engine, PROMPT, "b", max_tokens=6, temperature=1.0, seed=21 + j, logprobs=0) for j in range(3)
    ]
    best = max(candidates, key=lambda c: sum(e.logprob for e in c.logprobs))
    assert len(reply.choices) == 1 and reply.choices[0].text == best.text and reply.choices[0].logprobs is None


def test_batched_prompts_echo_and_usage(server, client):
    _, engine = server
    prompts = ["The cat", "A dog"]
    reply = client.completions.create(model="a", prompt=prompts, max_tokens=4, temperature=0, n=2, echo=True)
    assert len(reply.choices) == 4
    for i, choice in enumerate(reply.choices):
        prompt = prompts[i // 2]
        assert choice.text == prompt + _offline(engine, prompt, "a", max_tokens=4, temperature=0).text
    ids = [engine.encode(p) for p in prompts]
    assert reply.usage.prompt_tokens == sum(len(i) for i in ids)
    tokens = client.completions.create(model="a", prompt=[ids[0], ids[1]], max_tokens=4, temperature=0)
    assert [c.text for c in tokens.choices] == [
        _offline(engine, p, "a", max_tokens=4, temperature=0).text for p in prompts
    ]


def test_stream_options_include_usage_ends_with_a_usage_chunk(client):
    messages = [{"role": "user", "content": "Count"}]
    whole = client.chat.completions.create(model="a", messages=messages, max_tokens=5, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="a",
            messages=messages,
            max_tokens=5,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    assert all(c.usage is None for c in chunks[:-1])


SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"type": "string", "enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 9},
    },
    "required": ["colour", "count"],
    "additionalProperties": False,
}


def test_response_format_json_schema_and_json_object_are_enforced(server, client):
    _, engine = server
    messages = [{"role": "user", "content": "Describe a ball as JSON."}]
    fmt = {"type": "json_schema", "json_schema": {"name": "ball", "schema": SCHEMA, "strict": True}}
    for seed in (1, 2):
        reply = client.chat.completions.create(
            model="a", messages=messages, max_tokens=40, temperature=1.0, seed=seed, response_format=fmt
        )
        jsonschema.validate(json.loads(reply.choices[0].message.content), SCHEMA)
        assert reply.choices[0].finish_reason == "stop"
    obj = client.completions.create(
        model="b", prompt="JSON:", max_tokens=60, temperature=0, extra_body={"response_format": {"type": "json_object"}}
    )
    offline = _offline(
        engine,
        "JSON:",
        "b",
        max_tokens=60,
        temperature=0,
        grammar=lk.serve.grammar.grammar_for({"type": "json_object"}),
    )
    assert obj.choices[0].text == offline.text and obj.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(obj.choices[0].text), dict)


@pytest.mark.parametrize(
    "route,body,param",
    [
        ("completions", {"prompt": "x", "suffix": "y"}, "suffix"),
        ("completions", {"prompt": "x", "frobnicate": 1}, "frobnicate"),
        ("completions", {"prompt": "x", "best_of": 1, "n": 2}, "best_of"),
        ("completions", {"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
        ("completions", {"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ("completions", {"prompt": "x", "logit_bias": {"5": 300}}, "logit_bias"),
        ("completions", {"prompt": "x", "response_format": {"type": "yaml"}}, "response_format"),
        ("completions", {"prompt": "x", "logit_bias": {"999999": 1}}, None),
        ("chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("chat/completions", {"tool_choice": "auto"}, "tool_choice"),
        ("chat/completions", {"functions": [{"name": "f"}]}, "functions"),
        ("chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("chat/completions", {"modalities": ["audio"]}, "modalities"),
        (
            "chat/completions",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
        ),
        ("chat/completions", {"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "messages.0.name"),
        (
            "chat/completions",
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"schema": {"type": "object", "properties": {"a": {"$ref": "#/missing"}}}},
                }
            },
            "response_format",
        ),
    ],
)
def test_refused_parameters_are_400_naming_them(server, route, body, param):
    import httpx

    url, _ = server
    full = {
        "model": "a",
        "max_tokens": 2,
        **({"messages": [{"role": "user", "content": "x"}]} if route.startswith("chat") else {}),
        **body,
    }
    reply = httpx.post(f"{url}/v1/{route}", json=full, timeout=60)
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["message"] and (param is None or error["param"] == param or error["param"].startswith(param)), error


def test_content_parts_and_developer_role_equal_plain_text(client):
    plain = (
        client.chat.completions.create(
            model="a",
            messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
            max_tokens=5,
            temperature=0,
        )
        .choices[0]
        .message.content
    )
    parts = (
        client.chat.completions.create(
            model="a",
            messages=[
                {"role": "developer", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "Hi there"}]},
            ],
            max_tokens=5,
            temperature=0,
        )
        .choices[0]
        .message.content
    )
    assert parts == plain


def test_models_retrieve_one_and_unknown_is_404(client):
    assert client.models.retrieve("a").model_extra["parent"] == "tiny"
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("nope")
    assert err.value.body["code"] == "model_not_found"
