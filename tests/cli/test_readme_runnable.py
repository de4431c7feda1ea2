"""The README stays true: every code block marked ``<!-- runnable -->`` runs as written, in order, in one empty
directory (Python blocks with this interpreter, shell blocks with bash and the installed ``lorakit`` on PATH)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
_BLOCK = re.compile(r"<!-- runnable -->\n```(python|bash)\n(.*?)\n```", re.S)


def runnable_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of each block marked runnable, in README order."""
    return _BLOCK.findall(text)


def test_the_marker_finds_python_and_bash_blocks():
    text = (
        "x\n<!-- runnable -->\n```python\nprint(1)\n```\n```bash\nnot marked\n```\n"
        "<!-- runnable -->\n```bash\necho 2\n```\n"
    )
    assert runnable_blocks(text) == [("python", "print(1)"), ("bash", "echo 2")]


def test_every_runnable_readme_block_runs_as_written(tmp_path):
    blocks = runnable_blocks(README.read_text(encoding="utf-8"))
    assert {language for language, _ in blocks} == {"python", "bash"}
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
    }
    env.pop("LORAKIT_REGISTRY", None)
    for index, (language, code) in enumerate(blocks):
        script = tmp_path / f"block{index}.{'py' if language == 'python' else 'sh'}"
        script.write_text(code + "\n")
        command = [sys.executable, str(script)] if language == "python" else ["bash", "-euo", "pipefail", str(script)]
        done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (
            f"README block {index} ({language}) failed:\n{code}\n--- stderr:\n{done.stderr[-2000:]}"
        )
