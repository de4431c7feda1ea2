"""The registry on SQLite and on a real PostgreSQL server: every field round-trips, lineage answers
``trained-on`` through generations, promotion is ruled and audited, verify catches tampering, and
``registry:NAME@production`` loads through the registry with hash and base-fingerprint checks."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from sqlalchemy import text

import lorakit as lk
from lorakit.core.errors import AdapterFileError, BaseMismatchError, LorakitError, RegistryError
from lorakit.registry import Registry
from tests.helpers import logits, randomize_adapter, tiny_llama, token_batch
from tests.registry.support import D1, family, make_adapter


def test_round_trip_of_every_field(registry_url, tmp_path):
    meta = {
        "base": {
            "name_or_path": "tiny-llama",
            "fingerprint": lk.bases.fingerprint(tiny_llama()),
            "architecture": "LlamaForCausalLM",
            "parameters": 123456,
        },
        "dataset": D1,
        "metrics": {"eval": {"loss": 1.25, "accuracy": 0.8}, "train_loss": 0.9},
        "description": "from lorakit.json",
        "tags": ["from-meta"],
    }
    path = make_adapter(tmp_path / "support", metadata=meta)
    with Registry(registry_url, actor="alice") as registry:
        added = registry.add(
            path, version="2024.1", owner="team-support", description="answers tickets", tags=["prod-candidate", "cpu"]
        )
    with Registry(registry_url) as registry:  # a new connection reads back what was committed
        got = registry.get("support@2024.1")
        history = registry.audit("support")
    assert got == added
    on_disk = json.loads((path / "lorakit.json").read_text())
    assert (got.name, got.version, got.path, got.status) == ("support", "2024.1", str(path.resolve()), "draft")
    assert (got.owner, got.description) == ("team-support", "answers tickets")
    assert got.tags == ["cpu", "from-meta", "prod-candidate"]
    assert (got.rank, got.alpha, got.targets, got.task_type) == (4, 8.0, "q_proj,v_proj", "CAUSAL_LM")
    files = {
        p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size": p.stat().st_size} for p in path.iterdir()
    }
    assert got.files == files and got.size_bytes == sum(f["size"] for f in files.values())
    assert got.base == {
        "name": "tiny-llama",
        "fingerprint": meta["base"]["fingerprint"],
        "architecture": "LlamaForCausalLM",
        "parameters": 123456,
    }
    assert got.datasets == [
        {
            "name": "support-tickets",
            "uri": "/data/support.jsonl",
            "sha256": "a1" * 32,
            "rows": 1200,
            "license": "CC-BY-4.0",
            "notes": "de-identified",
            "role": "train",
        }
    ]
    assert sorted((m["name"], m["value"], m["split"]) for m in got.metrics) == [
        ("accuracy", 0.8, "eval"),
        ("loss", 1.25, "eval"),
        ("train_loss", 0.9, None),
    ]
    assert got.trained_at == on_disk["created_at"] and got.lorakit_version == lk.__version__
    assert got.meta == on_disk and got.parents == []
    assert got.created_at.endswith("+00:00") and got.status_changed_at == got.created_at
    assert [(e["actor"], e["action"], e["adapter"]) for e in history] == [("alice", "register", "support@2024.1")]


def test_lineage_through_two_generations_answers_trained_on(registry_url, tmp_path):
    a, b, c, d = family(tmp_path)
    with Registry(registry_url) as registry:
        registry.add(a)
        registry.add(d)  # c and b are not registered yet: they are registered first, in the same transaction
        assert [r.ref for r in registry.list()] == ["a@1", "b@1", "c@1", "d@1"]
        assert registry.get("c").parents == [
            {"ref": "a@1", "method": "linear", "weight": 0.7, "params": {"density": 1.0}},
            {"ref": "b@1", "method": "linear", "weight": 0.3, "params": {"density": 1.0}},
        ]
        first = registry.trained_on("support-tickets")
        assert [(x["ref"], x["via"]) for x in first["adapters"]] == [
            ("a@1", []),
            ("c@1", ["a@1"]),
            ("d@1", ["a@1", "c@1"]),
        ]
        second = registry.trained_on("b2b2b2b2b2")  # a sha256 prefix
        assert [(x["ref"], x["via"]) for x in second["adapters"]] == [
            ("b@1", []),
            ("c@1", ["b@1"]),
            ("d@1", ["b@1", "c@1"]),
        ]
        assert registry.trained_on("/data/faq.jsonl")["datasets"][0]["rows"] == 300
        graph = registry.lineage("d")
        tree = graph["tree"]
        assert tree["ref"] == "d@1" and [p["ref"] for p in tree["parents"]] == ["c@1"]
        grand = tree["parents"][0]["parents"]
        assert [(p["ref"], p["weight"], p["datasets"][0]["name"]) for p in grand] == [
            ("a@1", 0.7, "support-tickets"),
            ("b@1", 0.3, "faq"),
        ]
        assert [x["ref"] for x in registry.lineage("a@1")["descendants"]] == ["c@1", "d@1"]


def test_promotion_rules_and_audit(registry_url, tmp_path):
    path = make_adapter(tmp_path / "support")
    with Registry(registry_url, actor="bob") as registry:
        for _ in range(3):
            registry.add(path)
        assert registry.promote("support@1", "staging").status == "staging"
        assert registry.promote("support@staging").status == "production"
        registry.promote("support@2")  # one production version per name: support@1 goes back to staging
        assert [(r.ref, r.status) for r in registry.list()] == [
            ("support@1", "staging"),
            ("support@2", "production"),
            ("support@3", "draft"),
        ]
        assert registry.get("support@production").ref == "support@2"
        registry.promote("support@3", allow_multiple=True)
        assert [r.ref for r in registry.list(status="production")] == ["support@2", "support@3"]
        assert registry.get("support@production").ref == "support@3"  # the most recently promoted
        registry.retire("support@3", reason="regressed on faq")
        assert registry.get("support@production").ref == "support@2"
        assert [e["action"] for e in registry.audit("support@production")] == ["register", "promote"]
        with pytest.raises(RegistryError, match="retired and cannot be promoted"):
            registry.promote("support@3")
        with pytest.raises(RegistryError, match="choose staging or production"):
            registry.promote("support@1", "draft")
        with pytest.raises(RegistryError, match="say which version"):
            registry.retire("support")
        entries = registry.audit("support")
    assert [(e["action"], e["adapter"], e["details"].get("from"), e["details"].get("to")) for e in entries] == [
        ("register", "support@1", None, None),
        ("register", "support@2", None, None),
        ("register", "support@3", None, None),
        ("promote", "support@1", "draft", "staging"),
        ("promote", "support@1", "staging", "production"),
        ("demote", "support@1", "production", "staging"),
        ("promote", "support@2", "draft", "production"),
        ("promote", "support@3", "draft", "production"),
        ("retire", "support@3", "production", "retired"),
    ]
    assert {e["actor"] for e in entries} == {"bob"} and entries[-1]["details"]["reason"] == "regressed on faq"


def test_audit_log_is_append_only_in_the_database(registry_url, tmp_path):
    with Registry(registry_url) as registry:
        registry.add(make_adapter(tmp_path / "x"))
        for statement in ("UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"):
            with pytest.raises(RegistryError, match="append-only"):
                with registry.writing() as session:
                    session.execute(text(statement))
        assert [e["actor"] for e in registry.audit()] == [registry.actor]


def test_verify_catches_a_modified_an_added_and_a_missing_file(registry_url, tmp_path):
    path = make_adapter(tmp_path / "support")
    with Registry(registry_url) as registry:
        registry.add(path)
        [intact] = registry.verify("support")
        assert (intact["ref"], intact["path"], intact["ok"], intact["problems"]) == ("support@1", str(path), True, [])
        weights = bytearray((path / "adapter_model.safetensors").read_bytes())
        weights[-1] ^= 1
        (path / "adapter_model.safetensors").write_bytes(bytes(weights))
        (path / "lorakit.json").unlink()
        (path / "adapter_model.bin").write_bytes(b"pickle")
        [report] = registry.verify("support@1")
        assert not report["ok"]
        assert sorted((p["file"], p["status"]) for p in report["problems"]) == [
            ("adapter_model.bin", "added"),
            ("adapter_model.safetensors", "modified"),
            ("lorakit.json", "missing"),
        ]
        shutil.rmtree(path)
        [gone] = registry.verify("support")
        assert {p["status"] for p in gone["problems"]} == {"missing"} and len(gone["problems"]) == 3
        assert [e["details"]["ok"] for e in registry.audit() if e["action"] == "verify"] == [True, False, False]


def test_load_adapter_resolves_name_at_production_and_checks_hashes_and_base(registry_url, tmp_path, monkeypatch):
    monkeypatch.setenv("LORAKIT_REGISTRY", registry_url)
    path = make_adapter(tmp_path / "support", seed=7)
    with Registry() as registry:
        registry.add(path)
        registry.promote("support@1")
    ids = token_batch()
    direct, via_registry = tiny_llama(), tiny_llama()
    lk.load_adapter(direct, path)
    lk.load_adapter(via_registry, "registry:support@production")
    torch.testing.assert_close(logits(via_registry, ids), logits(direct, ids), rtol=0, atol=0)
    with lk.disabled(direct):
        assert not torch.allclose(logits(direct, ids), logits(via_registry, ids))  # the adapter does change outputs

    other_base = tiny_llama(seed=5)
    with pytest.raises(BaseMismatchError) as mismatch:
        lk.load_adapter(other_base, "registry:support@production")
    theirs, ours = lk.read_adapter(path).base_fingerprint, lk.bases.fingerprint(other_base)
    assert theirs[:12] in str(mismatch.value) and ours[:12] in str(mismatch.value)

    config = path / "adapter_config.json"
    config.write_text(config.read_text().replace('"r": 4', '"r": 4 '))
    with pytest.raises(AdapterFileError, match="adapter_config.json modified"):
        lk.load_adapter(tiny_llama(), "registry:support@production")
    with Registry() as registry:
        registry.retire("support@1")
    with pytest.raises(RegistryError, match="no production version"):
        lk.read_adapter("registry:support@production")
    with pytest.raises(AdapterFileError, match="retired"):
        lk.read_adapter("registry:support@1")


def test_compatible_lists_the_adapters_of_a_base(registry_url, tmp_path):
    first, second = tiny_llama(seed=0), tiny_llama(seed=9)
    lk.inject(second, lk.LoraConfig(r=2, targets=["q_proj"]))
    lk.save_adapter(second, tmp_path / "other")
    model_dir = tmp_path / "base-model"
    first.save_pretrained(model_dir)
    with Registry(registry_url) as registry:
        registry.add(make_adapter(tmp_path / "mine"))
        registry.add(tmp_path / "other")
        fingerprint = lk.bases.fingerprint(first)
        assert [r.ref for r in registry.compatible(fingerprint[:10])["adapters"]] == ["mine@1"]
        assert [r.ref for r in registry.compatible(lk.bases.fingerprint(second))["adapters"]] == ["other@1"]
        assert [r.ref for r in registry.list(base=fingerprint)] == ["mine@1"]
        with pytest.raises(RegistryError, match="no registered base matches"):
            registry.compatible("0000000000")


def test_bad_inputs_raise_typed_errors_and_write_nothing(registry_url, tmp_path):
    a, b, c, d = family(tmp_path)
    (tmp_path / "empty").mkdir()
    with Registry(registry_url) as registry:
        with pytest.raises(AdapterFileError, match="no adapter_config.json"):
            registry.add(tmp_path / "empty")
        make_adapter(tmp_path / "run" / "adapter")
        with pytest.raises(AdapterFileError, match=r"looks like a training run: register .*run/adapter"):
            registry.add(tmp_path / "run")
        shutil.rmtree(a)
        with pytest.raises(RegistryError, match="is not registered and its directory is gone"):
            registry.add(d)  # c and b would be registered first: the failure rolls all of it back
        assert registry.list() == [] and registry.audit() == []
        registry.add(b, version="1")
        with pytest.raises(RegistryError, match="b@1 is already registered"):
            registry.add(b, version="1")
        for bad in ("no/slash", "@1", "x" * 200):
            with pytest.raises(RegistryError, match="invalid adapter name"):
                registry.add(b, name=bad)
        with pytest.raises(RegistryError, match="invalid adapter version"):
            registry.add(b, version="production")
        with pytest.raises(RegistryError, match="no adapter named 'nope'"):
            registry.get("nope@1")
        with pytest.raises(RegistryError, match="b has no version '7'"):
            registry.lineage("b@7")
        with pytest.raises(RegistryError, match="no adapter named"):
            registry.verify("nope")
        with pytest.raises(RegistryError, match="no dataset 'unknown.jsonl'"):
            registry.trained_on("unknown.jsonl")
        with pytest.raises(RegistryError, match="unknown status"):
            registry.list(status="live")
        assert [r.ref for r in registry.list()] == ["b@1"]
    assert all(issubclass(e, LorakitError) for e in (AdapterFileError, RegistryError))


@pytest.fixture
def one_thread():
    """One thread: these models are small, and on a busy machine spinning OpenMP threads lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_a_default_model_adapter_is_registered_promoted_served_by_production_and_found(
    tmp_path, monkeypatch, one_thread
):
    monkeypatch.delenv("LORAKIT_REGISTRY", raising=False)
    adapter_dir = tmp_path / "support" / "adapter"
    assert lk.registry.auto_register(adapter_dir) is None  # no registry configured: nothing happens
    monkeypatch.setenv("LORAKIT_REGISTRY", str(tmp_path / "registry.db"))
    model, tokenizer = lk.bases.load()
    lk.inject(model, lk.LoraConfig(r=8, alpha=16, targets=["q_proj", "v_proj"]))
    randomize_adapter(model, scale=0.02)
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "Reset my password", "completion": "Use the link on the login page."}\n')
    dataset = {"path": str(data), "sha256": hashlib.sha256(data.read_bytes()).hexdigest(), "rows": 1}
    lk.save_adapter(model, adapter_dir, metadata={"dataset": dataset, "metrics": {"eval": {"loss": 2.5}}})

    record = lk.registry.auto_register(adapter_dir, owner="support-team")
    assert record.ref == "support@1" and record.base["name"] == lk.bases.DEFAULT_BASE
    assert record.base["parameters"] == sum(p.numel() for p in lk.bases.base_parameters(model).values())
    with Registry() as registry:
        registry.promote("support@1")
        assert [x["ref"] for x in registry.trained_on(str(data))["adapters"]] == ["support@1"]
    ids = tokenizer("How do I reset my password?", return_tensors="pt").input_ids
    expected = logits(model, ids)
    lk.load_adapter(model, "registry:support@production", name="served")
    lk.set_active(model, "served")
    torch.testing.assert_close(logits(model, ids), expected, rtol=0, atol=0)


def test_the_trainers_provenance_block_is_read(registry_url, tmp_path):
    train = {"path": "data/train.jsonl", "sha256": "c3" * 32, "rows": 40, "sequences": 40, "truncated": 0}
    evaluation = {"path": "data/val.jsonl", "sha256": "d4" * 32, "rows": 8}
    meta = {
        "training": {
            "config": {"lora": {"r": 4}},
            "dataset": {"train": train, "eval": evaluation},
            "metrics": {"steps": 30, "final_loss": 1.75, "best_eval_loss": None},
        }
    }
    with Registry(registry_url) as registry:
        record = registry.add(make_adapter(tmp_path / "run" / "adapter", metadata=meta))
        assert record.ref == "run@1"
        assert [(d["name"], d["role"], d["rows"]) for d in record.datasets] == [
            ("val.jsonl", "eval", 8),
            ("train.jsonl", "train", 40),
        ]
        assert sorted((m["name"], m["value"]) for m in record.metrics) == [("final_loss", 1.75), ("steps", 30.0)]
        assert [x["ref"] for x in registry.trained_on("train.jsonl")["adapters"]] == ["run@1"]
        assert registry.trained_on("val.jsonl")["adapters"] == []  # evaluated on it, not trained on it


def test_lineage_written_by_combine_and_compress_is_traced(tmp_path):
    from lorakit.algebra.combine import combine
    from lorakit.algebra.compress import compress

    a = make_adapter(tmp_path / "a", seed=1, metadata={"dataset": D1})
    b = make_adapter(tmp_path / "b", seed=2)
    combine([a, b], tmp_path / "mix", method="linear", weights=[0.7, 0.3])
    compress(tmp_path / "mix", tmp_path / "small", rank=2)
    with Registry(str(tmp_path / "registry.db")) as registry:
        small = registry.add(tmp_path / "small")
        assert small.parents == [{"ref": "mix@1", "method": "compress", "weight": 1.0, "params": {"rank": 2}}]
        assert [(p["ref"], p["weight"]) for p in registry.get("mix@1").parents] == [("a@1", 0.7), ("b@1", 0.3)]
        assert small.base["fingerprint"] == lk.read_adapter(a).base_fingerprint
        found = registry.trained_on(D1["sha256"])["adapters"]
        assert [(x["ref"], x["via"]) for x in found] == [("a@1", []), ("mix@1", ["a@1"]), ("small@1", ["a@1", "mix@1"])]


def test_an_adapter_from_the_real_trainer_is_registered_promoted_loaded_and_found(tmp_path, monkeypatch, one_thread):
    from lorakit.cli.quickstart import tiny_base
    from lorakit.train import train

    monkeypatch.setenv("LORAKIT_REGISTRY", str(tmp_path / "registry.db"))
    base = tiny_base(lk.bases.lorakit_home() / "models" / "tiny-demo")  # shared with the training tests
    data = tmp_path / "tickets.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": f"Ticket {i}: printer jammed?", "completion": f" reply {i}"}) + "\n" for i in range(8)
        )
    )
    config = {
        "base": str(base),
        "lora": {"r": 4, "alpha": 8},
        "output": str(tmp_path / "triage"),
        "data": {"train": str(data), "format": "completion", "max_length": 32},
        "train": {"max_steps": 3, "batch_size": 4, "lr": 1e-2, "warmup_ratio": 0.0, "precision": "fp32", "seed": 0},
    }
    summary = train(config, progress=False)
    record = lk.registry.auto_register(summary["adapter"])
    assert record.ref == "triage@1" and record.base["name"] == str(base)
    assert [(d["sha256"], d["rows"]) for d in record.datasets if d["role"] == "train"] == [
        (hashlib.sha256(data.read_bytes()).hexdigest(), 8)
    ]
    with Registry() as registry:
        registry.promote("triage@1")
        assert [x["ref"] for x in registry.trained_on(str(data))["adapters"]] == ["triage@1"]
    model, tokenizer = lk.bases.load(str(base))
    ids = tokenizer("Ticket 3: printer jammed?", return_tensors="pt").input_ids
    direct = logits(lk.load_adapter(lk.bases.load(str(base))[0], summary["adapter"]), ids)
    torch.testing.assert_close(
        logits(lk.load_adapter(model, "registry:triage@production"), ids), direct, rtol=0, atol=0
    )
