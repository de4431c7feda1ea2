"""Loading a base model: hub ids without a network fail at once in one line; the conversion cache is shared."""

from __future__ import annotations

import os
import stat
import time

import pytest

from lorakit.core import bases
from lorakit.core.errors import ModelLoadError
from tests.helpers import run_cli


@pytest.mark.parametrize("offline", [False, True])
def test_an_uncached_hub_id_with_no_hub_is_one_clear_error_at_once(monkeypatch, offline):
    from huggingface_hub import constants

    monkeypatch.setattr(bases, "_reachable", lambda host, timeout=3.0: False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as err:
        bases.load("someorg/no-such-model")
    message = str(err.value)
    assert "\n" not in message and "'someorg/no-such-model'" in message and "cannot be reached" in message
    assert ("HF_HUB_OFFLINE" in message) == offline
    assert time.monotonic() - started < 30  # no retry loop (a minute of backoff before)


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bases, "_reachable", lambda host, timeout=3.0: False)
    config = tmp_path / "run.yaml"
    config.write_text(
        f"base: someorg/no-such-model\noutput: {tmp_path / 'out'}\ndata:\n  train: {tmp_path / 'train.jsonl'}\n"
    )
    (tmp_path / "train.jsonl").write_text('{"prompt": "a", "completion": "b"}\n')
    code, _, err = run_cli(capsys, monkeypatch, "train", str(config))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "someorg/no-such-model" in lines[0] and "cannot be reached" in lines[0]


def test_a_staged_directory_is_readable_by_the_group_whoever_wrote_its_files(tmp_path):
    """The model conversion cache is written through ``atomic.directory``; safetensors creates its file 0600."""
    from lorakit.core.files import atomic

    old = os.umask(0o022)
    try:
        with atomic.directory(tmp_path / "model") as staging:
            private = staging / "model.safetensors"
            private.write_bytes(b"x")
            os.chmod(private, 0o600)
            (staging / "sub").mkdir(mode=0o700)
            (staging / "sub" / "f").write_text("y")
    finally:
        os.umask(old)
    for path in [tmp_path / "model", *(tmp_path / "model").rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o755 if path.is_dir() else 0o644), (path, oct(mode))


def test_the_gguf_conversion_reads_the_file_once_and_restores_gguf(monkeypatch):
    """transformers parses the GGUF three times (config, weights, tokenizer); the conversion memoises the reader
    and the tensor-name table for its duration only (the converted files were compared byte for byte once)."""
    import gguf

    built = []

    class Reader:
        def __init__(self, path, mode="r"):
            built.append((path, mode))

    monkeypatch.setattr(gguf, "GGUFReader", Reader)
    with bases._gguf_read_once():
        first, again, other = gguf.GGUFReader("/m.gguf"), gguf.GGUFReader("/m.gguf"), gguf.GGUFReader("/n.gguf")
        names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2)
        assert first is again and other is not first and gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is names
    assert built == [("/m.gguf", "r"), ("/n.gguf", "r")]
    assert gguf.GGUFReader is Reader and gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is not names
