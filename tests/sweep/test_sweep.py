"""``lorakit sweep`` on a tiny random Llama (the default tokenizer) with 1–4 training steps per trial: a 2×2 grid
finds the known best and registers every trial; pruning stops a trial whose eval loss is clearly worse; the
Pareto set and reports of a multi-objective study; bad search spaces exit 2 naming the key."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
import yaml

from lorakit.core import bases
from lorakit.core.errors import ConfigError
from lorakit.registry import Registry
from lorakit.sweep import load_sweep, run_sweep, write_results
from tests.helpers import run_cli

DRIFT_PROMPTS = ["Why is the sky blue?", "Write one sentence about rivers."]


def tiny_sweep(root: Path, **changes) -> dict:
    """A sweep dict over the demo task on a tiny random Llama: 3 steps of 4, eval every step, 4 eval rows."""
    from lorakit.cli.quickstart import tiny_base, write_demo_data

    base = tiny_base(bases.lorakit_home() / "models" / "tiny-demo")
    data = root / "data"
    if not (data / "val4.jsonl").exists():
        paths = write_demo_data(root, fast=True)
        (data / "val4.jsonl").write_text("".join(paths["val"].read_text().splitlines(keepends=True)[:4]))
        (data / "drift.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in DRIFT_PROMPTS))
    sweep = {
        "name": "tiny",
        "config": {
            "base": str(base),
            "lora": {"r": 4, "alpha": 8, "targets": "all-linear"},
            "data": {"train": str(data / "train.jsonl"), "eval": str(data / "val4.jsonl"), "max_length": 96},
            "train": {
                "max_steps": 3,
                "batch_size": 4,
                "lr": 3e-3,
                "eval_every": 1,
                "save_every": 100,
                "warmup_ratio": 0.0,
                "keep_checkpoints": 1,
            },
        },
        "eval": {"task": {"max_new_tokens": 4, "batch_size": 8}, "drift_prompts": str(data / "drift.jsonl")},
        "space": {"lora.r": [2, 4]},
        "objectives": {"eval_loss": "minimize"},
        "sampler": "grid",
        "heartbeat": {"interval": 1, "grace": 3},
        "registry": str(root / "registry.db"),
        "output": str(root / "out"),
    }
    sweep.update(changes)
    return sweep


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_grid_runs_every_point_finds_the_known_best_and_registers_every_trial(tmp_path):
    # 4 useful steps at lr 3e-3 beat 1 step, and any lr beats 1e-7 (which leaves the base): the best is known.
    sweep = tiny_sweep(tmp_path, pruner="none", space={"train.lr": [3e-3, 1e-7], "train.max_steps": [1, 4]})
    result = run_sweep(sweep)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [r["state"] for r in rows] == ["complete"] * 4
    assert sorted((float(r["train.lr"]), int(r["train.max_steps"])) for r in rows) == [
        (1e-7, 1),
        (1e-7, 4),
        (3e-3, 1),
        (3e-3, 4),
    ]
    best = rows[result["best"][0]]
    assert (float(best["train.lr"]), int(best["train.max_steps"])) == (3e-3, 4)
    assert float(best["eval_loss"]) == min(float(r["eval_loss"]) for r in rows)
    with Registry(sweep["registry"]) as registry:
        records = {r.version: r for r in registry.list(tag="sweep-tiny")}
        assert sorted(records) == [f"trial-{n}" for n in range(4)]
        for row in rows:
            record = records[f"trial-{row['trial']}"]
            assert record.meta["sweep"]["name"] == "tiny" and record.meta["sweep"]["trial"] == int(row["trial"])
            assert record.meta["sweep"]["params"] == {
                "train.lr": float(row["train.lr"]),
                "train.max_steps": int(row["train.max_steps"]),
            }
            measured = {m["name"]: m["value"] for m in record.metrics if m["split"] == "eval"}
            assert measured["eval_loss"] == pytest.approx(float(row["eval_loss"]), rel=1e-9)
            assert measured["drift_kl"] == pytest.approx(float(row["drift_kl"]), rel=1e-9)
            assert record.size_bytes > 0 and Path(record.path).is_dir()
        assert registry.get("tiny@staging").ref == f"tiny@trial-{best['trial']}" == result["promoted"][0]
    assert float(rows[0]["drift_kl"]) >= 0 and {"json_exact_match", "adapter_mb", "seconds"} <= set(rows[0])
    assert (tmp_path / "out" / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "out" / "report.html").read_text()


def test_pruning_stops_a_trial_whose_eval_loss_is_clearly_worse(tmp_path):
    # The grid queues lr 3e-2 first: after one step its eval loss is far below that of lr 1e-8 (the base's).
    sweep = tiny_sweep(tmp_path, space={"train.lr": [3e-2, 1e-8]}, pruner={"startup_trials": 1, "warmup_steps": 0})
    result = run_sweep(sweep)
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [(r["state"], float(r["train.lr"])) for r in rows] == [("complete", 3e-2), ("pruned", 1e-8)]
    assert "at step 1" in rows[1]["note"] and result["best"] == [0]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'out' / 'study.db'}")
    assert list(study.trials[1].intermediate_values) == [1]  # stopped after its first evaluation
    with Registry(sweep["registry"]) as registry:
        assert [r.version for r in registry.list(tag="sweep-tiny")] == ["trial-0"]


def test_pareto_set_of_two_objectives_is_marked_in_results_chart_and_report(tmp_path):
    spec = load_sweep(
        tiny_sweep(
            tmp_path,
            objectives={"json_valid": "maximize", "drift_kl": "minimize"},
            sampler="random",
            budget={"trials": 4},
            promote="none",
        )
    )
    study = optuna.create_study(directions=spec.directions)
    measured = [(0.5, 0.10), (0.9, 0.30), (0.4, 0.20), (0.9, 0.05)]  # trial 3 dominates 0 and 1; 2 is dominated by 0
    for task, drift in measured:
        scores = {"json_valid": task, "drift_kl": drift, "adapter_mb": 0.02, "eval_loss": 1.0}
        study.add_trial(
            optuna.create_trial(
                params={"lora.r": 2},
                distributions={"lora.r": optuna.distributions.CategoricalDistribution([2, 4])},
                values=[task, drift],
                user_attrs={"scores": scores, "config": {"lora.r": 2}},
            )
        )
    result = write_results(spec, study)
    assert result["best"] == [3]
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert [float(r["json_valid"]) for r in rows] == [m[0] for m in measured]
    assert "Pareto set: #3" in result["summary"]
    assert result["png"].stat().st_size > 1000 and 'class="best"' in result["html"].read_text()


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"space": {"lora.rank": [4, 8]}}, "'lora.rank'"),
        ({"space": {"train.learning_rate": [1e-3]}}, "'train.learning_rate'"),
        ({"space": {"lora.r": []}}, "'lora.r': empty list"),
        ({"space": {"train.lr": {"low": 1e-3, "high": 1e-4, "log": True}}}, "'train.lr': low 0.001 > high 0.0001"),
        ({"space": {"lora.r": [4, 0]}}, "'lora.r': value 0 is refused"),
        ({"space": {"lora.alpha": {"ratio_of": "lora.r", "values": [1, 2]}}}, "'lora.alpha': ratio_of 'lora.r'"),
        ({"space": {"train.lr": {"low": 1e-4, "high": 1e-3}}}, "'train.lr': the grid sampler needs a finite range"),
        ({"space": {"output": ["a", "b"]}}, "'output'"),
        ({"objectives": {"accuracy": "maximize"}}, "unknown metric 'accuracy'"),
        ({"objectives": {"drift_kl": "lowest"}}, "'drift_kl' must be maximize or minimize"),
        ({"sampler": "bayes"}, "sampler 'bayes'"),
        ({"storage": "mysql://u@localhost/db"}, "storage mysql://"),
        ({"name": "no spaces allowed"}, "name: invalid adapter name"),
    ],
)
def test_bad_sweep_file_exits_2_naming_the_key(tmp_path, capsys, monkeypatch, changes, named):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep(tmp_path, **changes)))
    code, out, err = run_cli(capsys, monkeypatch, "sweep", str(path))
    assert code == 2 and named in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out" / "study.db").exists()  # refused before any study or model


def test_space_parses_choices_ranges_ratios_and_lists(tmp_path):
    spec = load_sweep(
        tiny_sweep(
            tmp_path,
            sampler="grid",
            space={
                "lora.r": [2, 4],
                "lora.alpha": {"ratio_of": "lora.r", "values": [1, 2]},
                "lora.targets": ["attention", ["q_proj", "v_proj"]],
                "train.max_steps": {"low": 2, "high": 6, "step": 2},
            },
        )
    )
    assert [p.name for p in spec.space.params] == ["lora.r", "lora.targets", "train.max_steps", "lora.alpha/lora.r"]
    grid = spec.space.grid()
    assert len(grid) == 2 * 2 * 3 * 2 == spec.trials
    values = spec.space.values_of(grid[-1])
    assert values == {"lora.r": 4, "lora.targets": ["q_proj", "v_proj"], "train.max_steps": 6, "lora.alpha": 8}
    config = spec.trial_config(values, tmp_path / "t")
    assert config.lora["alpha"] == 8 and config.lora["targets"] == ["q_proj", "v_proj"] and config.train.max_steps == 6
    with pytest.raises(ConfigError, match="budget: give trials and/or minutes"):
        load_sweep(tiny_sweep(tmp_path, sampler="tpe", space={"train.lr": {"low": 1e-4, "high": 1e-3, "log": True}}))


def test_set_overrides_reach_the_config_the_space_and_the_budget(tmp_path):
    spec = load_sweep(
        tiny_sweep(tmp_path, sampler="random", budget={"trials": 5}),
        ["config.train.max_steps=2", "space.lora.r=[8, 16]", "budget.trials=3", "eval.task.max_new_tokens=2"],
    )
    assert spec.config["train"]["max_steps"] == 2 and spec.space.params[0].choices == (8, 16)
    assert spec.trials == 3 and spec.task.max_new_tokens == 2


def test_a_second_start_of_the_same_study_is_refused_without_resume(tmp_path, capsys, monkeypatch):
    sweep = tiny_sweep(tmp_path, space={"lora.r": [2]}, pruner="none")
    run_sweep(sweep)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    code, _, err = run_cli(capsys, monkeypatch, "sweep", str(path))
    assert code == 2 and "already has trials: continue it with --resume" in err
    again = run_sweep(sweep, mode="resume")  # nothing left to do: the budget (the one grid point) is spent
    assert [r["state"] for r in again["rows"]] == ["complete"]


def test_an_unreachable_storage_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep(tmp_path, storage="postgresql://nobody@127.0.0.1:1/sweeps")))
    code, _, err = run_cli(capsys, monkeypatch, "sweep", str(path))
    assert code == 2 and "storage postgresql+psycopg://nobody@127.0.0.1:1/sweeps could not be opened" in err


def test_a_wall_time_budget_stops_claiming_trials(tmp_path):
    result = run_sweep(tiny_sweep(tmp_path, sampler="random", budget={"minutes": 1e-9}))
    assert result["rows"] == [] and result["best"] == [] and result["png"] is None
    assert result["summary"].startswith("0 done") and (tmp_path / "out" / "report.html").exists()
