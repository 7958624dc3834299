"""Membership-inference attack metrics: ROC, AUC, TPR at low FPR and exact binomial intervals.

Convention throughout: an attack flags an example as a member when its score is >= a threshold,
so larger scores mean "more likely a member".
"""

from __future__ import annotations

import numpy as np
from scipy import stats


def roc_curve(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve of a membership score, one point per distinct threshold.

    Parameters
    ----------
    scores : (n,) attack scores, larger = more likely a member; NaN is not allowed.
    is_member : (n,) bool (or 0/1) ground truth; both classes must be present.

    Returns
    -------
    fpr, tpr : (m + 1,) float64 each, where m is the number of distinct scores. Points run from
        (0, 0) (threshold above every score) to (1, 1). Tied scores move together: a tie between
        members and non-members is one diagonal step, never split in the attack's favour.
    """
    false_positives, true_positives, n_negatives, n_positives = _roc_counts(scores, is_member)
    return false_positives / n_negatives, true_positives / n_positives


def roc_auc(scores: np.ndarray, is_member: np.ndarray) -> float:
    """Area under the ROC curve, via the Mann-Whitney U statistic.

    AUC = U / (n_pos · n_neg): the probability that a random member outscores a random
    non-member, a tie counting 1/2. Equals the trapezoidal area under `roc_curve`.

    Parameters
    ----------
    scores : (n,) attack scores, larger = more likely a member.
    is_member : (n,) bool ground truth; both classes must be present.

    Returns
    -------
    AUC in [0, 1]; 0.5 is chance.
    """
    scores, is_member = _validated(scores, is_member)
    n_positives = int(is_member.sum())
    n_negatives = is_member.size - n_positives
    ranks = stats.rankdata(scores)  # (n,) average ranks, so ties share credit equally
    u_statistic = ranks[is_member].sum() - n_positives * (n_positives + 1) / 2.0
    return float(u_statistic / (n_positives * n_negatives))


def tpr_at_fpr(scores: np.ndarray, is_member: np.ndarray, fpr_target: float) -> float:
    """Highest TPR over the thresholds whose FPR is <= `fpr_target` (Carlini et al. 2022).

    Parameters
    ----------
    scores : (n,) attack scores, larger = more likely a member.
    is_member : (n,) bool ground truth; both classes must be present.
    fpr_target : allowed false-positive rate in [0, 1]. Below 1 / n_neg only FPR = 0 qualifies.

    Returns
    -------
    TPR in [0, 1].
    """
    flagged_members, n_positives = _flagged_members_at_fpr(scores, is_member, fpr_target)
    return flagged_members / n_positives


def tpr_at_fpr_with_interval(
    scores: np.ndarray, is_member: np.ndarray, fpr_target: float, confidence: float = 0.95
) -> tuple[float, float, float]:
    """`tpr_at_fpr` with its Clopper-Pearson interval over the members.

    The interval treats the chosen threshold as fixed and counts flagged members out of all
    members; it does not cover the sampling error of the FPR itself, which at low targets rests
    on only fpr_target · n_neg false positives.

    Parameters
    ----------
    scores : (n,) attack scores, larger = more likely a member.
    is_member : (n,) bool ground truth; both classes must be present.
    fpr_target : allowed false-positive rate in [0, 1].
    confidence : two-sided coverage of the interval, in (0, 1).

    Returns
    -------
    (tpr, low, high), each in [0, 1].
    """
    flagged_members, n_positives = _flagged_members_at_fpr(scores, is_member, fpr_target)
    low, high = clopper_pearson(flagged_members, n_positives, confidence)
    return flagged_members / n_positives, low, high


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson 1934) two-sided interval for a binomial proportion.

    Parameters
    ----------
    successes : number of successes, 0 <= successes <= trials.
    trials : number of trials, >= 1.
    confidence : two-sided coverage in (0, 1), e.g. 0.95.

    Returns
    -------
    (low, high) in [0, 1]: the α/2 quantile of Beta(x, n − x + 1) and the 1 − α/2 quantile of
    Beta(x + 1, n − x), with low = 0 when x = 0 and high = 1 when x = n.
    """
    successes, trials = _count("successes", successes), _count("trials", trials)
    if trials < 1 or successes > trials:
        raise ValueError(
            f"need 0 <= successes <= trials and trials >= 1, got {successes} of {trials}"
        )
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    alpha = 1.0 - confidence
    low = 0.0 if successes == 0 else stats.beta.ppf(alpha / 2, successes, trials - successes + 1)
    high = (
        1.0
        if successes == trials
        else stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
    )
    return float(low), float(high)


def _roc_counts(
    scores: np.ndarray, is_member: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Cumulative (false, true) positive counts per distinct threshold, plus class sizes."""
    scores, is_member = _validated(scores, is_member)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_members = scores[order], is_member[order]
    # A threshold separates examples only between distinct scores: keep the last of each tie.
    group_ends = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    true_positives = np.r_[0, np.cumsum(sorted_members)[group_ends]]  # (m + 1,)
    false_positives = np.r_[0, np.cumsum(~sorted_members)[group_ends]]  # (m + 1,)
    n_positives = int(true_positives[-1])
    return false_positives, true_positives, is_member.size - n_positives, n_positives


def _flagged_members_at_fpr(
    scores: np.ndarray, is_member: np.ndarray, fpr_target: float
) -> tuple[int, int]:
    """Most members flagged by a threshold with FPR <= `fpr_target`, and the number of members."""
    if not 0.0 <= fpr_target <= 1.0:
        raise ValueError(f"fpr_target must be in [0, 1], got {fpr_target}")
    false_positives, true_positives, n_negatives, n_positives = _roc_counts(scores, is_member)
    admissible = false_positives / n_negatives <= fpr_target  # (m + 1,), the first is always True
    return int(true_positives[admissible].max()), n_positives


def _validated(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member)
    if scores.ndim != 1 or scores.shape != is_member.shape:
        raise ValueError(
            f"scores and is_member must be 1-D of equal length, got shapes "
            f"{scores.shape} and {is_member.shape}"
        )
    if np.isnan(scores).any():
        raise ValueError("scores must not contain NaN")
    if is_member.dtype != np.bool_:
        if not np.isin(is_member, (0, 1)).all():
            raise ValueError("is_member must be boolean or 0/1")
        is_member = is_member.astype(bool)
    n_positives = int(is_member.sum())
    if n_positives in (0, is_member.size):
        raise ValueError(
            f"is_member must contain both members and non-members, got {n_positives} members "
            f"of {is_member.size}"
        )
    return scores, is_member


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)
