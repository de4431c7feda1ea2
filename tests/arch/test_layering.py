"""The layering of ARCHITECTURE.md holds in the source and in ``sys.modules``, with no import cycles."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.arch.import_graph import LAYERS, cycles, graph, layer_of, modules

HIGHER_THAN_CORE = [layer for layer in LAYERS if layer != "core"]
HEAVY = (
    "torch",
    "transformers",
    "safetensors",
    "sqlalchemy",
    "fastapi",
    "optuna",
    "datasets",
    "matplotlib",
    "bitsandbytes",
    "peft",
)


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_no_module_imports_a_higher_layer():
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    violations = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        for target in targets
        if layer_of(module) and layer_of(target) and rank[layer_of(target)] > rank[layer_of(module)]
    ]
    assert violations == []


def test_there_are_no_import_cycles():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_importing_each_core_module_loads_nothing_above_core():
    core = sorted(m for m in modules() if m.startswith("lorakit.core"))
    code = f"""
import importlib, json, sys
blamed = {{}}
for name in {core!r}:
    before = set(sys.modules)
    importlib.import_module(name)
    above = sorted(m for m in set(sys.modules) - before
                   if m.split(".")[0] == "lorakit" and len(m.split(".")) > 1
                   and m.split(".")[1] in {HIGHER_THAN_CORE!r})
    if above:
        blamed[name] = above
print(json.dumps(blamed))
"""
    assert json.loads(_run(code)) == {}


def test_import_lorakit_is_lazy_and_the_facade_still_exposes_every_name():
    code = f"""
import json, sys
import lorakit
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
names = [n for n in lorakit.__all__ if getattr(lorakit, n, None) is None]
print(json.dumps([heavy, names]))
"""
    heavy, missing = json.loads(_run(code))
    assert heavy == [] and missing == []


def test_lorakit_help_imports_no_heavy_module():
    code = f"""
import json, sys
from lorakit.cli.app import main
sys.argv = ["lorakit", "--help"]
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))))
"""
    assert json.loads(_run(code)) == []


def test_old_import_paths_are_the_same_modules():
    code = """
import json
import lorakit.core.errors, lorakit.errors, lorakit.core.layers.linear, lorakit.layers.linear
import lorakit.io, lorakit.core.files
print(json.dumps([lorakit.errors is lorakit.core.errors, lorakit.layers.linear is lorakit.core.layers.linear,
                  lorakit.io is lorakit.core.files]))
"""
    assert json.loads(_run(code)) == [True, True, True]
