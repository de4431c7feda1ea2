"""The loss curve: training loss per step and eval loss per evaluation, from ``metrics.jsonl``, as a PNG."""

from __future__ import annotations

import io
import json
from pathlib import Path

from lorakit.core.files import atomic

_TERMS = {
    "task_loss": "task loss",
    "drift_kl": "drift guard KL (general text)",
    "batch_kl": "drift guard KL (batch, non-target)",
    "reward_accuracy": "preference accuracy",
}


def plot_losses(metrics_path: Path, png_path: Path) -> Path | None:
    """Write ``png_path``; ``None`` when there is nothing to plot.

    The drift guard's terms (``drift_kl``, ``batch_kl``) and the task loss (when it differs from the loss) share
    the axes with the loss; DPO's preference accuracy goes on a second axis (0–1).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, evals = [], []
    terms: dict[str, list[tuple[int, float]]] = {key: [] for key in _TERMS}
    for line in metrics_path.read_text().splitlines():
        record = json.loads(line)
        if "eval_loss" in record:
            evals.append((record["step"], record["eval_loss"]))
        elif "loss" in record:
            train.append((record["step"], record["loss"]))
            for key in _TERMS:
                if key in record and record[key] > 0:
                    terms[key].append((record["step"], record[key]))
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train), label="train loss", linewidth=1)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    for key, label in _TERMS.items():
        if terms[key] and key != "reward_accuracy":
            ax.plot(*zip(*terms[key]), label=label, linewidth=1)
    ax.set_xlabel("step")
    ax.set_ylabel("loss per unit (response token or pair)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if terms["reward_accuracy"]:
        right = ax.twinx()
        right.plot(*zip(*terms["reward_accuracy"]), color="tab:green", linewidth=1, label=_TERMS["reward_accuracy"])
        right.set_ylim(0, 1.02)
        right.set_ylabel("preference accuracy")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic.write_bytes(png_path, buffer.getvalue())
    return png_path
