"""Empirical privacy audits: lower bounds on ε from membership attacks, checked against ε.

A mechanism that is (ε, δ)-DP bounds every membership test on its output (Kairouz et al. 2015):
TPR ≤ e^ε·FPR + δ and, for the complementary region, TNR ≤ e^ε·FNR + δ. An attack's measured
TPR/FPR pair therefore proves ε ≥ ln((TPR − δ) / FPR); with Clopper-Pearson bounds on both rates
this becomes a lower confidence bound. One-run auditing (Steinke, Nasr & Jagielski, NeurIPS
2023) gets a bound from a single training run with m randomly included canaries. An audit lower
bound above the accountant's ε means the implementation leaks more than it claims: a bug.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

from simulations.leak.metrics import clopper_pearson, roc_curve

THRESHOLD_CHOICES = ("split", "bonferroni")


def empirical_epsilon(
    tpr: float,
    fpr: float,
    n_members: int,
    n_non_members: int,
    delta: float,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """ε that one attack operating point proves: (point estimate, lower confidence bound).

    From the two DP inequalities TPR ≤ e^ε·FPR + δ and TNR ≤ e^ε·FNR + δ,
    ε ≥ max(ln((TPR − δ) / FPR), ln((1 − FPR − δ) / (1 − TPR))). The point estimate uses the
    measured rates; the lower bound uses the Clopper-Pearson lower bound on TPR and upper bound
    on FPR, each one-sided at level (1 − confidence)/2, so by the union bound the lower bound
    holds with probability >= `confidence` for a threshold fixed before the data were seen.

    Parameters
    ----------
    tpr : true-positive rate in [0, 1], measured over `n_members` members.
    fpr : false-positive rate in [0, 1], measured over `n_non_members` non-members.
    n_members, n_non_members : counts behind the rates, >= 1 each; the rates are rounded to
        the nearest count.
    delta : δ in [0, 1).
    confidence : coverage of the lower bound, in (0, 1).

    Returns
    -------
    (epsilon_point, epsilon_lower), each >= 0; the point estimate is inf when FPR = 0 < TPR − δ.
    """
    for name, rate in (("tpr", tpr), ("fpr", fpr)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {rate}")
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    for name, count in (("n_members", n_members), ("n_non_members", n_non_members)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {count!r}")
    true_positives = round(tpr * n_members)
    false_positives = round(fpr * n_non_members)
    point = _epsilon_from_rates(true_positives / n_members, false_positives / n_non_members, delta)
    tpr_low = clopper_pearson(true_positives, int(n_members), confidence)[0]
    fpr_high = clopper_pearson(false_positives, int(n_non_members), confidence)[1]
    return point, _epsilon_from_rates(tpr_low, fpr_high, delta)


def audit_epsilon_from_scores(
    scores: np.ndarray,
    is_member: np.ndarray,
    delta: float,
    confidence: float = 0.95,
    *,
    threshold_choice: str = "split",
    seed: int = 0,
) -> float:
    """Lower confidence bound on ε from an attack's scores, at the best threshold.

    Taking the largest `empirical_epsilon` bound over all thresholds of the same data would
    overstate the bound (the maximum of many lower bounds is not a lower bound at the stated
    confidence). Two honest ways, chosen by `threshold_choice`:

    - ``"split"`` (default): a random half of the members and half of the non-members choose
      the threshold with the largest lower bound; the bound is then computed on the other, held
      out half at that fixed threshold. Costs half the data; exact coverage.
    - ``"bonferroni"``: every distinct threshold on all the data, each bound at confidence
      1 − (1 − confidence)/t for t thresholds, then the largest. Uses all data; conservative.

    Parameters
    ----------
    scores : (n,) attack scores, larger = more likely a member; both classes present.
    is_member : (n,) bool ground truth.
    delta : δ in [0, 1).
    confidence : coverage of the returned bound, in (0, 1).
    threshold_choice : ``"split"`` or ``"bonferroni"``.
    seed : seed of the split (``"split"`` only).

    Returns
    -------
    ε lower bound >= 0, holding with probability >= `confidence`.
    """
    if threshold_choice not in THRESHOLD_CHOICES:
        raise ValueError(
            f"threshold_choice must be one of {THRESHOLD_CHOICES}, got {threshold_choice!r}"
        )
    scores = np.asarray(scores, dtype=np.float64)
    is_member = np.asarray(is_member, dtype=bool)
    if threshold_choice == "bonferroni":
        counts = _operating_points(scores, is_member)
        corrected = 1.0 - (1.0 - confidence) / len(counts[0])
        return max(_lower_bounds(*counts, delta, corrected), default=0.0)
    rng = np.random.default_rng(seed)
    choose = np.zeros(is_member.size, dtype=bool)
    for group in (np.flatnonzero(is_member), np.flatnonzero(~is_member)):
        if group.size < 2:
            raise ValueError("the split needs at least 2 members and 2 non-members")
        choose[rng.permutation(group)[: group.size // 2]] = True
    counts = _operating_points(scores[choose], is_member[choose])
    best = int(np.argmax(_lower_bounds(*counts, delta, confidence)))
    # The chosen point's threshold: the lowest score it flags (tie groups move together).
    n_flagged = int(counts[0][best] + counts[1][best])
    threshold = np.sort(scores[choose])[::-1][n_flagged - 1] if n_flagged else np.inf
    held_scores, held_members = scores[~choose], is_member[~choose]
    flagged = held_scores >= threshold
    n_members, n_non_members = int(held_members.sum()), int((~held_members).sum())
    return empirical_epsilon(
        int(np.sum(flagged & held_members)) / n_members,
        int(np.sum(flagged & ~held_members)) / n_non_members,
        n_members,
        n_non_members,
        delta,
        confidence,
    )[1]


def one_run_epsilon_lower_bound(
    guesses_correct: int,
    guesses_made: int,
    n_canaries: int,
    delta: float,
    confidence: float = 0.95,
) -> float:
    """One-run audit (Steinke, Nasr & Jagielski 2023): ε lower bound from abstaining guesses.

    Each of m canaries is included independently with probability 1/2 in one training run; the
    auditor guesses "in" or "out" for r of them and abstains on the rest. For an (ε, δ)-DP run
    the number W of correct guesses satisfies (their Theorem 5.2, approximate DP)

        P[W >= v] <= β(ε) + 2·m·δ·α(ε),   β = P[Bin(r, q) >= v],
        α = max_{1 <= i <= v} P[v − i <= Bin(r, q) < v] / i,   q = e^ε / (1 + e^ε),

    and with δ = 0 W is stochastically dominated by Bin(r, q). The returned bound is the largest
    ε whose tail probability of the observed v is still below 1 − confidence (bisection): every
    smaller ε is rejected at that level.

    Parameters
    ----------
    guesses_correct : v, correct guesses, 0 <= v <= r.
    guesses_made : r, guesses made (abstentions excluded), r <= m.
    n_canaries : m, canaries randomly included, >= 1.
    delta : δ in [0, 1).
    confidence : coverage in (0, 1).

    Returns
    -------
    ε lower bound >= 0 (0 when even ε = 0 explains the guesses).
    """
    for name, count in (
        ("guesses_correct", guesses_correct),
        ("guesses_made", guesses_made),
        ("n_canaries", n_canaries),
    ):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {count!r}")
    if not 0 <= guesses_correct <= guesses_made <= n_canaries or n_canaries < 1:
        raise ValueError(
            "need 0 <= guesses_correct <= guesses_made <= n_canaries and n_canaries >= 1, got "
            f"{guesses_correct}, {guesses_made}, {n_canaries}"
        )
    if not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be in [0, 1), got {delta}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    significance = 1.0 - confidence

    def tail(eps: float) -> float:
        return _one_run_tail(guesses_correct, guesses_made, n_canaries, eps, delta)

    if guesses_correct == 0 or tail(0.0) >= significance:
        return 0.0
    low, high = 0.0, 1.0
    while tail(high) < significance:  # the tail tends to 1 as ε grows, so this ends
        low, high = high, 2.0 * high
    for _ in range(60):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if tail(middle) < significance else (low, middle)
    return low


def _epsilon_from_rates(tpr: float, fpr: float, delta: float) -> float:
    """max(ln((TPR − δ)/FPR), ln((1 − FPR − δ)/(1 − TPR)), 0), inf where a ratio divides by 0."""
    bounds = [0.0]
    for hit, miss in ((tpr, fpr), (1.0 - fpr, 1.0 - tpr)):
        if hit > delta:
            bounds.append(math.inf if miss == 0 else math.log((hit - delta) / miss))
    return max(bounds)


def _operating_points(
    scores: np.ndarray, is_member: np.ndarray
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per threshold (tie groups moving together): false and true positive counts, and the
    numbers of non-members and members."""
    fpr, tpr = roc_curve(scores, is_member)
    n_members = int(is_member.sum())
    n_non_members = is_member.size - n_members
    return (
        np.rint(fpr * n_non_members).astype(int),
        np.rint(tpr * n_members).astype(int),
        n_non_members,
        n_members,
    )


def _lower_bounds(
    false_positives: np.ndarray,
    true_positives: np.ndarray,
    n_non_members: int,
    n_members: int,
    delta: float,
    confidence: float,
) -> list[float]:
    """`empirical_epsilon` lower bound at every operating point."""
    return [
        empirical_epsilon(
            tp / n_members, fp / n_non_members, n_members, n_non_members, delta, confidence
        )[1]
        for fp, tp in zip(false_positives, true_positives, strict=True)
    ]


def _one_run_tail(correct: int, made: int, canaries: int, eps: float, delta: float) -> float:
    """Upper bound on P[W >= correct] for an (ε, δ)-DP run (Steinke et al. 2023, Thm 5.2)."""
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of ε-DP randomized response
    beta = float(stats.binom.sf(correct - 1, made, q))
    if delta == 0:
        return beta
    # P[v − i <= Bin(r, q) < v] for i = 1..v, divided by i; α is its maximum.
    below = stats.binom.pmf(np.arange(correct - 1, -1, -1), made, q)  # (v,) pmf(v−1), …, pmf(0)
    alpha = float(np.max(np.cumsum(below) / np.arange(1, correct + 1)))
    return beta + 2.0 * canaries * delta * alpha
