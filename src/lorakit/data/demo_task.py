"""The bundled demo task: customer-support messages → strict JSON triage ``{"product", "category", "urgency"}``.

Messages are generated deterministically from a seed. The category and urgency cues each have a pool of
phrasings split in two, and so do the sentence templates: the train and validation splits draw from the first
part, the test split only from the held-out part. A model that scores well on test has learnt what
the words mean for the labels, not the training sentences.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lorakit.core.files import atomic

# Products are named by the same words in every split: the label is the product, the skill is reading it out
# of new sentences. Categories and urgencies are where the held-out phrasings differ.
PRODUCTS = {
    "laptop": ["laptop", "notebook PC"],
    "phone": ["phone", "smartphone"],
    "router": ["router", "wifi router"],
    "printer": ["printer", "inkjet printer"],
    "headphones": ["headphones", "earbuds"],
    "smartwatch": ["smartwatch", "fitness watch"],
}

# {p} is the product phrase. Each pool: (phrasings for train/val, held-out phrasings for test).
CATEGORIES = {
    "billing": (
        [
            "I was charged twice for my {p}",
            "the invoice for my {p} shows the wrong amount",
            "my card was billed for a {p} I never ordered",
            "there is an unexpected fee on the bill for my {p}",
            "the payment for my {p} went through twice",
            "I was overcharged for the {p}",
            "the price I paid for my {p} is higher than the receipt says",
            "my credit card shows a duplicate payment for the {p}",
            "my statement lists the {p} purchase twice",
        ],
        [
            "my bank shows a double charge for the {p}",
            "the amount billed for the {p} is not what I agreed to pay",
            "why was my card charged again for the {p}",
        ],
    ),
    "technical": (
        [
            "my {p} won't turn on",
            "my {p} keeps crashing",
            "the {p} stopped working after the update",
            "my {p} freezes every few minutes",
            "the screen on my {p} flickers",
            "my {p} shows an error and restarts",
            "the {p} is broken and does not respond",
            "the battery of my {p} dies after an hour",
        ],
        [
            "the {p} reboots by itself and then goes dead",
            "my {p} is malfunctioning and shows an error code",
            "the {p} will not power up since yesterday",
        ],
    ),
    "shipping": (
        [
            "my {p} order has not arrived yet",
            "the tracking for my {p} hasn't updated in days",
            "the {p} was delivered to the wrong address",
            "the courier lost the package with my {p}",
            "my {p} delivery is a week late",
            "the shipment with my {p} is stuck in transit",
            "I never received the {p} I ordered",
            "the parcel with my {p} arrived at a neighbour's house",
        ],
        [
            "the package containing the {p} never showed up",
            "where is my {p}? the delivery seems stuck",
            "the {p} I ordered still hasn't been shipped",
        ],
    ),
    "account": (
        [
            "I can't log in to the account I used to register my {p}",
            "I forgot the password for my {p} account",
            "my account got locked while setting up the {p}",
            "I need to change the email on the account linked to my {p}",
            "the two-factor code for my {p} account never arrives",
            "I can't sign in to the app for my {p}",
            "someone changed the password of my {p} account",
            "the login page for my {p} account keeps rejecting me",
        ],
        [
            "the sign-in page rejects my password for the {p} app",
            "I am locked out of the profile that manages my {p}",
            "I want to reset the login details of my {p} account",
        ],
    ),
    "returns": (
        [
            "I want to return my {p}",
            "how do I send back the {p} I bought",
            "I'd like to return the {p} for a refund",
            "the {p} doesn't suit me and I want to exchange it",
            "I need a return label for my {p}",
            "can I send the {p} back within the return period",
            "I want to swap the {p} for a different model",
            "please tell me how to return the unopened {p}",
            "I'd like to send the {p} back and get a different one",
        ],
        [
            "please take back the {p}, I no longer want it",
            "I would like to ship the {p} back and get it exchanged",
            "what is the return process for the {p}",
        ],
    ),
}

URGENCIES = {
    "high": (
        [
            "This is urgent!",
            "Please fix this ASAP.",
            "I need help immediately.",
            "It's an emergency.",
            "Please respond right away!",
            "This is critical, I need it today.",
            "I need this fixed now!",
            "Please handle this as soon as possible.",
        ],
        [
            "I need this resolved right now!",
            "Extremely urgent, please act immediately.",
            "Please sort this out as fast as possible!",
        ],
    ),
    "medium": (
        [
            "Please look into it this week.",
            "I'd like an answer soon.",
            "Hoping to hear back in a few days.",
            "A reply this week would be appreciated.",
            "Please get back to me soon.",
            "It would be good to sort this out in the next few days.",
        ],
        [
            "Could you check on it sometime this week?",
            "A reply in the next couple of days would be good.",
            "I'd appreciate a response fairly soon.",
        ],
    ),
    "low": (
        [
            "No rush at all.",
            "Whenever you have time.",
            "It's not urgent.",
            "No hurry.",
            "Take your time with this.",
            "It can wait, low priority.",
        ],
        ["Take your time, it can wait.", "There's no hurry on my side.", "Not urgent at all, reply whenever."],
    ),
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
        product, category, urgency = (
            rng.choice(list(PRODUCTS)),
            rng.choice(list(CATEGORIES)),
            rng.choice(list(URGENCIES)),
        )
        issue = rng.choice(CATEGORIES[category][side]).format(p=rng.choice(PRODUCTS[product]))
        text = rng.choice(templates).format(
            issue=issue,
            Issue=issue[0].upper() + issue[1:],
            urgency=rng.choice(URGENCIES[urgency][side]),
            name=rng.choice(NAMES),
        )
        if text in seen:
            continue
        seen.add(text)
        label = json.dumps({"product": product, "category": category, "urgency": urgency})
        rows.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": text},
                    {"role": "assistant", "content": label},
                ]
            }
        )
    return rows
