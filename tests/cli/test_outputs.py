"""Outputs are safe to share and runs reproducible: writes follow the umask, an output that holds something is
refused without --overwrite, a run directory records its resolved config and refuses to mix two runs, half-written
checkpoints are cleaned; and the command line answers usage errors in one line (exit 2) without importing torch
for --help/--version, with one --dtype spelling table."""

from __future__ import annotations

import io
import os
import re
import stat
import subprocess
import sys
import threading

import pytest

import lorakit as lk
from lorakit.cli.options import dtype_name
from lorakit.cli.progress import phase
from lorakit.core.errors import ConfigError, OutputExistsError
from lorakit.core.files import atomic
from lorakit.train import checkpoint
from lorakit.train.config import load_config
from tests.helpers import run_cli, tiny_llama
from tests.registry.support import make_adapter


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring it after."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize(
    "mask,file_mode,dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775), (0o077, 0o600, 0o700)]
)
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    atomic.write_text(tmp_path / "report.json", "{}")
    with atomic.directory(tmp_path / "run") as staging:
        (staging / "x").write_text("x")
    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=2, targets=["q_proj"]))
    saved = lk.save_adapter(model, tmp_path / "adapter")
    assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == dir_mode
    assert stat.S_IMODE(saved.stat().st_mode) == dir_mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in saved.iterdir()} == {file_mode}


def test_an_output_that_holds_something_needs_overwrite(tmp_path):
    assert atomic.check_output(tmp_path / "new", overwrite=False) == tmp_path / "new"
    (tmp_path / "empty").mkdir()
    atomic.check_output(tmp_path / "empty", overwrite=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "a.txt").write_text("a")
    with pytest.raises(
        OutputExistsError, match=r"full: the output directory is not empty \(it holds a\.txt\); pass --overwrite"
    ):
        atomic.check_output(tmp_path / "full", overwrite=False)
    atomic.check_output(tmp_path / "full", overwrite=True)


@pytest.mark.parametrize(
    "command",
    [
        ["combine", "{a}", "{a}", "--out", "{o}"],
        ["compress", "{a}", "--rank", "2", "--out", "{o}", "--no-sample"],
        ["merge", "{a}", "--out", "{o}"],
    ],
)
def test_commands_refuse_a_full_output_before_any_work(tmp_path, capsys, monkeypatch, command):
    adapter = make_adapter(tmp_path / "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, monkeypatch, *[a.format(a=adapter, o=tmp_path / "out") for a in command])
    assert (
        code == 2 and "out: the output directory is not empty (it holds keep.txt)" in err and len(err.splitlines()) == 1
    )


def test_combine_with_overwrite_replaces_the_output(tmp_path, capsys, monkeypatch):
    adapter = make_adapter(tmp_path / "a")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.txt").write_text("old")
    code, _, err = run_cli(
        capsys, monkeypatch, "combine", str(adapter), str(adapter), "--out", str(tmp_path / "out"), "--overwrite"
    )
    assert code == 0, err
    assert lk.read_adapter(tmp_path / "out").config.r == 8 and not (tmp_path / "out" / "old.txt").exists()


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["nosuch"],
            "error: No such command 'nosuch'. (Usage: lorakit [OPTIONS] COMMAND [ARGS]...; see lorakit --help)",
        ),
        (["inspect", "--bogus"], "error: No such option: --bogus"),
        (["train"], "error: give a run config (lorakit train CONFIG.yaml) or a run directory to resume"),
        (["registry", "verify"], "error: Missing argument 'ref'."),
        (
            ["merge", "x", "--out", "y", "--dtype", "fp8"],
            "error: --dtype 'fp8': use one of fp32 (float32), bf16 (bfloat16), fp16 (float16)",
        ),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, monkeypatch, args, message):
    code, out, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2 and err.startswith(message) and len(err.splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "spelled,name",
    [
        ("fp32", "float32"),
        ("float32", "float32"),
        ("BF16", "bfloat16"),
        ("bfloat16", "bfloat16"),
        ("fp16", "float16"),
        ("half", "float16"),
    ],
)
def test_dtype_accepts_both_spellings(spelled, name):
    assert dtype_name(spelled) == name
    with pytest.raises(ConfigError, match="use one of fp32 \\(float32\\), bf16 \\(bfloat16\\)$"):
        dtype_name("fp16", ("float32", "bfloat16"))


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["train", "--help"], ["registry", "--help"]])
def test_help_and_version_do_not_import_torch(args):
    script = (
        "import sys\nfrom lorakit.cli.app import main\nsys.argv = ['lorakit', *sys.argv[1:]]\ntry:\n    main()\n"
        "except SystemExit as done:\n    assert not done.code, done.code\n"
        "print('heavy:', sorted(m for m in ('torch', 'transformers', 'sqlalchemy') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("heavy: []"), done.stderr


def _run_config(output):
    return load_config({"output": str(output), "train": {"max_steps": 4, "keep_checkpoints": 2}}, ["train.lr=1e-3"])


def test_a_run_directory_records_its_resolved_config_and_cleans_half_written_checkpoints(tmp_path):
    run = tmp_path / "run"
    config = _run_config(run)
    checkpoints = run / "checkpoints"
    for step in (1, 2, 3):
        (checkpoints / f"step-00000{step}").mkdir(parents=True)
        (checkpoints / f"step-00000{step}" / checkpoint.STATE_FILE).write_bytes(b"")
    (checkpoints / "step-000004").mkdir()  # renamed but no state: not a checkpoint
    (checkpoints / ".step-000005.staging-abc").mkdir()
    (checkpoints / ".step-000002.old-xyz").mkdir()
    found = checkpoint.start_run(run, config.resolved(), "auto", keep=config.train.keep_checkpoints)
    assert found == checkpoints / "step-000003"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["step-000002", "step-000003"]
    recorded = load_config(run / checkpoint.RUN_CONFIG)
    assert recorded.resolved() == config.resolved() and recorded.train.lr == 1e-3


def test_a_run_directory_is_not_mixed_with_another_run(tmp_path):
    run = tmp_path / "run"
    config = _run_config(run).resolved()
    checkpoint.start_run(run, config, None)
    with pytest.raises(
        ConfigError,
        match=r"run: the run directory is not empty \(it holds config\.yaml\); continue it "
        r"with --resume auto, start over with --overwrite",
    ):
        checkpoint.start_run(run, config, None)
    changed = _run_config(run)
    changed.train.batch_size = 3
    with pytest.raises(
        ConfigError, match=r"config\.yaml: the run was made with train\.batch_size=8, the config now says 3"
    ):
        checkpoint.start_run(run, changed.resolved(), "auto")
    (run / checkpoint.FINAL_ADAPTER).mkdir()
    (run / checkpoint.FINAL_ADAPTER / "adapter_config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"run: this run already finished .* nothing to resume"):
        checkpoint.start_run(run, config, "auto")
    assert checkpoint.start_run(run, config, None, overwrite=True) is None
    assert sorted(p.name for p in run.iterdir()) == [checkpoint.RUN_CONFIG]


class _Log(io.StringIO):
    """A stream that is not a terminal, like a log file."""

    def isatty(self) -> bool:
        return False


def test_a_long_phase_writes_plain_lines_off_a_terminal_and_a_closing_line_with_its_values():
    log = _Log()
    release = threading.Event()
    with phase("merge", every=0.01, stream=log) as running:
        while log.getvalue().count("\n") < 2:
            release.wait(0.01)
        running.values = {"dtype": "bf16", "error": 0.000123456}
    lines = log.getvalue().splitlines()
    assert all(re.fullmatch(r"merge: running, \d+ s", line) for line in lines[:-1]) and len(lines) >= 3
    assert re.fullmatch(r"merge: done in \d+\.\d s \(dtype bf16, error 0\.0001235\)", lines[-1])


def test_a_phase_that_fails_at_once_writes_nothing():
    log = _Log()
    with pytest.raises(ConfigError):
        with phase("combine", every=60, stream=log):
            raise ConfigError("bad weights")
    assert log.getvalue() == ""


def test_training_progress_off_a_terminal_is_one_plain_line_per_logged_step(monkeypatch):
    from types import SimpleNamespace

    from lorakit.train.callbacks import ProgressBar

    log = _Log()
    monkeypatch.setattr(sys, "stderr", log)
    trainer = SimpleNamespace(config=load_config({"train": {"max_steps": 5, "log_every": 2}}))
    bar = ProgressBar()
    bar.on_train_begin(trainer)
    for step in range(1, 6):
        if step == 4:
            bar.on_evaluate(trainer, {"eval_loss": 1.5})
        bar.on_step_end(trainer, {"step": step, "loss": 2.0 / step, "lr": 1e-4, "tokens_per_s": 1234.0})
    bar.on_train_end(trainer, {})
    assert log.getvalue().splitlines() == [
        "train step 2/5: loss 1.0000  lr 1.00e-04  1,234 tok/s",
        "train step 4/5: loss 0.5000  lr 1.00e-04  1,234 tok/s  eval 1.5000",
        "train step 5/5: loss 0.4000  lr 1.00e-04  1,234 tok/s  eval 1.5000",
    ]
