"""Tamper evidence: `registry verify` notices any direct edit of the database — a registered row (metric, status,
rank, file hash, tag) or an audit entry (altered, deleted, inserted) — names what changed and exits 1, while
ordinary audited changes (promote, metrics, retire) keep it green."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from lorakit.registry import Registry
from lorakit.registry.checks import describe
from tests.registry.support import make_adapter, run_cli

_DROP_GUARD = {
    "sqlite": ["DROP TRIGGER audit_log_no_update", "DROP TRIGGER audit_log_no_delete"],
    "postgresql": ["DROP TRIGGER audit_log_append_only ON audit_log"],
}

# (what was edited, SQL run by someone with write access to the database, text the finding must contain)
EDITS = [
    ("metric value", "UPDATE metrics SET value = 0.01", "metrics[0].value changed from 6.3 to 0.01"),
    ("status", "UPDATE adapters SET status = 'production'", 'status changed from "staging" to "production"'),
    ("rank", "UPDATE adapters SET rank = 64", "rank changed from 4 to 64"),
    ("file hash", f"UPDATE adapter_files SET sha256 = '{'0' * 64}' WHERE filename = 'lorakit.json'", "lorakit.json"),
    ("tag added", "INSERT INTO adapter_tags (adapter_id, tag) SELECT id, 'approved' FROM adapters", "tags"),
    ("audit entry altered", "UPDATE audit_log SET actor = 'mallory' WHERE action = 'promote'", "(promote support@1 at"),
    (
        "audit entry deleted",
        "DELETE FROM audit_log WHERE action = 'register'",
        "audit chain breaks before audit entry #2",
    ),
    (
        "promotion entry deleted",
        "DELETE FROM audit_log WHERE action = 'promote'",
        "audit chain breaks before audit entry #3",
    ),
    (
        "audit entry inserted",
        "INSERT INTO audit_log (at, actor, action, adapter, details) "
        "VALUES ('2030-01-01 00:00:00', 'mallory', 'promote', 'support@1', '{}')",
        "written outside lorakit",
    ),
]


@pytest.fixture
def audited(registry_url, tmp_path):
    """A registry holding support@1 (metric 6.3), promoted to staging and with a recorded metric; verify is green."""
    path = make_adapter(tmp_path / "support", metadata={"training": {"metrics": {"best_eval_loss": 6.3}}})
    with Registry(registry_url) as registry:
        registry.add(path)
        registry.promote("support@1", "staging")
        registry.record_metrics("support@1", {"accuracy": 0.5}, split="test")
        [report] = registry.verify("support@1")
        assert report["ok"], report["problems"]
    return registry_url


@pytest.mark.parametrize("label,statement,finding", EDITS, ids=[e[0] for e in EDITS])
def test_verify_reports_a_direct_database_edit(audited, label, statement, finding):
    with Registry(audited) as registry:
        with registry.reading() as session:
            for guard in _DROP_GUARD[session.bind.dialect.name]:
                session.execute(text(guard))
            session.execute(text(statement))
        [report] = registry.verify("support@1")
        assert not report["ok"]
        details = [describe(p) for p in report["problems"]]
        assert any(finding in d for d in details), details
        [again] = registry.verify("support@1")  # the verify entry does not launder the edit
        assert not again["ok"]


def test_audited_changes_keep_verify_green_and_the_chain_grows(audited, tmp_path):
    with Registry(audited) as registry:
        registry.promote("support@1", "production")
        registry.add(make_adapter(tmp_path / "support2", seed=1), name="support")
        registry.promote("support@2", "production")  # demotes support@1 in the same write
        registry.retire("support@2", reason="test")
        reports = registry.verify("support")
    assert [(r["ref"], r["ok"], r["problems"]) for r in reports] == [("support@1", True, []), ("support@2", True, [])]
    assert reports[0]["audit_entries"] == 9 and len(reports[0]["chain_head"]) == 64


def test_cli_verify_prints_what_changed_and_exits_1(audited, monkeypatch, capsys):
    with Registry(audited) as registry, registry.reading() as session:
        session.execute(text("UPDATE metrics SET value = 0.01 WHERE name = 'accuracy'"))
    code, out, err = run_cli(monkeypatch, capsys, "registry", "verify", "support@1", "--registry", audited)
    assert code == 1 and err == ""
    assert "FAILED: support@1: metrics[1].value changed from 0.5 to 0.01 since audit entry #3 (metrics)" in out
    assert "audit chain: 4 entries, head " in out
