"""Log-log ROC plots for membership-inference attacks (the view of Carlini et al. 2022)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Axis anchor when no curve has a positive FPR.
_DEFAULT_MIN_RATE = 1e-5


def plot_roc_loglog(
    curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str | Path, title: str = ""
) -> Path:
    """Draw ROC curves on log-log axes with the chance line, and save the figure.

    Low false-positive rates are where membership inference matters, so both axes are
    logarithmic; points at a rate of 0 fall off the axes. Rendering uses the Agg canvas
    directly, so it needs no display and leaves pyplot's global state alone.

    Parameters
    ----------
    curves : label -> (fpr, tpr), each a 1-D array of equal length sorted by fpr (as returned
        by `simulations.leak.metrics.roc_curve`). The legend shows each curve's trapezoidal AUC.
    path : output file; its suffix picks the format (.png, .pdf, .svg). Parents are created.
    title : optional figure title.

    Returns
    -------
    The path written.
    """
    if not curves:
        raise ValueError("curves must contain at least one (fpr, tpr) pair")
    figure = Figure(figsize=(4.5, 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positive_fprs = []
    for label, (fpr, tpr) in curves.items():
        fpr, tpr = np.asarray(fpr, dtype=np.float64), np.asarray(tpr, dtype=np.float64)
        if fpr.ndim != 1 or fpr.shape != tpr.shape:
            raise ValueError(
                f"curve {label!r}: fpr and tpr must be 1-D of equal length, got {fpr.shape} "
                f"and {tpr.shape}"
            )
        axes.plot(fpr, tpr, label=f"{label} (AUC = {np.trapezoid(tpr, fpr):.3f})")
        positive_fprs.append(fpr[fpr > 0])
    all_positive = np.concatenate(positive_fprs)
    # Half the smallest positive FPR, so the first step (TPR at FPR = 0) stays in view.
    lower = (all_positive.min() if all_positive.size else _DEFAULT_MIN_RATE) / 2
    axes.plot([lower, 1.0], [lower, 1.0], "k--", linewidth=0.8, label="chance")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlim(lower, 1.0)
    axes.set_ylim(lower, 1.0)
    axes.set_xlabel("false-positive rate")
    axes.set_ylabel("true-positive rate")
    if title:
        axes.set_title(title)
    axes.legend(loc="lower right")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=150)
    return path
