"""The loss curve: training loss per step and eval loss per evaluation, from ``metrics.jsonl``, as a PNG."""

from __future__ import annotations

import io
import json
from pathlib import Path

from lorakit import atomic


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Write ``png_path``; ``None`` when there is nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if "eval_loss" in record:
            evals.append((record["step"], record["eval_loss"]))
        elif "loss" in record:
            train.append((record["step"], record["loss"]))
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy per response token")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic.write_bytes(png_path, buffer.getvalue())
    return png_path
