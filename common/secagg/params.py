"""Secure-aggregation settings: one frozen dataclass, resolved and validated per cohort."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from common.secagg.encoding import WORD_BITS, check_no_wrap, choose_modulus_bits
from common.secagg.graph import auto_neighbours, auto_threshold, check_graph


@dataclass(frozen=True)
class SecAggParams:
    """Settings of one secure-aggregation round; zeros mean "choose for the cohort".

    Use :meth:`validate` to turn a configuration into resolved settings for n clients. The
    server announces the resolved settings; a client accepts them only if they are at least as
    strict as its own configuration resolved for the same cohort (see ``client/secagg.py``).
    """

    neighbours: int = 0
    """Graph degree k (0: ``auto_neighbours(n)``; values >= n - 1 mean all-to-all)."""
    threshold: int = 0
    """Shares needed to reconstruct a secret, t (0: ``auto_threshold(k)``), (k+1)/2 < t <= k+1."""
    frac_bits: int = 24
    """Fractional bits f of the fixed-point encoding; per-element resolution 2^-f."""
    modulus_bits: int = 0
    """Arithmetic is mod 2^m, 2 <= m <= 64 (0: smallest m that cannot wrap for n and the bound)."""
    min_cohort: int = 3
    """Fewest clients whose inputs may be summed; smaller cohorts are refused or aborted."""

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{field.name} must be an int, got {value!r}")
        if self.neighbours < 0 or self.threshold < 0:
            raise ValueError(
                f"neighbours and threshold must be >= 0, got {self.neighbours} and {self.threshold}"
            )
        if not 0 <= self.frac_bits <= WORD_BITS - 2:
            raise ValueError(f"frac_bits must be in [0, {WORD_BITS - 2}], got {self.frac_bits}")
        if self.modulus_bits != 0 and not 2 <= self.modulus_bits <= WORD_BITS:
            raise ValueError(
                f"modulus_bits must be 0 or in [2, {WORD_BITS}], got {self.modulus_bits}"
            )
        if self.min_cohort < 2:
            raise ValueError(f"min_cohort must be >= 2, got {self.min_cohort}")

    def graph_for(self, n_clients: int) -> tuple[int, int]:
        """Resolve degree and threshold for a cohort of n clients.

        Returns
        -------
        tuple[int, int]
            ``(k, t)``; k is capped at n - 1.

        Raises
        ------
        ValueError
            If n < min_cohort or the threshold does not fit the degree.
        """
        if n_clients < self.min_cohort:
            raise ValueError(f"cohort of {n_clients} clients is below min_cohort={self.min_cohort}")
        neighbours = min(self.neighbours or auto_neighbours(n_clients), n_clients - 1)
        threshold = self.threshold or auto_threshold(neighbours)
        check_graph(n_clients, neighbours, threshold)
        return neighbours, threshold

    def validate(self, n_clients: int, value_bound: float) -> SecAggParams:
        """Resolve every automatic field for n clients whose values satisfy |x| <= B.

        Parameters
        ----------
        n_clients : int
            Cohort size n.
        value_bound : float
            B, bound on |x| of every element of every client's contribution (after weighting
            and noise).

        Returns
        -------
        SecAggParams
            A copy with neighbours, threshold and modulus_bits all set.

        Raises
        ------
        ValueError
            If the cohort is too small, the threshold invalid, or the sum could wrap mod 2^m.
        """
        neighbours, threshold = self.graph_for(n_clients)
        if self.modulus_bits:
            check_no_wrap(n_clients, value_bound, self.frac_bits, self.modulus_bits)
            modulus_bits = self.modulus_bits
        else:
            modulus_bits = choose_modulus_bits(n_clients, value_bound, self.frac_bits)
        return dataclasses.replace(
            self, neighbours=neighbours, threshold=threshold, modulus_bits=modulus_bits
        )

    def check_resolved(self, n_clients: int) -> None:
        """Raise ValueError unless these are resolved settings that fit a cohort of n."""
        if not (self.neighbours and self.threshold and self.modulus_bits):
            raise ValueError(
                "neighbours, threshold and modulus_bits must be resolved (non-zero), got "
                f"{self.neighbours}, {self.threshold}, {self.modulus_bits}; "
                "use SecAggParams.validate(n_clients, value_bound)"
            )
        if n_clients < self.min_cohort:
            raise ValueError(f"cohort of {n_clients} clients is below min_cohort={self.min_cohort}")
        check_graph(n_clients, self.neighbours, self.threshold)

    def to_config(self) -> dict[str, int]:
        """Flat ``{field: int}`` mapping, e.g. for a Flower ConfigRecord."""
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> SecAggParams:
        """Read the fields written by :meth:`to_config`; other keys are ignored.

        Raises
        ------
        ValueError
            If a field is missing or out of range.
        TypeError
            If a field is not an int.
        """
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if name not in config]
        if missing:
            raise ValueError(f"secure-aggregation settings lack {missing}")
        return cls(**{name: config[name] for name in names})
