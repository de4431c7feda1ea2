"""Shared fixtures: tiny random models built from transformers configs (nothing is downloaded)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
import torch

from tests.helpers import tiny_bert, tiny_gpt2, tiny_llama


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Every test gets its own LORAKIT_HOME except for the shared default-model cache."""
    home = tmp_path_factory.mktemp("lorakit_home")
    models = _shared_models_dir()
    (home / "models").symlink_to(models, target_is_directory=True)
    monkeypatch.setenv("LORAKIT_HOME", str(home))
    torch.manual_seed(0)


def _shared_models_dir():
    from pathlib import Path

    root = Path(os.environ.get("LORAKIT_TEST_MODELS", Path.home() / ".cache" / "lorakit" / "models"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


@pytest.fixture
def bert():
    return tiny_bert()
