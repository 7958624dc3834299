"""What a run config implies before any process starts, and whether every round could succeed.

The cohort follows from the number of nodes, `fraction` and `min_clients` by the rule the
ServerApp samples with (`cohort_size`); the SecAgg+ graph degree k, threshold t and modulus
width m follow from the cohort through the same `SecAggParams.validate` the server runs each
round. `check_feasible` refuses a config for which every round would fail, before a simulation
starts, naming the setting and what is allowed; `describe_aggregation` says in one log line
what a round's aggregation is.
"""

from __future__ import annotations

import math

from common.config import RunConfig
from common.methods import get_method
from common.secagg import SecAggParams
from common.secure_codec import client_policy, dp_noise_share_std, value_bound


def cohort_size(num_nodes: int, fraction: float, min_clients: int) -> int:
    """Clients sampled per round: max(min_clients, ⌈fraction · n⌉), at most n.

    Raises
    ------
    ValueError
        If fewer than `min_clients` nodes are connected.
    """
    if num_nodes < min_clients:
        raise ValueError(f"only {num_nodes} nodes are connected; min_clients={min_clients}")
    return min(num_nodes, max(min_clients, math.ceil(fraction * num_nodes)))


def secagg_params(config: RunConfig, cohort: int, num_query: int) -> SecAggParams:
    """The resolved SecAgg+ settings (k, t, m) for a cohort, as the server derives them.

    Parameters
    ----------
    config : the run config (secagg_* keys, ensemble, DP).
    cohort : clients in the round.
    num_query : public rows Q queried in the round (sizes the DP noise, hence the bound).

    Raises
    ------
    ValueError
        If the cohort is below secagg_min_cohort, k or t do not fit the cohort, or the sum of
        the cohort's encodings needs more than the 64-bit word.
    """
    noise_std = dp_noise_share_std(config, num_query, cohort)
    return client_policy(config).validate(cohort, value_bound(config, noise_std))


def check_query_size(config: RunConfig, num_public: int) -> None:
    """Raise ValueError if `public_query_size` exceeds the `num_public` public samples."""
    if config.public_query_size > num_public:
        raise ValueError(
            f"public_query_size={config.public_query_size} exceeds the {num_public} public "
            f"samples; allowed: 0 (= all) to {num_public}"
        )


def check_feasible(config: RunConfig, num_public: int) -> None:
    """Raise ValueError if no round of this config could succeed in a simulation.

    A simulation connects `num_clients` nodes, so the cohort size follows from the config.
    Settings that only fail on a later dropout (fewer survivors than t or secagg_min_cohort)
    are not refused here: that is a round's fate, not the config's.

    Parameters
    ----------
    config : the validated run config.
    num_public : size of the public split (public_query_size is checked against it).
    """
    n_clients = config.num_clients
    if config.min_clients > n_clients:
        raise ValueError(
            f"min_clients={config.min_clients} exceeds num_clients={n_clients}: no round can "
            f"sample a cohort; allowed: 1 <= min_clients <= {n_clients}"
        )
    cohort = cohort_size(n_clients, config.fraction, config.min_clients)
    implied = (
        f"the cohort of {cohort} that num_clients={n_clients}, fraction={config.fraction} "
        f"and min_clients={config.min_clients} imply"
    )
    check_query_size(config, num_public)
    if config.dp_noise_multiplier > 0 and config.dp_min_clients > cohort:
        raise ValueError(
            f"dp_min_clients={config.dp_min_clients} exceeds {implied}: the noise shares of "
            f"{cohort} clients could never add up to the configured σ²; allowed: 0 (= cohort) "
            f"to {cohort}"
        )
    most_weight = cohort * (config.secagg_weight_bound if config.ensemble == "weighted" else 1.0)
    if get_method(config.method).per_row_weights and config.min_row_weight > most_weight:
        raise ValueError(
            f"min_row_weight={config.min_row_weight} exceeds the largest total weight a row can "
            f"get from {implied} ({most_weight:g}): method={config.method} would drop every row; "
            f"allowed: 0 to {most_weight:g}"
        )
    if config.secagg:
        try:
            secagg_params(config, cohort, config.public_query_size or num_public)
        except ValueError as error:
            raise ValueError(f"SecAgg+ is impossible for {implied}: {error}") from None


def aggregation_mode(config: RunConfig) -> str:
    """The aggregation in two words and whether DP is on, e.g. "SecAgg+, DP off"."""
    mode = "SecAgg+" if config.secagg else "plain aggregation (soft labels in the clear)"
    dp = f"DP on (z={config.dp_noise_multiplier})" if config.dp_noise_multiplier > 0 else "DP off"
    return f"{mode}, {dp}"


def describe_aggregation(config: RunConfig, cohort: int, num_query: int) -> str:
    """One log phrase: aggregation mode, k, t, m, the cohort and whether DP is on.

    E.g. "SecAgg+ k=9 t=6 m=30 over a cohort of 10, DP off".
    """
    if config.dp_noise_multiplier > 0:
        n_min = config.dp_min_clients or cohort
        dp = f"DP on (z={config.dp_noise_multiplier}, δ={config.dp_delta}, n_min={n_min})"
    else:
        dp = "DP off"
    if not config.secagg:
        return f"plain aggregation (soft labels in the clear) over a cohort of {cohort}, {dp}"
    try:
        params = secagg_params(config, cohort, num_query)
    except ValueError as error:
        return f"SecAgg+ impossible for a cohort of {cohort} ({error}), {dp}"
    return (
        f"SecAgg+ k={params.neighbours} t={params.threshold} m={params.modulus_bits} "
        f"over a cohort of {cohort}, {dp}"
    )


def describe_planned_aggregation(config: RunConfig, num_public: int) -> str:
    """`describe_aggregation` for the cohort drawn when `num_clients` nodes are connected."""
    try:
        cohort = cohort_size(config.num_clients, config.fraction, config.min_clients)
    except ValueError as error:
        return f"{aggregation_mode(config)}; no cohort possible: {error}"
    num_query = min(config.public_query_size or num_public, num_public)
    described = describe_aggregation(config, cohort, num_query)
    return f"{described} (when num_clients={config.num_clients} nodes are connected)"
