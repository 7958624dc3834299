"""Membership-attack evaluation shared by the experiments: metric rows and table cells."""

from __future__ import annotations

import numpy as np

from simulations.leak.metrics import roc_auc, tpr_at_fpr_with_interval

# (column suffix, false-positive rate) of the low-FPR operating points we report.
FPR_POINTS = (("1%", 0.01), ("0.1%", 0.001))


def membership_metrics(scores: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """AUC and TPR at each FPR point with its 95 % Clopper-Pearson interval.

    Parameters
    ----------
    scores : (n,) attack scores, larger = more likely a member.
    is_member : (n,) bool ground truth.

    Returns
    -------
    ``auc``, ``tpr@1%``, ``tpr@1%_lo``, ``tpr@1%_hi`` and the same for 0.1 %, plus the counts
    ``members`` and ``non_members`` (an FPR below 1 / non_members means zero false positives).
    """
    row: dict[str, float] = {"auc": roc_auc(scores, is_member)}
    for name, fpr in FPR_POINTS:
        tpr, low, high = tpr_at_fpr_with_interval(scores, is_member, fpr)
        row.update({f"tpr@{name}": tpr, f"tpr@{name}_lo": low, f"tpr@{name}_hi": high})
    row["members"] = int(np.sum(is_member))
    row["non_members"] = int(np.size(is_member) - np.sum(is_member))
    return row


def tpr_cell(row: dict[str, float], name: str) -> str:
    """'tpr [lo, hi]' for a markdown table, from a `membership_metrics` row."""
    return f"{row[f'tpr@{name}']:.3f} [{row[f'tpr@{name}_lo']:.3f}, {row[f'tpr@{name}_hi']:.3f}]"
