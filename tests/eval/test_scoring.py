"""Likelihood scores (multiple choice, reference loss, text perplexity) equal direct log-likelihood computations."""

from __future__ import annotations

import math

import pytest
import torch

import lorakit as lk
from lorakit.eval.choice import choice_logprobs, predicted_choices
from lorakit.eval.data import EvalRow
from lorakit.eval.scoring import reference_likelihood, text_likelihood
from lorakit.eval.spec import TaskSpec
from lorakit.eval.task import plan_task, score_likelihoods
from tests.helpers import randomize_adapter, tiny_llama

QUESTIONS = [
    "What is the capital of France?",
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many legs does a spider have?"}],
]
CHOICES = [["Paris", "Berlin", "The city of Madrid"], ["Six", "Eight"]]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(lk.bases.resolve("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def model():
    m = tiny_llama(vocab=49152, hidden=32, seed=4)
    lk.inject(m, lk.LoraConfig(r=4, alpha=8, targets="all-linear"), name="a")
    randomize_adapter(m, "a", scale=0.2)
    return m


def _direct_logprob(model, context_ids: list[int], continuation_ids: list[int]) -> float:
    """Σ log p(continuation | context) from one unpadded forward pass, log-softmax in fp64."""
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)  # (T, V)
    return sum(float(logp[len(context_ids) + k - 1, token]) for k, token in enumerate(continuation_ids))


def _chat_ids(tokenizer, prompt) -> list[int]:
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_choice_scores_equal_direct_log_likelihood(model, tokenizer):
    scores = choice_logprobs(model, tokenizer, QUESTIONS, CHOICES, batch_size=2)  # padded batches of unequal length
    for question, options, row in zip(QUESTIONS, CHOICES, scores):
        direct = [
            _direct_logprob(model, _chat_ids(tokenizer, question), tokenizer(o, add_special_tokens=False)["input_ids"])
            for o in options
        ]
        assert row == pytest.approx(direct, abs=2e-4)
        assert predicted_choices([row]) == [max(range(len(direct)), key=direct.__getitem__)]


def test_choice_accuracy_in_task_metrics_counts_argmax_hits(model, tokenizer):
    scores = choice_logprobs(model, tokenizer, QUESTIONS, CHOICES)
    picks = predicted_choices(scores)
    rows = [
        EvalRow(where=f"f:{i}", prompt=q, choices=c, answer=picks[i] if i == 0 else 1 - picks[i])
        for i, (q, c) in enumerate(zip(QUESTIONS, CHOICES))
    ]
    spec = TaskSpec()
    assert score_likelihoods(plan_task(rows, spec), spec, model, tokenizer) == {"choice_accuracy": 0.5}


def test_predicted_choice_takes_the_first_on_ties():
    assert predicted_choices([[-1.0, -1.0, -2.0], [-3.0, -0.5, -0.5]]) == [0, 1]


def test_reference_loss_equals_direct_computation(model, tokenizer):
    prompts, references = ["Say hi.", "Count to three."], ["Hi there!", "One, two, three."]
    got = reference_likelihood(model, tokenizer, prompts, references, batch_size=2)
    nll, tokens = 0.0, 0
    for p, r in zip(prompts, references):
        cont = tokenizer(r, add_special_tokens=False)["input_ids"]
        nll -= _direct_logprob(model, _chat_ids(tokenizer, p), cont)
        tokens += len(cont)
    assert got.tokens == tokens
    assert got.loss == pytest.approx(nll / tokens, abs=1e-4)
    assert got.perplexity == pytest.approx(math.exp(nll / tokens), rel=1e-4)


def test_text_perplexity_equals_the_models_own_loss(model, tokenizer):
    text = "The morning market opens before sunrise, and farmers arrive with crates of apples."
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        loss = float(model(input_ids=ids, labels=ids).loss)  # mean NLL of tokens 1..T-1
    got = text_likelihood(model, tokenizer, [text, "A second, shorter text."], batch_size=2)
    alone = text_likelihood(model, tokenizer, [text])
    assert alone.tokens == ids.shape[1] - 1
    assert alone.loss == pytest.approx(loss, abs=1e-4)
    assert got.tokens > alone.tokens
