"""``lorakit registry``: every command in text and ``--json``, the default SQLite registry under LORAKIT_HOME,
``--registry URL`` for PostgreSQL, exit code 1 from a failed verify, and one line + exit code 2 for bad input."""

from __future__ import annotations

import json

import pytest

import lorakit as lk
from tests.helpers import tiny_llama
from tests.registry.support import D1, family, make_adapter, run_cli


@pytest.fixture
def cli(monkeypatch, capsys):
    monkeypatch.delenv("LORAKIT_REGISTRY", raising=False)
    return lambda *args: run_cli(monkeypatch, capsys, *args)


def test_every_command_in_text_and_json(cli, registry_url, tmp_path):
    a, b, c, d = family(tmp_path)
    where = ["--registry", registry_url]
    code, out, _ = cli("registry", "add", str(a), "--owner", "team-a", "--tag", "cpu", "--tag", "eu", "--json", *where)
    added = json.loads(out)
    assert code == 0 and added["ref"] == "a@1" and added["owner"] == "team-a" and added["tags"] == ["cpu", "eu"]
    code, out, _ = cli(
        "registry", "add", str(d), "--name", "support", "--version", "1.0", "--description", "compressed", *where
    )
    assert code == 0 and out.startswith("registered support@1.0 (draft)") and "from c@1" in out

    _, out, _ = cli("registry", "list", "--json", *where)
    assert [r["ref"] for r in json.loads(out)] == ["a@1", "b@1", "c@1", "support@1.0"]
    _, out, _ = cli(
        "registry",
        "list",
        "--owner",
        "team-a",
        "--tag",
        "eu",
        "--status",
        "draft",
        "--base",
        added["base"]["fingerprint"][:8],
        *where,
    )
    assert out.split()[0] == "a@1" and len(out.strip().splitlines()) == 1

    _, out, _ = cli("registry", "show", "support", "--json", *where)
    shown = json.loads(out)
    assert shown["parents"][0]["ref"] == "c@1" and [e["action"] for e in shown["audit"]] == ["register"]
    _, out, _ = cli("registry", "show", "a@1", *where)
    assert "dataset      support-tickets (train)" in out and "license CC-BY-4.0" in out

    _, out, _ = cli("registry", "lineage", "support@1.0", *where)
    assert out.splitlines()[:4] == [
        "support@1.0 [draft]",
        "└─ c@1 [draft]  ← compress",
        "   ├─ a@1 [draft]  ← linear weight 0.7  data: support-tickets (a1a1a1a1a1a1)",
        "   └─ b@1 [draft]  ← linear weight 0.3  data: faq (b2b2b2b2b2b2)",
    ]
    _, out, _ = cli("registry", "lineage", "a", "--json", *where)
    assert [x["ref"] for x in json.loads(out)["descendants"]] == ["c@1", "support@1.0"]

    _, out, _ = cli("registry", "trained-on", "support-tickets", *where)
    assert out.splitlines()[0].endswith("3 adapter(s)") and "via a@1 → c@1" in out
    _, out, _ = cli("registry", "trained-on", "/data/faq.jsonl", "--json", *where)
    assert [x["ref"] for x in json.loads(out)["adapters"]] == ["b@1", "c@1", "support@1.0"]

    assert cli("registry", "promote", "support@1.0", *where)[1] == "support@1.0 is production\n"
    _, out, _ = cli("registry", "promote", "a@1", "--to", "staging", "--json", *where)
    assert json.loads(out)["status"] == "staging"
    assert cli("registry", "retire", "b@1", "--reason", "license withdrawn", *where)[1] == "b@1 is retired\n"
    _, out, _ = cli("registry", "audit", "b", "--json", *where)
    assert json.loads(out)[-1]["details"] == {"from": "draft", "to": "retired", "reason": "license withdrawn"}

    code, out, _ = cli("registry", "verify", "support", *where)
    assert code == 0 and out.split()[:2] == ["support@1.0", "ok"] and "audit chain: " in out
    (d / "lorakit.json").write_text("{}")
    code, out, _ = cli("registry", "verify", "support@production", *where)
    assert code == 1 and "FAILED: lorakit.json modified" in out
    code, out, _ = cli("registry", "verify", "support", "--json", *where)
    assert code == 1 and json.loads(out)[0]["problems"][0]["status"] == "modified"

    _, out, _ = cli("registry", "compatible", added["base"]["fingerprint"], "--json", *where)
    assert [r["ref"] for r in json.loads(out)["adapters"]] == ["a@1", "b@1", "c@1", "support@1.0"]
    _, out, _ = cli("registry", "audit", *where)
    assert len(out.strip().splitlines()) == 4 + 3 + 3  # registrations, promote/promote/retire, verifies


def test_the_default_registry_lives_in_lorakit_home(cli, tmp_path):
    a, *_ = family(tmp_path)
    assert cli("registry", "add", str(a))[0] == 0
    assert (lk.bases.lorakit_home() / "registry.db").exists()
    assert cli("registry", "list")[1].split()[0] == "a@1"


def test_compatible_fingerprints_a_model_directory(cli, tmp_path):
    a, *_ = family(tmp_path)
    model_dir = tmp_path / "base"
    tiny_llama().save_pretrained(model_dir)
    tokenizer_files = lk.bases.default_cache_dir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (model_dir / name).write_bytes((tokenizer_files / name).read_bytes())
    cli("registry", "add", str(a))
    code, out, _ = cli("registry", "compatible", str(model_dir))
    assert code == 0 and out.splitlines()[1].split()[0] == "a@1"


@pytest.mark.parametrize(
    "args, message",
    [
        (["add", "{tmp}"], "no adapter_config.json"),
        (["add", "{a}", "--version", "1"], "a@1 is already registered"),
        (["add", "{a}", "--name", "bad name"], "invalid adapter name"),
        (["show", "nope"], "no adapter named 'nope'"),
        (["show", "a@9"], "a has no version '9'"),
        (["lineage", "a@production"], "a has no production version"),
        (["trained-on", "unknown.jsonl"], "no dataset 'unknown.jsonl'"),
        (["promote", "a"], "say which version"),
        (["promote", "a@1", "--to", "retired"], "choose staging or production"),
        (["list", "--status", "live"], "unknown status 'live'"),
        (["compatible", "deadbeef00"], "no registered base matches"),
        (["verify", "nope"], "no adapter named 'nope'"),
        (["list", "--registry", "{tmp}"], "it is a directory"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(cli, tmp_path, args, message):
    a = make_adapter(tmp_path / "a", metadata={"dataset": D1})
    cli("registry", "add", str(a))
    code, out, err = cli("registry", *[x.format(tmp=tmp_path, a=a) for x in args])
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
