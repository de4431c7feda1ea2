"""Data: reading files, formats, prompt masking, truncation, packing, and errors that name file:line."""

from __future__ import annotations

import csv
import json

import pytest
from transformers import AutoTokenizer

from lorakit.core import bases
from lorakit.core.errors import DataError
from lorakit.data import collate, encode_rows, load_rows, pack, to_example
from lorakit.data.demo_task import (
    CATEGORIES,
    PRODUCTS,
    TEST_TEMPLATES,
    TRAIN_TEMPLATES,
    URGENCIES,
    answer,
    make_demo_task,
)
from lorakit.data.encode import IGNORE

CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]
}


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bases.ensure_default_cached())


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_chat_masking_puts_minus_100_on_every_prompt_token(tokenizer):
    data = encode_rows(load_rows([CHAT]), tokenizer, "chat", 512)
    example = data.examples[0]
    trained = [t for t, label in zip(example.input_ids, example.labels) if label != IGNORE]
    assert [label for label in example.labels if label != IGNORE] == trained
    text = tokenizer.decode(trained)
    assert text.replace("\n", "") == "Paris.<|im_end|>Rome.<|im_end|>"
    prompt_tokens = [t for t, label in zip(example.input_ids, example.labels) if label == IGNORE]
    assert "Capital of France" in tokenizer.decode(prompt_tokens) and "Be brief" in tokenizer.decode(prompt_tokens)


def test_train_on_prompt_labels_every_token(tokenizer):
    example = encode_rows(load_rows([CHAT]), tokenizer, "chat", 512, train_on_prompt=True).examples[0]
    assert example.labels == example.input_ids


def test_instruction_and_completion_formats(tokenizer):
    rows = [{"instruction": "Translate to French", "input": "cat", "output": "chat"}]
    example = encode_rows(load_rows(rows), tokenizer, "instruction", 512).examples[0]
    assert tokenizer.decode([t for t in example.labels if t != IGNORE]).strip() == "chat<|im_end|>"
    rows = [{"prompt": "2 + 2 =", "completion": " 4"}]
    example = encode_rows(load_rows(rows), tokenizer, "completion", 512).examples[0]
    prompt_len = len(tokenizer("2 + 2 =")["input_ids"])
    assert example.labels[:prompt_len] == [IGNORE] * prompt_len
    assert example.labels[prompt_len:] == example.input_ids[prompt_len:]
    assert example.input_ids[-1] == tokenizer.eos_token_id


def test_truncation_is_counted(tokenizer):
    long = {"prompt": "word " * 50, "completion": "end"}
    data = encode_rows(load_rows([long, {"prompt": "a", "completion": "b"}]), tokenizer, "completion", 16)
    assert data.truncated == 1
    assert max(len(e.input_ids) for e in data.examples) == 16


def test_packing_keeps_examples_whole_and_labels_aligned(tokenizer):
    rows = [{"prompt": f"question {i}", "completion": f" answer {i}"} for i in range(10)]
    data = encode_rows(load_rows(rows), tokenizer, "completion", 64)
    packed = pack(data, 24)
    assert sum(len(p.input_ids) for p in packed.examples) == sum(len(e.input_ids) for e in data.examples)
    assert len(packed) < len(data) and all(len(p.input_ids) <= 24 for p in packed.examples)
    assert [t for p in packed.examples for t in p.labels] == [t for e in data.examples for t in e.labels]


def test_collate_pads_right_with_ignored_labels(tokenizer):
    data = encode_rows(
        load_rows([{"prompt": "a", "completion": "b"}, {"prompt": "a b c d", "completion": "e f"}]),
        tokenizer,
        "completion",
        64,
    )
    batch = collate(data.examples, pad_id=0)
    short = len(data.examples[0].input_ids)
    assert batch["attention_mask"][0, short:].sum() == 0
    assert (batch["labels"][0, short:] == IGNORE).all()


def test_reads_jsonl_csv_parquet_and_dataset(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    with open(tmp_path / "d.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, ["prompt", "completion"])
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    sources = [
        _jsonl(tmp_path / "d.jsonl", rows),
        tmp_path / "d.csv",
        tmp_path / "d.parquet",
        datasets.Dataset.from_list(rows),
    ]
    for source in sources:
        loaded = load_rows(source)
        assert [r.data for r in loaded.rows] == rows
    assert load_rows(tmp_path / "d.csv").rows[1].where.endswith("d.csv:3")
    assert len(load_rows(tmp_path / "d.jsonl").sha256) == 64


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):
        load_rows(path)
    skipping = load_rows(path, skip_bad_lines=True)
    assert len(skipping) == 1 and skipping.skipped[0].startswith(f"{path}:2")


def test_format_mismatch_names_line_and_suggests_format(tmp_path):
    path = _jsonl(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}])
    row = load_rows(path).rows[0]
    with pytest.raises(
        DataError, match=r"d\.jsonl:1: format 'chat' needs key\(s\) messages.*set data.format: completion"
    ):
        to_example(row, "chat")


def test_chat_without_assistant_turn_is_an_error(tokenizer):
    with pytest.raises(DataError, match="<list>:1: no assistant message"):
        encode_rows(load_rows([{"messages": [{"role": "user", "content": "hi"}]}]), tokenizer, "chat", 64)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="empty"):
        load_rows(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="not found"):
        load_rows(tmp_path / "nope.jsonl")


def test_demo_task_is_deterministic_and_test_split_uses_unseen_phrasings():
    first, second = make_demo_task(), make_demo_task()
    assert first.test == second.test and first.train == second.train
    train_messages = [r["messages"][1]["content"] for r in first.train + first.val]
    test_messages = [r["messages"][1]["content"] for r in first.test]
    assert not set(train_messages) & set(test_messages)
    held_out = [p for pool in (*CATEGORIES.values(), *URGENCIES.values()) for p in pool[1]]
    seen = [p for pool in (*CATEGORIES.values(), *URGENCIES.values()) for p in pool[0]]
    for text in train_messages:
        assert not any(h.split("{p}")[0] in text for h in held_out if len(h.split("{p}")[0]) > 12)
    for text in test_messages:
        assert not any(s.split("{p}")[0] in text for s in seen if len(s.split("{p}")[0]) > 12)
    prefixes = [t.split("{")[0] for t in TRAIN_TEMPLATES if t.split("{")[0]]
    assert not any(text.startswith(tuple(prefixes)) for text in test_messages)
    assert not any(
        text.startswith(tuple(t.split("{")[0] for t in TEST_TEMPLATES if t.split("{")[0])) for text in train_messages
    )
    labels = [json.loads(answer(r)) for r in first.test]
    assert {label["product"] for label in labels} == set(PRODUCTS)
