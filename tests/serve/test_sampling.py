"""Logit processing and sampling rules, exactly: penalties, bias, min_tokens, truncation, log-probabilities,
stop token ids (no model needed for the rules; a tiny engine for the stops)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from lorakit.serve import SamplingParams
from lorakit.serve.sampling import next_tokens, process
from tests.serve.support import engine_with, save_adapters

INF = float("-inf")


def _row(prompt=(1,), tokens=(3, 3, 5), **params):
    p = SamplingParams(**params)
    return SimpleNamespace(params=p, generator=p.generator(), prompt=list(prompt), tokens=list(tokens), constraint=None)


@pytest.mark.parametrize(
    "params,logits,expected",
    [
        ({"presence_penalty": 0.5}, [0.0] * 8, [0, 0, 0, -0.5, 0, -0.5, 0, 0]),
        ({"frequency_penalty": 0.5}, [0.0] * 8, [0, 0, 0, -1.0, 0, -0.5, 0, 0]),
        ({"frequency_penalty": 0.5, "presence_penalty": 1.0}, [0.0] * 8, [0, 0, 0, -2.0, 0, -1.5, 0, 0]),
        (
            {"repetition_penalty": 2.0},
            [1, 1, 1, -1, 1, 4, 1, 1],
            [1, 0.5, 1, -2, 1, 2, 1, 1],
        ),  # seen: prompt 1, output 3, 5
        ({"logit_bias": {2: 5.0, 7: -100.0}}, [0.0] * 8, [0, 0, 5, 0, 0, 0, 0, -100]),
        (
            {"min_tokens": 4, "stop_token_ids": [6]},
            [0.0] * 8,
            [0, 0, 0, 0, 0, 0, INF, INF],
        ),  # eos 7 and stop id 6 banned
        ({"min_tokens": 3, "stop_token_ids": [6]}, [0.0] * 8, [0.0] * 8),  # three tokens exist: allowed again
        ({"min_tokens": 4, "ignore_eos": True}, [0.0] * 8, [0.0] * 8),
    ],
)
def test_processing_rules(params, logits, expected):
    out = process(torch.tensor(logits), _row(**params), eos_ids={7})
    assert out.tolist() == expected


@pytest.mark.parametrize(
    "params,allowed",
    [
        ({"top_p": 0.7}, {0, 1}),
        ({"top_k": 2}, {0, 1}),
        ({"top_k": 1}, {0}),
        ({"min_p": 0.5}, {0, 1}),
        ({"min_p": 0.25}, {0, 1, 2}),
        ({"top_k": 3, "top_p": 0.9}, {0, 1, 2}),
        ({}, {0, 1, 2, 3}),
    ],
)
def test_truncation_keeps_exactly_the_allowed_tokens(params, allowed):
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    row = _row(temperature=1.0, seed=0, **params)
    assert {next_tokens(logits, [row])[0][0] for _ in range(400)} == allowed


def test_logprobs_are_the_log_softmax_of_the_processed_scaled_logits():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    row = _row(temperature=0.5, seed=1, logprobs=2, logit_bias={3: 4.0}, tokens=())
    token, entry = next_tokens(logits, [row])[0]
    expected = torch.log_softmax((logits[0] + torch.tensor([0, 0, 0, 4.0])) / 0.5, dim=-1)
    assert entry.token == token and math.isclose(entry.logprob, float(expected[token]), abs_tol=1e-6)
    assert [t for t, _ in entry.top] == expected.topk(2).indices.tolist()


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("sampling")
    save_adapters(root, {"a": 4})
    return engine_with({"a": root / "a"})


def test_stop_token_ids_end_before_the_token_and_min_tokens_delay_eos(engine):
    greedy = engine.generate("Once upon a time", "a", max_tokens=8, temperature=0)
    at = next(i for i in range(1, 8) if greedy.tokens[i] not in greedy.tokens[:i])
    stopped = engine.generate("Once upon a time", "a", max_tokens=8, temperature=0, stop_token_ids=[greedy.tokens[at]])
    assert stopped.tokens == greedy.tokens[: at + 1] and stopped.finish_reason == "stop"
    assert stopped.text == engine.tokenizer.decode(greedy.tokens[:at])
    eos = min(engine.eos_ids)
    assert len(engine.generate("Hi", "a", max_tokens=8, temperature=0, logit_bias={eos: 100.0}).tokens) == 1
    delayed = engine.generate("Hi", "a", max_tokens=8, temperature=0, logit_bias={eos: 100.0}, min_tokens=3)
    assert len(delayed.tokens) == 4 and delayed.tokens[-1] == eos and delayed.finish_reason == "stop"
