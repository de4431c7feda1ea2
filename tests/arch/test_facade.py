"""Names the README's Python API uses are on the lazy facade and load their module only when first used."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.arch.test_layering import HEAVY

FACADE = {  # name -> (module it lives in, attribute)
    "merged_adapters": ("lorakit.core.merge", "merged_adapters"),
    "merge": ("lorakit.core.merge", "merge"),
    "combine": ("lorakit.algebra.combine", "combine"),
    "export_merged": ("lorakit.algebra.export", "export_merged"),
}


def test_facade_names_load_their_modules_on_first_use_only():
    code = f"""
import importlib, json, sys
import lorakit as lk
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))
loaded = sorted(module for module, _ in {FACADE!r}.values() if module in sys.modules)
found = {{name: getattr(lk, name) is getattr(importlib.import_module(module), attribute)
         and name in lk.__all__ and name in dir(lk) for name, (module, attribute) in {FACADE!r}.items()}}
print(json.dumps([heavy, loaded, found]))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    heavy, loaded, found = json.loads(done.stdout.strip().splitlines()[-1])
    assert heavy == [] and loaded == [] and found == dict.fromkeys(FACADE, True)


def test_merged_adapters_lists_what_the_weights_hold():
    import lorakit as lk
    from tests.helpers import tiny_llama

    model = tiny_llama()
    lk.inject(model, lk.LoraConfig(r=2, targets=["q_proj"]), name="a")
    lk.inject(model, lk.LoraConfig(r=2, targets=["v_proj"]), name="b")
    assert lk.merged_adapters(model) == []
    lk.merge(model, ["a", "b"])
    assert lk.merged_adapters(model) == ["a", "b"]
    lk.unmerge(model)
    assert lk.merged_adapters(model) == []
