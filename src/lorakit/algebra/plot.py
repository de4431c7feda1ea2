"""The spectrum plot: where an adapter's update lives, at a glance.

Four panels: normalised singular values ``σᵢ/σ₁`` of every module (median per module kind in bold), the
cumulative energy ``Σ_{i≤k} σᵢ² / Σ σᵢ²`` with the 90% and 99% lines, and two layer × kind maps — ‖ΔW‖_F
and the rank that keeps the suggested energy.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from lorakit.algebra.spectrum import KIND_ORDER, Spectrum
from lorakit.core.files import atomic


def _kind_colors(kinds: list[str]) -> dict[str, tuple]:
    import matplotlib

    palette = matplotlib.colormaps["tab10"]
    return {kind: palette(i % 10) for i, kind in enumerate(kinds)}


def _median_curve(curves: list[list[float]]) -> np.ndarray:
    width = max(len(c) for c in curves)
    padded = np.full((len(curves), width), np.nan)
    for i, c in enumerate(curves):
        padded[i, : len(c)] = c
    return np.nanmedian(padded, axis=0)


def _layer_map(spectrum: Spectrum, kinds: list[str], value) -> tuple[np.ndarray, list[int]]:
    layers = sorted({m.layer for m in spectrum.modules if m.layer is not None})
    grid = np.full((len(kinds), len(layers)), np.nan)
    for m in spectrum.modules:
        if m.layer is not None:
            grid[kinds.index(m.kind), layers.index(m.layer)] = value(m)
    return grid, layers


def plot_spectrum(spectrum: Spectrum, path: str | Path, title: str | None = None) -> Path:
    """Draw ``spectrum`` into a PNG (or any format matplotlib knows from the suffix) at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = sorted(
        {m.kind for m in spectrum.modules},
        key=lambda k: (KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER), k),
    )
    colors = _kind_colors(kinds)
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5), gridspec_kw={"height_ratios": [1.15, 1]})
    (ax_sv, ax_energy), (ax_norm, ax_rank) = axes
    for kind in kinds:
        members = [m for m in spectrum.modules if m.kind == kind and m.singular_values and m.singular_values[0] > 0]
        if not members:
            continue
        normalised = [[s / m.singular_values[0] for s in m.singular_values] for m in members]
        energies = [m.energy for m in members]
        for curve, energy in zip(normalised, energies):
            x = np.arange(1, len(curve) + 1)
            ax_sv.plot(x, curve, color=colors[kind], alpha=0.18, linewidth=0.8)
            ax_energy.plot(x, energy, color=colors[kind], alpha=0.18, linewidth=0.8)
        median_sv, median_energy = _median_curve(normalised), _median_curve(energies)
        x = np.arange(1, len(median_sv) + 1)
        ax_sv.plot(x, median_sv, color=colors[kind], linewidth=2.4, label=f"{kind} ({len(members)})")
        ax_energy.plot(x, median_energy, color=colors[kind], linewidth=2.4, label=kind)
    ax_sv.set_yscale("log")
    ax_sv.set(title="Singular values of ΔW = s·B·A, normalised (σᵢ / σ₁)", xlabel="direction i", ylabel="σᵢ / σ₁")
    ax_sv.legend(title="module kind (count)", fontsize=8, ncol=2)
    for level, style in ((0.9, "--"), (0.99, ":")):
        ax_energy.axhline(level, color="0.3", linestyle=style, linewidth=1)
        ax_energy.text(
            1.02,
            level,
            f"{level:.0%}",
            va="center",
            ha="left",
            fontsize=8,
            color="0.3",
            transform=ax_energy.get_yaxis_transform(),
        )
    ax_energy.set(title="Cumulative energy Σᵢ≤ₖ σᵢ² / Σ σᵢ²", xlabel="rank k", ylabel="energy kept", ylim=(0, 1.02))
    for ax, (value, label, cmap) in zip(
        (ax_norm, ax_rank),
        (
            (lambda m: m.frobenius, "‖ΔW‖_F by layer and module", "magma"),
            (lambda m: m.suggested_rank, f"Rank keeping {spectrum.suggest_energy:.0%} of the energy", "viridis"),
        ),
    ):
        grid, layers = _layer_map(spectrum, kinds, value)
        if not layers:
            ax.set_axis_off()
            continue
        image = ax.imshow(grid, aspect="auto", cmap=cmap, interpolation="nearest")
        ax.set_yticks(range(len(kinds)), kinds)
        step = max(1, len(layers) // 15)
        ax.set_xticks(range(0, len(layers), step), [str(layers[i]) for i in range(0, len(layers), step)])
        ax.set(title=label, xlabel="layer")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    ranks = sorted({m.rank for m in spectrum.modules})
    heading = title or "/".join(Path(spectrum.path).parts[-2:])
    fig.suptitle(
        f"{heading} — {len(spectrum.modules)} modules, r = {', '.join(map(str, ranks))}, "
        f"‖ΔW‖_F total {spectrum.total_frobenius:.3g}",
        fontsize=13,
    )
    fig.tight_layout()
    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=path.suffix.lstrip(".") or "png", dpi=110)
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
    return path
