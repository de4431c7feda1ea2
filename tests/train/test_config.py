"""Training config validation, --set overrides, schedules, LoRA+ groups, and the CLI's one-line errors."""

from __future__ import annotations

import json
import math
import sys

import pytest
import yaml

import lorakit as lk
from lorakit.core.errors import ConfigError
from lorakit.train.config import load_config
from lorakit.train.optim import make_optimizer, param_groups
from lorakit.train.schedule import lr_factor, warmup_steps
from tests.helpers import tiny_llama


def test_defaults_validate_and_overrides_parse_yaml_values():
    config = load_config(
        {},
        [
            "train.lr=1e-4",
            "train.loraplus_ratio=16",
            "lora.targets=[q_proj, v_proj]",
            "train.eval_every=null",
            "data.packing=true",
        ],
    )
    assert config.train.lr == 1e-4 and config.train.loraplus_ratio == 16
    assert config.lora_config().targets == ["q_proj", "v_proj"]
    assert config.train.eval_every is None and config.data.packing is True


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "train.lrr=1",
            r"unknown key train\.lrr \(did you mean 'lr'\?\); valid keys in train: max_steps, num_epochs, batch_size",
        ),
        ("train.lr=-1", r"train\.lr: Input should be greater than 0, got -1"),
        ("train.schedule=step", r"train\.schedule: Input should be 'cosine', 'linear' or 'constant'"),
        ("lora.r=0", r"lora: r must be a positive integer rank, got 0"),
        ("lora.rank=8", r"lora: unknown key lora\.rank \(did you mean 'r'\?\)"),
        ("data.eval_fraction=1.5", r"data\.eval_fraction: Input should be less than 1"),
        ("train", r"expected key=value"),
    ],
)
def test_bad_config_names_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config({}, [override])


def test_yaml_errors_name_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_schedule_values_at_known_steps():
    total, warmup = 110, warmup_steps(110, 10 / 110)
    assert warmup == 10
    assert lr_factor(0, total, warmup) == pytest.approx(0.1)
    assert lr_factor(9, total, warmup) == pytest.approx(1.0)
    assert lr_factor(10, total, warmup, "cosine") == pytest.approx(1.0)
    assert lr_factor(60, total, warmup, "cosine") == pytest.approx(0.5)
    assert lr_factor(35, total, warmup, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(60, total, warmup, "linear") == pytest.approx(0.5)
    assert lr_factor(109, total, warmup, "linear") == pytest.approx(0.01)
    assert lr_factor(109, total, warmup, "constant") == 1.0
    assert lr_factor(0, total, 0, "cosine") == 1.0


def test_loraplus_puts_every_b_matrix_at_ratio_times_lr():
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=4, alpha=8))
    groups = param_groups(model, "default", lr=1e-3, weight_decay=0.1, loraplus_ratio=16)
    by_name = {g["name"]: g for g in groups}
    b_params = {id(p) for n, p in model.named_parameters() if ".lora_B." in n}
    a_params = {id(p) for n, p in model.named_parameters() if ".lora_A." in n}
    assert {id(p) for p in by_name["B"]["params"]} == b_params and by_name["B"]["lr"] == pytest.approx(16e-3)
    assert {id(p) for p in by_name["rest"]["params"]} == a_params and by_name["rest"]["lr"] == pytest.approx(1e-3)
    assert all(g["weight_decay"] == 0.1 for g in groups)
    make_optimizer(groups)
    plain = param_groups(model, "default", lr=1e-3)
    assert len(plain) == 1 and len(plain[0]["params"]) == len(b_params) + len(a_params)


def _run_cli(monkeypatch, capsys, *args):
    from lorakit.cli.app import main

    monkeypatch.setattr(sys, "argv", ["lorakit", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capsys.readouterr().err.strip()


@pytest.fixture
def run_config(tmp_path):
    from lorakit.cli.quickstart import tiny_base

    base = tiny_base(lk.bases.lorakit_home() / "models" / "tiny-demo")
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    config = {
        "base": str(base),
        "data": {"train": str(data), "format": "completion"},
        "train": {"max_steps": 1, "batch_size": 1},
        "output": str(tmp_path / "run"),
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, data


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--set", "train.warmup=0.1"], "unknown key train.warmup (did you mean 'warmup_ratio'?)"),
        (["--set", "train.batch_size=zero"], "train.batch_size: Input should be a valid integer"),
        (["--set", "data.format=chat"], "format 'chat' needs key(s) messages"),
    ],
)
def test_cli_bad_config_exits_2_with_one_line(monkeypatch, capsys, run_config, extra, message):
    code, err = _run_cli(monkeypatch, capsys, "train", str(run_config[0]), *extra)
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_cli_bad_and_empty_data_exit_2_with_one_line(monkeypatch, capsys, run_config):
    path, data = run_config
    data.write_text('{"prompt": "a", "completion": "b"}\nnot json\n')
    code, err = _run_cli(monkeypatch, capsys, "train", str(path))
    assert code == 2 and f"{data}:2: invalid JSON" in err and len(err.splitlines()) == 1
    data.write_text("")
    code, err = _run_cli(monkeypatch, capsys, "train", str(path))
    assert code == 2 and "the dataset is empty" in err and len(err.splitlines()) == 1
