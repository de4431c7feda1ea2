"""The Python functions behind the writing commands guard their output as the commands do: a directory that
holds something is refused with :class:`OutputExistsError` naming it (and left byte for byte as it was) unless
``overwrite=True``, which replaces it whole through a staging directory — a failure before the final rename
leaves the old content."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import lorakit as lk
from lorakit.cli.quickstart import tiny_base
from lorakit.core import bases
from lorakit.core.errors import OutputExistsError
from lorakit.core.files import atomic
from lorakit.train import Trainer
from tests.helpers import randomize_adapter, run_cli

ROWS = [{"prompt": f"Q{i}: colour?", "completion": f" {c}"} for i, c in enumerate(["red", "blue"] * 2)]


@pytest.fixture(scope="module")
def base() -> Path:
    """A 2-layer random Llama with the default model's tokenizer, saved once under the shared model cache."""
    return tiny_base(bases.lorakit_home() / "models" / "tiny-demo")


@pytest.fixture(scope="module")
def adapter(base, tmp_path_factory) -> Path:
    model, _ = lk.bases.load(str(base))
    lk.inject(model, lk.LoraConfig(r=4, alpha=8, targets=["q_proj", "v_proj"]))
    randomize_adapter(model, scale=0.2)
    return lk.save_adapter(model, tmp_path_factory.mktemp("source") / "adapter")


def _save(base: Path, adapter: Path, out: Path, **options):
    model, _ = lk.bases.load(str(base))
    lk.load_adapter(model, adapter)
    return lk.save_adapter(model, out, **options)


def _train(base: Path, adapter: Path, out: Path, **options):
    config = {
        "base": str(base),
        "lora": {"r": 4, "alpha": 8},
        "data": {"format": "completion", "max_length": 32},
        "train": {"max_steps": 1, "batch_size": 2, "eval_every": None, "save_every": 1, "precision": "fp32"},
        "output": str(out),
    }
    return Trainer.from_config(config, train_data=ROWS, progress=False).fit(**options)


WRITERS = {  # name -> (write(base, adapter, out, **options), what the written directory holds)
    "combine": (lambda base, a, out, **o: lk.combine([a, a], out, **o), "adapter_config.json"),
    "compress": (lambda base, a, out, **o: lk.compress(a, out, rank=2, **o), "adapter_config.json"),
    "export_merged": (
        lambda base, a, out, **o: lk.export_merged([(a, 1.0)], out, base=str(base), **o),
        "lorakit_merge.json",
    ),
    "save_adapter": (_save, "adapter_config.json"),
}


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _occupied(out: Path) -> dict[str, bytes]:
    (out / "notes").mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    (out / "notes" / "draft.md").write_text("# not an adapter")
    return _tree(out)


@pytest.mark.parametrize("name", [*WRITERS, "Trainer.fit"])
def test_a_directory_that_holds_something_is_refused_and_left_untouched(name, base, adapter, tmp_path):
    out = tmp_path / "out"
    before = _occupied(out)
    write = _train if name == "Trainer.fit" else WRITERS[name][0]
    with pytest.raises(OutputExistsError, match=rf"{out}: the \w+ directory is not empty \(it holds keep\.txt, notes"):
        write(base, adapter, out)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left behind


@pytest.mark.parametrize("name", list(WRITERS))
def test_overwrite_replaces_the_directory_whole_and_an_empty_one_needs_no_flag(name, base, adapter, tmp_path):
    write, marker = WRITERS[name]
    (tmp_path / "empty").mkdir()
    write(base, adapter, tmp_path / "empty")
    out = tmp_path / "out"
    _occupied(out)
    write(base, adapter, out, overwrite=True)
    assert (out / marker).is_file() and not (out / "keep.txt").exists() and not (out / "notes").exists()
    assert {p.name for p in out.iterdir()} == {p.name for p in (tmp_path / "empty").iterdir()}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out"]


@pytest.mark.parametrize("name", list(WRITERS))
def test_overwrite_that_fails_before_the_rename_keeps_the_old_directory(name, base, adapter, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = _occupied(out)

    def full_disk(staging, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "_replace_dir", full_disk)
    with pytest.raises(OSError, match="No space left"):
        WRITERS[name][0](base, adapter, out, overwrite=True)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_trainer_overwrite_starts_the_run_over(base, adapter, tmp_path):
    out = tmp_path / "run"
    _train(base, adapter, out)
    (out / "adapter" / "adapter_config.json").write_text("{}")  # an old run's adapter, now unreadable
    (out / "keep.txt").write_text("mine")
    _train(base, adapter, out, overwrite=True)
    assert lk.read_adapter(out / "adapter").config.r == 4
    assert (out / "keep.txt").read_text() == "mine"  # not a run's file: starting over leaves it


def test_compress_in_place_with_overwrite_reports_the_sizes_before_and_after(adapter, tmp_path):
    copy = shutil.copytree(adapter, tmp_path / "adapter")
    size = (copy / "adapter_model.safetensors").stat().st_size
    report = lk.compress(copy, copy, rank=2, overwrite=True)
    assert report.bytes_before == size and report.bytes_after == (copy / "adapter_model.safetensors").stat().st_size
    assert report.bytes_after < size and lk.read_adapter(copy).config.r == 2


def test_the_compress_command_in_place_needs_no_sample(adapter, tmp_path, capsys, monkeypatch):
    copy = shutil.copytree(adapter, tmp_path / "adapter")
    before = _tree(copy)
    code, _, err = run_cli(capsys, monkeypatch, "compress", str(copy), "--rank", "2", "--out", str(copy), "--overwrite")
    assert code == 2 and "is the adapter being compressed" in err and "--no-sample" in err and _tree(copy) == before
    args = ["compress", str(copy), "--rank", "2", "--out", str(copy), "--overwrite", "--no-sample"]
    code, _, err = run_cli(capsys, monkeypatch, *args)
    assert code == 0, err
    assert lk.read_adapter(copy).config.r == 2
