"""Bad input files are refused with a `file:line` error, never used, hung on or crashed on: YAML run configs
(duplicate keys and sections, alias bombs, wrong scalar types, non-UTF-8, FIFOs and directories), data files
(non-UTF-8 bytes in CSV/JSONL, not a regular file), a dataset that truncation leaves without a label token; and
the names people type first (PEFT's, Hugging Face's) work or are answered with "did you mean"."""

from __future__ import annotations

import json
import os

import pytest
from transformers import AutoTokenizer

import lorakit as lk
from lorakit.core import bases
from lorakit.core.errors import ConfigError, DataError
from lorakit.data import encode_rows, load_rows
from lorakit.train.config import load_config

BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcdef", "bcdefg")
)

# (what the file holds, its text, the error it must give — a regex)
BAD_YAML = [
    ("duplicate key", "lora: {r: 4, alpha: 8, r: 64}\n", r"c\.yaml:1: duplicate key 'r' \(first given at line 1\)"),
    (
        "duplicate section",
        "lora:\n  r: 4\ntrain:\n  lr: 0.1\nlora:\n  r: 64\n",
        r"c\.yaml:5: duplicate key 'lora' \(first given at line 1\)",
    ),
    ("alias bomb", BOMB, r"more than 100 alias uses|aliases expand to more than 10000 values"),
    (
        "wide alias fan-out",
        "a: &a [1, 2, 3]\n" + "".join(f"k{i}: *a\n" for i in range(120)),
        r"more than 100 alias uses",
    ),
    ("recursive alias", "a: &a [*a]\n", r"c\.yaml:1: a recursive alias"),
    (
        "boolean batch size",
        "train: {batch_size: true}\n",
        r"train\.batch_size: Input should be a valid integer, got True",
    ),
    ("string learning rate", "train: {lr: '1e-4'}\n", r"train\.lr: Input should be a valid number, got '1e-4'"),
    ("string flag", "data: {packing: 'yes'}\n", r"data\.packing: Input should be a valid boolean"),
    ("lora flag as text", "lora: {use_dora: 'no'}\n", r"use_dora must be true or false"),
    ("not a mapping", "- a\n- b\n", r"the config file must be a mapping"),
    (
        "alias and name together",
        "train: {lr: 0.1, learning_rate: 0.2}\n",
        r"train\.lr and train\.learning_rate are the same",
    ),
    ("epochs and steps", "train: {num_epochs: 2, max_steps: 10}\n", r"train\.max_steps or train\.num_epochs, not both"),
]


@pytest.mark.parametrize("label,text,error", BAD_YAML, ids=[b[0] for b in BAD_YAML])
def test_a_bad_yaml_config_is_refused_naming_file_and_key(tmp_path, label, text, error):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error) as caught:
        load_config(path)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 1200


def test_every_unknown_key_is_reported_at_once_with_did_you_mean(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian: {}\ntrain: {lrr: 0.1, bach_size: 2}\ndata: {fromat: chat}\nlora: {rank: 4}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    for expected in (
        "trian (did you mean 'train'?)",
        "train.lrr (did you mean 'lr'?)",
        "train.bach_size (did you mean 'batch_size'?)",
        "data.fromat (did you mean 'format'?)",
        "lora.rank (did you mean 'r'?)",
    ):
        assert expected in message


def test_hugging_face_and_peft_names_are_aliases_in_yaml_and_set(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        "output_dir: runs/x\nlora: {lora_alpha: 32, target_modules: [q_proj], lora_dropout: 0.1, r: 8}\n"
        "train: {learning_rate: 1e-4, per_device_train_batch_size: 2, gradient_accumulation_steps: 4}\n"
        "data: {max_seq_length: 128}\n"
    )
    config = load_config(path, ["train.lr_scheduler_type=linear", "lora.lora_alpha=16"])
    assert (config.output, config.data.max_length) == ("runs/x", 128)
    assert (config.train.lr, config.train.batch_size, config.train.grad_accum, config.train.schedule) == (
        1e-4,
        2,
        4,
        "linear",
    )
    assert config.lora == {"alpha": 16, "targets": ["q_proj"], "dropout": 0.1, "r": 8}
    assert config.lora_config() == lk.LoraConfig(r=8, alpha=16, targets=["q_proj"], dropout=0.1)


def test_lora_config_takes_peft_names_and_names_unknown_ones():
    assert lk.LoraConfig(lora_alpha=32, target_modules=["q_proj"], lora_dropout=0.05) == lk.LoraConfig(
        alpha=32, targets=["q_proj"], dropout=0.05
    )
    with pytest.raises(ConfigError, match=r"unknown keys rnk \(did you mean 'r'\?\), alpah \(did you mean 'alpha'\?\)"):
        lk.LoraConfig(rnk=4, alpah=8)
    with pytest.raises(ConfigError, match="alpha and lora_alpha are the same setting"):
        lk.LoraConfig(alpha=8, lora_alpha=16)


def test_num_epochs_is_an_alternative_to_max_steps():
    config = load_config({"train": {"num_train_epochs": 3}})
    assert (config.train.num_epochs, config.train.max_steps) == (3, None)
    assert config.train.steps_for(rows=20, world=1) == 8  # ceil(3 epochs × 20 rows / batch 8)
    assert config.with_steps(rows=20, world=2).train.max_steps == 4 and config.with_steps(20).train.num_epochs is None
    assert load_config({}).train.steps_for(rows=10, world=1) == 200


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_config_or_data_path_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path, kind):
    path = tmp_path / "thing"
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    shown = r"a FIFO \(named pipe\)" if kind == "fifo" else "a directory"
    with pytest.raises(ConfigError, match=f"thing: the config file is {shown}, not a regular file"):
        load_config(path)
    data = tmp_path / "rows.jsonl"
    os.mkfifo(data) if kind == "fifo" else data.mkdir()
    with pytest.raises(DataError, match=f"rows.jsonl: the data file is {shown}, not a regular file"):
        load_rows(data)


@pytest.mark.parametrize(
    "name,content,line",
    [
        ("c.yaml", b"base: x\noutput: caf\xe9\n", 2),
        ("d.csv", b"prompt,completion\np0,c0\ncaf\xe9,x\n", 3),
        ("d.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n', 2),
    ],
)
def test_bytes_that_are_not_utf8_are_reported_at_file_and_line(tmp_path, name, content, line):
    path = tmp_path / name
    path.write_bytes(content)
    error = ConfigError if name.endswith(".yaml") else DataError
    with pytest.raises(error, match=rf"{name}:{line}: the (config|data) file is not UTF-8 text \(byte 0xe9"):
        load_config(path) if error is ConfigError else load_rows(path)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(bases.ensure_default_cached())


def test_data_with_no_label_token_left_after_truncation_is_refused(tokenizer):
    rows = [{"prompt": "word " * 100, "completion": " answer"}] * 3
    with pytest.raises(
        DataError,
        match=r"no label \(response\) tokens left to train on: 3 of 3 rows lost all their "
        r"labels to truncation at data\.max_length=16",
    ):
        encode_rows(load_rows(rows), tokenizer, "completion", 16)
    some = encode_rows(load_rows([*rows, {"prompt": "hi", "completion": " there"}]), tokenizer, "completion", 16)
    assert (some.unlabelled, some.target_tokens > 0) == (3, True)


@pytest.mark.parametrize(
    "rows,expected",
    [
        ([{"prompt": "a", "completion": "b"}], "completion"),
        ([{"instruction": "a", "output": "b"}, {"instruction": "c", "input": "d", "output": "e"}], "instruction"),
        ([{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}], "chat"),
    ],
)
def test_the_format_is_detected_when_unset(tokenizer, rows, expected):
    assert encode_rows(load_rows(rows), tokenizer, None, 64).format == expected


def test_an_undetectable_format_names_the_odd_row(tokenizer):
    rows = [{"prompt": "a", "completion": "b"}, {"question": "a", "answer": "b"}]
    with pytest.raises(DataError, match=r"<list>:2: cannot tell the data format from keys answer, question"):
        encode_rows(load_rows(rows), tokenizer, None, 64)
    both = [{"prompt": "a", "completion": "b", "messages": [{"role": "assistant", "content": "b"}]}]
    with pytest.raises(DataError, match=r"fit several formats \(chat, completion\); set data\.format"):
        encode_rows(load_rows(both), tokenizer, None, 64)


def test_the_run_config_reads_json_as_well(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"train": {"lr": 0.001}}))
    assert load_config(path).train.lr == 0.001
