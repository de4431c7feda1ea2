"""``lorakit quickstart``: the whole demo pipeline end to end (tiny model), and on the real default model (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lorakit.data.demo_task import FIELDS


def _quickstart(out, *extra, threads="1"):
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OMP_WAIT_POLICY": "PASSIVE"}
    result = subprocess.run(
        [sys.executable, "-m", "lorakit.cli", "quickstart", "--out", str(out), "--no-progress", *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _check_report(out, result) -> dict:
    report = json.loads((out / "report.json").read_text())
    for side in ("base", "adapted"):
        assert set(report[side]) == {"exact_match", "json_valid", "field_accuracy"}
        assert set(report[side]["field_accuracy"]) == set(FIELDS)
    assert report["drift_kl"] >= 0 and set(report["seconds"]) == {"convert", "train", "eval", "total"}
    assert len(report["general"]) == 2 and all(g["base"] is not None for g in report["general"])
    assert (out / "run" / "adapter" / "adapter_model.safetensors").exists() and (out / "run" / "loss.png").exists()
    assert "| exact match |" in result.stdout and "drift KL" in result.stdout
    assert (out / "report.md").read_text().strip() in result.stdout
    return report


def test_quickstart_fast_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "quick"
    result = _quickstart(out, "--fast")
    report = _check_report(out, result)
    assert report["fast"] and report["test_rows"] == 12


def test_data_only_writes_the_three_splits(tmp_path):
    result = _quickstart(tmp_path, "--data-only")
    for split in ("train", "val", "test"):
        assert f"{split}: " in result.stdout and (tmp_path / "data" / f"{split}.jsonl").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quickstart_on_the_default_model_learns_the_task(tmp_path):
    out = tmp_path / "quick"
    result = _quickstart(out, threads="2")
    report = _check_report(out, result)
    assert report["base"]["exact_match"] <= 0.1
    assert report["adapted"]["exact_match"] >= 0.6  # measured 0.86 in two runs
    assert report["adapted"]["json_valid"] >= 0.95
    assert report["drift_kl"] < 1.0


@pytest.mark.parametrize(
    ("environ", "load", "torch_loaded", "expected"),
    [
        ({}, 0.2, False, None),  # quiet machine: OpenMP's spinning default
        ({}, 1.0, False, "PASSIVE"),  # half the 2 CPUs busy
        ({}, 5.0, False, "PASSIVE"),
        ({"OMP_WAIT_POLICY": "ACTIVE"}, 5.0, False, None),  # the user's choice stands
        ({}, 5.0, True, None),  # too late once torch is imported
    ],
)
def test_the_command_picks_the_openmp_wait_policy_from_the_load(monkeypatch, environ, load, torch_loaded, expected):
    import os
    import sys

    from lorakit.cli import app

    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    modules = {"torch": sys.modules["torch"]} if torch_loaded else {}
    environ = dict(environ)
    before = dict(environ)
    assert app.omp_wait_policy(environ, modules) == expected
    assert environ == ({**before, "OMP_WAIT_POLICY": expected} if expected else before)
