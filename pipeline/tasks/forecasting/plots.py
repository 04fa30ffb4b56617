"""Figures of the forecasting evaluation, drawn on figures of their own (no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

LABELS = {
    "model": "RNN",
    "naive_day": "seasonal naive, lag 1 day",
    "naive_week": "seasonal naive, lag 1 week",
    "ridge": "ridge regression",
}


def _figure(width: float, height: float) -> tuple[Figure, object]:
    """A figure with one axes, rendered by Agg."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure, figure.subplots()


def plot_horizon(curves: dict[str, dict[str, np.ndarray]], metric: str, path: Path) -> Path:
    """One line per forecaster: the metric at each horizon step."""
    figure, axes = _figure(7, 4)
    for name, c in curves.items():
        axes.plot(np.arange(1, len(c[metric]) + 1), c[metric], label=LABELS.get(name, name))
    axes.set_xlabel("horizon step (half-hours ahead)")
    axes.set_ylabel(f"test {metric.upper()}")
    axes.set_title(f"Test {metric.upper()} by horizon step")
    axes.legend()
    figure.savefig(path, dpi=100)
    return path


def plot_week(rows: list[dict[str, float | str]], path: Path) -> Path:
    """The actual demand and each forecaster's day-ahead forecasts over the chosen test days."""
    figure, axes = _figure(11, 4)
    x = np.asarray([r["timestamp"] for r in rows], dtype="datetime64[m]")
    axes.plot(x, [r["actual"] for r in rows], color="black", linewidth=2, label="actual")
    for name in (k for k in rows[0] if k not in ("timestamp", "actual")):
        axes.plot(x, [r[name] for r in rows], linewidth=1, label=LABELS.get(name, name))
    axes.set_ylabel("demand (GW)")
    axes.set_title("Test days: forecasts made at each midnight for the day ahead")
    axes.legend(ncols=3, fontsize="small")
    figure.savefig(path, dpi=100)
    return path


def plot_flow_over_history(curve: np.ndarray, day: int, path: Path) -> Path:
    """‖∂L/∂h_t‖ over the history on a log scale, with last week's and yesterday's hours marked."""
    figure, axes = _figure(9, 4)
    t = np.arange(len(curve))
    axes.plot(t, curve, color="tab:blue")
    axes.axvspan(0, day - 1, color="tab:orange", alpha=0.2, label="last week, forecast hours")
    start = len(curve) - day
    axes.axvspan(start, len(curve) - 1, color="tab:green", alpha=0.2, label="yesterday")
    axes.set_yscale("log", nonpositive="mask")
    axes.set_xlabel("history step t (0 = a week before the origin)")
    axes.set_ylabel("mean ‖∂L/∂h_t‖ (test windows)")
    axes.set_title("Gradient flow over the history window")
    axes.legend()
    figure.savefig(path, dpi=100)
    return path
