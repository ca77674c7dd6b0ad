"""The width-profile figure: per layer, the MLP hidden width kept by pruning against the original width.

Drawn on a bare ``matplotlib.figure.Figure`` (Agg canvas, no pyplot), so it needs no display, touches no
global pyplot state and is safe to call from any thread.
"""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

KEPT_COLOR = "#1f77b4"
ORIGINAL_COLOR = "#d9d9d9"
MAX_ANNOTATED_LAYERS = 32  # beyond this, per-bar percentages overlap


def width_profile_png(widths: list[int], original_widths: list[int] | None = None, title: str | None = None) -> bytes:
    """PNG bytes of a bar chart of ``widths`` per layer, over grey bars of ``original_widths`` when known."""
    layers = list(range(len(widths)))
    figure = Figure(figsize=(min(12.0, max(6.0, 0.4 * len(widths) + 2.5)), 3.8), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if original_widths is not None:
        axes.bar(layers, original_widths, width=0.8, color=ORIGINAL_COLOR, label="original")
    bars = axes.bar(layers, widths, width=0.55 if original_widths else 0.8, color=KEPT_COLOR, label="kept")

    if original_widths is not None and len(widths) <= MAX_ANNOTATED_LAYERS:
        labels = [f"{100 * kept / total:.0f}%" for kept, total in zip(widths, original_widths, strict=True)]
        axes.bar_label(bars, labels=labels, padding=2, fontsize=7)
    top = max(original_widths or widths)
    axes.set_ylim(0, top * 1.12)
    axes.set_xlim(-0.6, len(widths) - 0.4)
    step = 1 if len(widths) <= 24 else 2 if len(widths) <= 48 else 4
    axes.set_xticks(layers[::step])
    axes.set_xlabel("layer")
    axes.set_ylabel("MLP hidden neurons")
    axes.grid(axis="y", alpha=0.3)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    if original_widths is not None:
        axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
    axes.set_title(title or default_title(widths, original_widths), fontsize=10)

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def default_title(widths: list[int], original_widths: list[int] | None) -> str:
    kept = sum(widths)
    if original_widths is None:
        return f"MLP width per layer ({kept:,} hidden neurons)"
    total = sum(original_widths)
    return f"MLP width per layer: {kept:,} of {total:,} hidden neurons kept ({100 * kept / total:.1f}%)"
