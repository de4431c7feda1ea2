"""The bundled demo preference set: reply to a support message with a one-line routing note, not a chatty answer.

Prompts are the demo triage task's messages (:mod:`lorakit.data.demo_task`, same seed-driven phrasings, so the
test split is held out). The chosen reply is ``Routed to <category> (<urgency> priority).``; the rejected one is,
alternately, a friendly generic reply (what an instruction-tuned base tends to write, so the base prefers it)
or the routing note with a wrong category. Deterministic for a seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from lorakit.core.files import atomic
from lorakit.data.demo_task import CATEGORIES, make_demo_task, reference

SYSTEM_PROMPT = "You are a support assistant. Answer the customer's message."
CHATTY = [
    "Thank you so much for reaching out! I'm sorry to hear about the trouble with your {product}. "
    "Our team will look into this and get back to you as soon as possible.",
    "Hi there! Thanks for contacting us about your {product}. We understand how frustrating this can be, "
    "and we're here to help. Could you share a few more details?",
    "Hello! We appreciate your message regarding your {product}. Rest assured that we will do our best "
    "to resolve this for you quickly. Have a wonderful day!",
]


def chosen_reply(label: dict) -> str:
    """The preferred answer for a triage label."""
    return f"Routed to {label['category']} ({label['urgency']} priority)."


@dataclass
class DemoPreferences:
    """Train and test pairs, rows ``{"prompt": [messages], "chosen": str, "rejected": str}``."""

    train: list[dict]
    test: list[dict]

    def write(self, directory: str | Path) -> dict[str, Path]:
        """Write ``prefs_train.jsonl`` and ``prefs_test.jsonl`` atomically; return their paths."""
        paths = {}
        for split in ("train", "test"):
            paths[split] = Path(directory) / f"prefs_{split}.jsonl"
            atomic.write_text(paths[split], "".join(json.dumps(r) + "\n" for r in getattr(self, split)))
        return paths


def make_demo_preferences(n_train: int = 256, n_test: int = 64, seed: int = 0) -> DemoPreferences:
    """Pairs for the demo task's train messages and, for the test split, its held-out messages."""
    task = make_demo_task(n_train, 0, n_test, seed=seed)
    rng = random.Random(seed + 1)
    return DemoPreferences(
        [_pair(r, i, rng) for i, r in enumerate(task.train)], [_pair(r, i, rng) for i, r in enumerate(task.test)]
    )


def _pair(row: dict, index: int, rng: random.Random) -> dict:
    label = reference(row)
    message = row["messages"][1]["content"]
    if index % 2 == 0:
        rejected = rng.choice(CHATTY).format(product=label["product"])
    else:
        wrong = rng.choice([c for c in CATEGORIES if c != label["category"]])
        rejected = chosen_reply({**label, "category": wrong})
    prompt = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": message}]
    return {"prompt": prompt, "chosen": chosen_reply(label), "rejected": rejected}
