"""Sweep workers sharing one study: two processes complete the budget with no trial run twice and none lost,
on SQLite and on a real PostgreSQL server; a worker killed with SIGKILL mid-trial leaves a trial that
``--resume`` fails (by its stopped heartbeat) and runs again, completing the budget."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from lorakit.registry import Registry
from lorakit.sweep import run_sweep
from tests.registry.support import cluster
from tests.sweep.test_sweep import read_csv, tiny_sweep

TRIALS = 4

# Both workers wait at a file barrier before each phase so that they claim trials at the same time.
_WORKER = """
import sys, time
from pathlib import Path
from lorakit.sweep import run_sweep

sync, who, *files = sys.argv[1:]
for phase, file in enumerate(files):
    Path(sync, f"{phase}-{who}").touch()
    deadline = time.monotonic() + 300
    while len(list(Path(sync).glob(f"{phase}-*"))) < 2:
        assert time.monotonic() < deadline, "the other worker never arrived"
        time.sleep(0.01)
    run_sweep(file, mode="worker")
"""


def _check_shared_study(sweep: dict) -> None:
    study = optuna.load_study(study_name=sweep["name"], storage=sweep["storage"])
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(TRIALS))
    assert [t.state for t in trials] == [TrialState.COMPLETE] * TRIALS
    workers = [t.user_attrs["worker"] for t in trials]
    assert len(set(workers)) == 2  # both processes ran trials
    outputs = [t.user_attrs["output"] for t in trials]
    assert len(set(outputs)) == TRIALS and all(Path(o, "adapter").is_dir() for o in outputs)
    with Registry(sweep["registry"]) as registry:
        versions = sorted(r.version for r in registry.list(tag=f"sweep-{sweep['name']}"))
        assert versions == sorted(f"trial-{n}" for n in range(TRIALS))  # each trial registered exactly once
    rows = read_csv(Path(sweep["output"]) / "results.csv")
    assert sorted(int(r["trial"]) for r in rows) == list(range(TRIALS))


def test_two_workers_share_one_study_on_sqlite_and_postgresql(tmp_path):
    space = {"lora.r": [2, 4], "train.lr": [3e-3, 1e-3]}
    phases = []
    for backend in ("sqlite", "postgresql"):
        root = tmp_path / backend
        root.mkdir()
        sweep = tiny_sweep(
            root,
            name=f"shared-{backend}",
            space=space,
            sampler="random",
            seed=1,
            budget={"trials": TRIALS},
            pruner="none",
        )
        sweep["config"]["train"]["max_steps"] = 2
        if backend == "postgresql":
            sweep["storage"], sweep["registry"] = cluster().new_database(), cluster().new_database()
        else:
            sweep["storage"] = f"sqlite:///{root / 'study.db'}"
        (root / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        phases.append(sweep)
    sync = tmp_path / "sync"
    sync.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WORKER,
                str(sync),
                f"w{i}",
                *(str(tmp_path / b / "sweep.yaml") for b in ("sqlite", "postgresql")),
            ],
            env=env,
            cwd=Path(__file__).parents[2],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=600)
        assert worker.returncode == 0, err[-3000:]
    for sweep in phases:
        _check_shared_study(sweep)


def test_sigkill_mid_trial_then_resume_reruns_that_trial_and_completes_the_budget(tmp_path):
    sweep = tiny_sweep(tmp_path, space={"lora.r": [2, 4]}, pruner="none", heartbeat={"interval": 1, "grace": 2})
    sweep["config"]["train"]["max_steps"] = 8  # a wider window to kill it in
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "lorakit.cli", "sweep", str(path)],
        env=env,
        cwd=Path(__file__).parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = tmp_path / "out" / "trials" / "0000" / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while not started.exists():
        assert worker.poll() is None, worker.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the first trial never started training"
        time.sleep(0.02)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=60)
    worker.stderr.close()
    storage = f"sqlite:///{tmp_path / 'out' / 'study.db'}"
    before = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert [t.state for t in before] == [TrialState.RUNNING, TrialState.WAITING]  # killed mid-trial; r=4 still queued

    result = run_sweep(str(path), mode="resume")
    trials = optuna.load_study(study_name="tiny", storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    rerun = trials[2]
    assert rerun.system_attrs["retry_history"] == [0] and rerun.params == trials[0].params == {"lora.r": 2}
    assert sorted(t.params["lora.r"] for t in trials if t.state == TrialState.COMPLETE) == [2, 4]
    notes = {r["trial"]: r["note"] for r in result["rows"]}
    assert "queued again" in notes[0] and notes[2] == "re-runs trial 0"
    with Registry(sweep["registry"]) as registry:
        assert sorted(r.version for r in registry.list(tag="sweep-tiny")) == ["trial-1", "trial-2"]
