"""Adapter files with bad content are refused at load, naming the file and the tensor or key, and the model is left
untouched: NaN/inf values, LoRA factors that are not floating point, a lorakit.json whose fields have the wrong
type. Every command that reads an adapter therefore stops with one line and exit code 2."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import lorakit as lk
from lorakit.core.errors import AdapterFileError
from tests.helpers import run_cli, tiny_llama
from tests.registry.support import make_adapter

WEIGHTS = "adapter_model.safetensors"


def _first(tensors, part):
    return sorted(k for k in tensors if part in k)[0]


def _poke(value, part):
    def edit(tensors):
        tensors[_first(tensors, part)].view(-1)[3] = value
        return tensors

    return edit


# (label, edit of the saved tensors, the error it must give — a regex)
BAD_TENSORS = [
    ("NaN in lora_B", _poke(float("nan"), "lora_B"), r"lora_B\.weight holds 1 non-finite value\(s\) \(1 NaN, 0 inf\)"),
    ("+inf in lora_A", _poke(float("inf"), "lora_A"), r"lora_A\.weight holds 1 non-finite value\(s\) \(0 NaN, 1 inf\)"),
    (
        "-inf in fp16",
        lambda t: {k: v.half() for k, v in _poke(float("-inf"), "lora_B")(t).items()},
        r"\(0 NaN, 1 inf\)",
    ),
    (
        "int8 factors",
        lambda t: {k: (v * 100).to(torch.int8) for k, v in t.items()},
        r"lora_A\.weight is int8, not floating point",
    ),
    ("bool factors", lambda t: {k: v != 0 for k, v in t.items()}, r"lora_A\.weight is bool, not floating point"),
    (
        "one int32 factor",
        lambda t: {**t, _first(t, "lora_B"): t[_first(t, "lora_B")].to(torch.int32)},
        r"lora_B\.weight is int32, not floating point",
    ),
]

BAD_META = [
    (
        "fingerprint a number",
        lambda m: m["base"].update(fingerprint=12345),
        r"base\.fingerprint must be string \(or null\), got int 12345",
    ),
    ("base a string", lambda m: m.update(base="tiny"), r"base must be object \(or null\), got str 'tiny'"),
    ("tags a string", lambda m: m.update(tags="prod"), r"tags must be array"),
    ("tag a number", lambda m: m.update(tags=["ok", 3]), r"tags\.1 must be string"),
    ("parameters a float", lambda m: m["base"].update(parameters=1.5), r"base\.parameters must be integer"),
    (
        "lineage parents a dict",
        lambda m: m.update(lineage={"parents": {"path": "x"}}),
        r"lineage\.parents must be array",
    ),
    ("top level a list", lambda m: [m], r"the top level must be object"),
]


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("adapters") / "good")


def _variant(good, tmp_path, tensors=None, meta=None):
    directory = tmp_path / "adapter"
    shutil.copytree(good, directory)
    if tensors is not None:
        save_file(tensors(load_file(str(directory / WEIGHTS))), str(directory / WEIGHTS), metadata={"format": "pt"})
    if meta is not None:
        data = json.loads((directory / "lorakit.json").read_text())
        data = meta(data) or data
        (directory / "lorakit.json").write_text(json.dumps(data))
    return directory


@pytest.mark.parametrize("label,edit,error", BAD_TENSORS, ids=[b[0] for b in BAD_TENSORS])
def test_bad_tensors_are_refused_and_the_model_is_untouched(good, tmp_path, label, edit, error):
    directory = _variant(good, tmp_path, tensors=edit)
    model = tiny_llama()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    with pytest.raises(AdapterFileError, match=rf"{WEIGHTS}: tensor base_model\.model\.model\.layers\.\d+\..*{error}"):
        lk.load_adapter(model, directory)
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[n], before[n]) for n in before)


@pytest.mark.parametrize("label,edit,error", BAD_META, ids=[b[0] for b in BAD_META])
def test_a_lorakit_json_with_wrong_types_is_refused_naming_the_key(good, tmp_path, label, edit, error):
    directory = _variant(good, tmp_path, meta=edit)
    with pytest.raises(AdapterFileError, match=rf"lorakit\.json: .*{error}"):
        lk.read_adapter(directory)


def test_extra_lorakit_json_fields_and_nulls_are_accepted(good, tmp_path):
    directory = _variant(good, tmp_path, meta=lambda m: m.update(team={"any": "thing"}, description=None, tags=None))
    assert lk.read_adapter(directory).meta["team"] == {"any": "thing"}


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "{d}"],
        ["compress", "{d}", "--rank", "2", "--out", "{o}", "--no-sample"],
        ["combine", "{d}", "{d}", "--out", "{o}"],
    ],
)
def test_commands_that_read_an_adapter_fail_with_one_line(good, tmp_path, capsys, monkeypatch, command):
    directory = _variant(good, tmp_path, tensors=_poke(float("nan"), "lora_B"))
    args = [a.format(d=directory, o=tmp_path / "out") for a in command]
    code, out, err = run_cli(capsys, monkeypatch, *args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "non-finite" in err
    assert not (tmp_path / "out").exists()
