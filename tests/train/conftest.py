"""Fixtures shared by the training tests."""

from __future__ import annotations

import pytest
import torch

from lorakit.cli.quickstart import tiny_base
from lorakit.core import bases


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and on a busy machine OpenMP's spinning threads lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base():
    """A 2-layer random Llama with the default model's tokenizer, saved once under the shared model cache."""
    return str(tiny_base(bases.lorakit_home() / "models" / "tiny-demo"))
