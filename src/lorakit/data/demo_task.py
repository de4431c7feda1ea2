"""The bundled demo task: customer-support messages → strict JSON triage ``{"product", "category", "urgency"}``.

Messages are generated deterministically from a seed. Every field has its own pool of phrasings, split in two:
the train and validation splits draw from the first part and from the training sentence templates; the test split
draws only from the held-out phrasings and held-out templates. A model that scores well on test has learnt what
the words mean for the labels, not the training sentences.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lorakit import atomic

PRODUCTS = {
    "laptop": (["laptop", "notebook PC"], ["portable computer"]),
    "phone": (["phone", "smartphone"], ["mobile"]),
    "router": (["router", "wifi router"], ["wireless modem"]),
    "printer": (["printer", "inkjet printer"], ["laser printer"]),
    "headphones": (["headphones", "earbuds"], ["headset"]),
    "smartwatch": (["smartwatch", "fitness watch"], ["watch"]),
}

# {p} is the product phrase.
CATEGORIES = {
    "billing": ([
        "I was charged twice for my {p}",
        "the invoice for my {p} shows the wrong amount",
        "my card was billed for a {p} I never ordered",
        "there is an unexpected fee on the bill for my {p}",
        "the payment for my {p} went through twice",
    ], [
        "my bank statement has a double charge for the {p}",
        "you overcharged me on the {p} purchase",
    ]),
    "technical": ([
        "my {p} won't turn on",
        "my {p} keeps crashing",
        "the {p} stopped working after the update",
        "my {p} freezes every few minutes",
        "the screen on my {p} flickers",
    ], [
        "the {p} reboots by itself and then dies",
        "my {p} is broken and shows an error code",
    ]),
    "shipping": ([
        "my {p} order has not arrived yet",
        "the tracking for my {p} hasn't updated in days",
        "the {p} was delivered to the wrong address",
        "the courier lost the package with my {p}",
        "my {p} delivery is a week late",
    ], [
        "the parcel with the {p} never showed up",
        "where is my {p}? the shipment seems stuck",
    ]),
    "account": ([
        "I can't log in to the account I used to register my {p}",
        "I forgot the password for my {p} account",
        "my account got locked while setting up the {p}",
        "I need to change the email on the account linked to my {p}",
        "the two-factor code for my {p} account never arrives",
    ], [
        "the sign-in page rejects my password for the {p} app",
        "someone else may have accessed my profile for the {p}",
    ]),
    "returns": ([
        "I want to return my {p}",
        "how do I send back the {p} I bought",
        "I'd like a refund for my {p} and will return it",
        "the {p} doesn't suit me and I want to exchange it",
        "I need a return label for my {p}",
    ], [
        "please take back the {p}, I no longer want it",
        "can I get my money back if I ship the {p} back to you",
    ]),
}

URGENCIES = {
    "high": (["This is urgent!", "Please fix this ASAP.", "I need help immediately.", "It's an emergency."],
             ["I need this resolved right now!", "This is critical for my job today."]),
    "medium": (["Please look into it this week.", "I'd like an answer soon.", "Hoping to hear back in a few days."],
               ["Could you check on it when you can this week?", "A reply in the next couple of days would be good."]),
    "low": (["No rush at all.", "Whenever you have time.", "It's not urgent."],
            ["Take your time, it can wait.", "There's no hurry on my side."]),
}

TRAIN_TEMPLATES = [
    "Hi, {issue}. {urgency}",
    "Hello support, {issue}. {urgency} Thanks.",
    "{urgency} {Issue}.",
    "Dear team, {issue}. {urgency} Regards, {name}",
    "{Issue}. {urgency}",
    "Hey, {issue}... {urgency}",
]
TEST_TEMPLATES = [
    "Good morning. Quick question: {issue}. {urgency} Best, {name}",
    "To whom it may concern - {issue}. {urgency}",
    "{urgency} Here is the problem: {issue}.",
]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jon", "Kemi", "Liam"]

SYSTEM_PROMPT = 'Triage the support message. Reply with JSON only: {"product": ..., "category": ..., "urgency": ...}'
FIELDS = ["product", "category", "urgency"]


@dataclass
class DemoTask:
    """The three splits, as chat rows (``{"messages": [...]}`` with the expected JSON as the assistant turn)."""

    train: list[dict]
    val: list[dict]
    test: list[dict]

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write ``train.jsonl``, ``val.jsonl`` and ``test.jsonl`` atomically; return their paths."""
        directory = Path(directory)
        paths = {}
        for split in ("train", "val", "test"):
            paths[split] = directory / f"{split}.jsonl"
            atomic.write_text(paths[split], "".join(json.dumps(r) + "\n" for r in getattr(self, split)))
        return paths


def answer(row: dict) -> str:
    """The expected JSON answer of a row."""
    return row["messages"][-1]["content"]


def prompt_messages(row: dict) -> list[dict[str, str]]:
    """The conversation up to the answer (what the model is given)."""
    return row["messages"][:-1]


def reference(row: dict) -> dict:
    return json.loads(answer(row))


def make_demo_task(n_train: int = 800, n_val: int = 64, n_test: int = 120, seed: int = 0) -> DemoTask:
    """Generate the splits deterministically; test messages use only held-out phrasings and templates."""
    rng = random.Random(seed)
    seen: set[str] = set()
    train = _draw(rng, n_train, held_out=False, seen=seen)
    val = _draw(rng, n_val, held_out=False, seen=seen)
    test = _draw(rng, n_test, held_out=True, seen=seen)
    return DemoTask(train, val, test)


def _draw(rng: random.Random, count: int, held_out: bool, seen: set[str]) -> list[dict]:
    side = 1 if held_out else 0
    templates = TEST_TEMPLATES if held_out else TRAIN_TEMPLATES
    rows: list[dict] = []
    while len(rows) < count:
        product, category, urgency = rng.choice(list(PRODUCTS)), rng.choice(list(CATEGORIES)), rng.choice(list(URGENCIES))
        issue = rng.choice(CATEGORIES[category][side]).format(p=rng.choice(PRODUCTS[product][side]))
        text = rng.choice(templates).format(issue=issue, Issue=issue[0].upper() + issue[1:],
                                            urgency=rng.choice(URGENCIES[urgency][side]), name=rng.choice(NAMES))
        if text in seen:
            continue
        seen.add(text)
        label = json.dumps({"product": product, "category": category, "urgency": urgency})
        rows.append({"messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text},
                                  {"role": "assistant", "content": label}]})
    return rows
