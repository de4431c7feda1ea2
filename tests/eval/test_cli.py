"""``lorakit eval`` end to end on a tiny base saved to disk: task metrics, the drift gate, bad input, the HTML
report.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

import lorakit as lk
from lorakit.cli.app import main
from tests.helpers import tiny_llama

ROWS = [
    {
        "messages": [
            {"role": "user", "content": "Extract: Ann lives in Oslo."},
            {"role": "assistant", "content": '{"name": "Ann", "city": "Oslo"}'},
        ]
    },
    {"prompt": "Extract: Bo lives in Rome.", "reference": {"name": "Bo", "city": "Rome"}},
    {
        "instruction": "Extract the person and city.",
        "input": "Cy lives in Lima.",
        "output": '{"name": "Cy", "city": "Lima"}',
    },
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_to_drift(model, tokenizer, steps: int = 12) -> None:
    """A few Adam steps teaching adapter ``drifted`` to answer every general prompt with one word: real drift."""
    ids = torch.tensor([tokenizer("Tell me about rivers, bread and trains banana")["input_ids"]])
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-2)
    target = torch.full_like(ids, tokenizer("banana", add_special_tokens=False)["input_ids"][0])
    for _ in range(steps):
        loss = model(input_ids=ids, labels=target).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A tiny Llama base (real tokenizer) on disk, a fresh and a trained adapter, data, and small general sets."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("eval_cli")
    tokenizer = AutoTokenizer.from_pretrained(lk.bases.resolve("smollm2-135m-instruct"))
    base = tiny_llama(vocab=49152, hidden=32, seed=7)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    model, _ = lk.bases.load(str(root / "base"))
    config = lk.LoraConfig(r=4, alpha=8, targets="all-linear")
    lk.inject(model, config, name="fresh")
    lk.save_adapter(model, root / "fresh", name="fresh")
    lk.inject(model, config, name="drifted")
    lk.set_active(model, "drifted")
    _train_to_drift(model, tokenizer)
    lk.save_adapter(model, root / "drifted", name="drifted")
    other = tiny_llama(vocab=49152, hidden=32, seed=8)
    lk.inject(other, config, name="other")
    lk.save_adapter(other, root / "other", name="other")
    _jsonl(root / "data.jsonl", ROWS)
    _jsonl(root / "prompts.jsonl", [{"prompt": "Describe a river."}, {"prompt": "What is bread made of?"}])
    _jsonl(root / "text.jsonl", [{"text": "The train left the city in the late afternoon."}])
    _jsonl(
        root / "choices.jsonl",
        [
            {"question": "What do bees make?", "choices": ["Honey", "Silk"], "answer": 0},
            {"question": "How many days are in a week?", "choices": ["Five", "Seven"], "answer": "Seven"},
        ],
    )
    (root / "regression.yaml").write_text("prompts: prompts.jsonl\ntext: text.jsonl\nchoices: choices.jsonl\n")
    (root / "task.yaml").write_text(
        "fields: [name, city]\nmax_new_tokens: 6\nsamples: 3\nschema: {type: object, required: [name, city]}\n"
    )
    return root


def _main(args: list) -> int:
    """``lorakit ARGS`` through the real entry point, in this process; returns the exit code."""
    old = sys.argv
    sys.argv = ["lorakit", *map(str, args)]
    try:
        main()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    finally:
        sys.argv = old
    return 0


def run(args: list, capsys) -> tuple[int, str, str]:
    code = _main(args)
    out, err = capsys.readouterr()
    return code, out, err


def _eval_args(work, *adapters: str, gate: str | None = None) -> list[str]:
    args = [
        "eval",
        "--base",
        work / "base",
        "--data",
        work / "data.jsonl",
        "--task",
        work / "task.yaml",
        "--regression",
        work / "regression.yaml",
        "--out",
        work / "out",
        "--json",
    ]
    args += [x for name in adapters for x in ("--adapter", f"{name}={work / name}")]
    return args + (["--max-drift", gate] if gate else [])


@pytest.fixture(scope="module")
def gated(work):
    """One comparison of the base with both adapters under a KL gate, run once for the tests below."""
    code = _main(_eval_args(work, "fresh", "drifted", gate="0.01"))
    return code, json.loads((work / "out" / "report.json").read_text()), work / "out"


def test_gate_fails_the_trained_adapter_and_passes_the_fresh_one(gated):
    code, report, _ = gated
    assert code == 1
    assert report["columns"] == ["base", "fresh", "drifted"]
    assert report["regression"]["kl"]["fresh"] == 0.0 and report["regression"]["kl"]["base"] == 0.0
    assert report["regression"]["kl"]["drifted"] > 0.01
    assert report["regression"]["perplexity"]["fresh"] == report["regression"]["perplexity"]["base"]
    assert len(report["failures"]) == 1 and report["failures"][0].startswith("drifted: KL")
    assert report["passed"] is False


def test_task_metrics_follow_the_spec_and_the_fresh_adapter_equals_the_base(gated):
    _, report, _ = gated
    metrics = report["metrics"]
    assert set(metrics) == {
        "json_valid",
        "json_exact_match",
        "field_accuracy.name",
        "field_accuracy.city",
        "schema_compliance",
        "reference_loss",
        "reference_perplexity",
    }
    for values in metrics.values():
        assert values["fresh"] == values["base"]
    assert metrics["reference_loss"]["drifted"] != metrics["reference_loss"]["base"]
    assert [s["outputs"]["fresh"] for s in report["samples"]] == [s["outputs"]["base"] for s in report["samples"]]
    assert report["samples"][0]["reference"] == '{"name": "Ann", "city": "Oslo"}' and len(report["samples"]) == 3


def test_fresh_adapter_passes_even_a_zero_threshold(work, capsys):
    code, out, _ = run(_eval_args(work, "fresh", gate="kl=0,ppl=0,mc=0") + ["--out", work / "zero"], capsys)
    assert code == 0
    assert json.loads(out)["passed"] is True


def test_empty_data_file_exits_2_with_a_message(work, capsys):
    (work / "empty.jsonl").write_text("\n")
    code, _, err = run(["eval", "--base", work / "base", "--data", work / "empty.jsonl"], capsys)
    assert code == 2 and "empty.jsonl" in err and "empty" in err


def test_row_missing_a_field_named_by_the_spec_names_file_and_line(work, capsys):
    data = _jsonl(work / "missing.jsonl", [ROWS[1], {"prompt": "Extract: Di.", "reference": {"name": "Di"}}])
    code, _, err = run(["eval", "--base", work / "base", "--data", data, "--task", work / "task.yaml"], capsys)
    assert code == 2 and f"{data}:2" in err and "'city'" in err


def test_adapter_for_another_base_is_the_fingerprint_error(work, capsys):
    code, _, err = run(_eval_args(work, "other") + ["--regression", "none"], capsys)
    assert code == 2 and "fingerprint" in err


def test_bad_threshold_and_adapter_named_base_are_rejected(work, capsys):
    code, _, err = run(_eval_args(work, "fresh", gate="kl=abc"), capsys)
    assert code == 2 and "kl='abc' is not a number" in err
    code, _, err = run(
        ["eval", "--base", work / "base", "--data", work / "data.jsonl", "--adapter", f"base={work / 'fresh'}"], capsys
    )
    assert code == 2 and "may not be called 'base'" in err


def test_html_report_is_one_file_that_renders_in_headless_chromium(gated, tmp_path):
    from PIL import Image

    _, report, out = gated
    html = (out / "report.html").read_text()
    assert "<table" in html and "drifted" in html and "<svg" in html
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in html
    assert "<script" not in html and "<link" not in html
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: run scripts/setup.d/30-chromium.sh"
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1200,1600",
    ]
    shot = tmp_path / "report.png"
    subprocess.run(
        [chromium, *flags, f"--screenshot={shot}", (out / "report.html").as_uri()],
        check=True,
        capture_output=True,
        timeout=120,
    )
    dom = subprocess.run(
        [chromium, *flags, "--dump-dom", (out / "report.html").as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    assert dom.count("<table") == 3 and "field 'city' accuracy" in dom and "KL(base ‖ adapted) per token" in dom
    image = Image.open(shot).convert("RGB")
    assert image.size == (1200, 1600)
    colours = {rgb for _, rgb in image.getcolors(maxcolors=1 << 20)}
    assert (0xEE, 0xF6, 0xEE) in colours or (0xFD, 0xE8, 0xE8) in colours  # a best-value cell or the failed-gate banner
    assert (0x2F, 0x6F, 0xDF) in colours and (0xE0, 0x7B, 0x39) in colours  # bars of the two adapters in the SVG charts
    dark = sum(count for count, (r, g, b) in image.getcolors(maxcolors=1 << 20) if r + g + b < 200)
    assert dark > 2000  # text was drawn


def test_lorakit_entry_point_exits_2_on_bad_input(work):
    result = subprocess.run(
        [
            shutil.which("lorakit") or sys.executable.replace("python", "lorakit"),
            "eval",
            "--base",
            str(work / "base"),
            "--data",
            str(work / "nope.jsonl"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "nope.jsonl: data file not found" in result.stderr


def test_metrics_of_a_registry_adapter_are_recorded_in_the_registry(work, capsys, monkeypatch, tmp_path):
    from lorakit.registry import Registry

    monkeypatch.setenv("LORAKIT_REGISTRY", f"sqlite:///{tmp_path / 'registry.db'}")
    with Registry() as registry:
        registry.add(work / "drifted", name="drifted")
    args = [
        "eval",
        "--base",
        work / "base",
        "--data",
        work / "data.jsonl",
        "--task",
        work / "task.yaml",
        "--regression",
        work / "regression.yaml",
        "--out",
        tmp_path / "out",
        "--json",
        "--adapter",
        "d=registry:drifted@1",
    ]
    code, out, err = run(args, capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    with Registry() as registry:
        recorded = {m["name"]: m["value"] for m in registry.get("drifted@1").metrics if m["split"] == "eval"}
        actions = [entry["action"] for entry in registry.audit("drifted@1")]
    assert "metrics" in actions
    for metric, by_column in report["metrics"].items():
        if by_column.get("d") is not None:
            assert recorded[metric] == pytest.approx(by_column["d"])
    assert any(name.startswith("regression.") for name in recorded)
