"""What every benchmark suite shares: its spec, its resolved settings, seeds and progress output.

A suite has two kinds of settings. Run-config keys (`RunConfig`) describe the federated system
and apply to every method the suite runs; suite knobs (e.g. the list of Dirichlet α) say what the
suite sweeps. `--set key=value` reaches both: a key is looked up among the suite's knobs first,
then among the run-config keys. `--tiny` applies the suite's smallest setting first.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import RunConfig

DEFAULT_SEEDS = 3


@dataclass(frozen=True)
class BenchSpec:
    """A suite: what it measures, its settings at full size and at its smallest, and its runner.

    Attributes
    ----------
    name : the suite's command-line name.
    summary : one line for `--help` and the report header.
    knobs : suite settings and their full-size defaults; tuples are comma-separated lists.
    config : run-config overrides at full size (the rest are RunConfig defaults).
    tiny : overrides (knobs or run-config keys) of the smallest setting, for tests and smoke runs.
    run : runs the suite and writes its tables into `bench.out_dir`.
    """

    name: str
    summary: str
    knobs: Mapping[str, Any]
    config: Mapping[str, Any]
    tiny: Mapping[str, Any]
    run: Callable[[Bench], None]


@dataclass(frozen=True)
class Bench:
    """One invocation of a suite, with every setting resolved.

    Attributes
    ----------
    suite : the suite's name.
    config : base run config; each run sets its own `seed` and `out_dir`.
    knobs : resolved suite settings.
    seeds : seeds of the repetitions (data, partitions, initialisation and sampling).
    root : the `--out` folder; suites write into `root/<suite>` and share `root/flower-runs`.
    settings : the non-default settings in force, for the report header.
    started : `time.perf_counter()` at creation, for progress lines.
    """

    suite: str
    config: RunConfig
    knobs: Mapping[str, Any]
    seeds: tuple[int, ...]
    root: Path
    settings: Mapping[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)

    @property
    def out_dir(self) -> Path:
        """Where this suite's tables and plots go."""
        path = self.root / self.suite
        path.mkdir(parents=True, exist_ok=True)
        return path

    def step(self, message: str) -> None:
        """Print one progress line, stamped with the seconds since the suite started."""
        print(f"[{self.suite} {time.perf_counter() - self.started:6.0f}s] {message}", flush=True)

    def for_seed(self, seed: int, **changes: Any) -> RunConfig:
        """The base config for one repetition, with `changes` applied."""
        return self.config.replace(seed=seed, **changes)


def make_bench(
    spec: BenchSpec,
    overrides: Mapping[str, str],
    root: Path,
    seeds: int = DEFAULT_SEEDS,
    tiny: bool = False,
    first_seed: int = 0,
) -> Bench:
    """Resolve a suite's settings: full-size defaults, then `--tiny`, then `--set` overrides.

    Parameters
    ----------
    spec : the suite.
    overrides : `--set` pairs; knob names first, then run-config keys.
    root : the `--out` folder.
    seeds : number of repetitions (seeds first_seed … first_seed + seeds − 1).
    tiny : start from the suite's smallest setting.
    first_seed : the seed of the first repetition (>= 0).

    Raises
    ------
    ValueError : an unknown key, a value of the wrong type, seeds < 1 or first_seed < 0.
    """
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if first_seed < 0:
        raise ValueError(f"--first-seed must be >= 0, got {first_seed}")
    requested = {**(spec.tiny if tiny else {}), **overrides}
    knobs = dict(spec.knobs)
    config_values = dict(spec.config)
    allowed = set(RunConfig.__dataclass_fields__)
    for key, value in requested.items():
        if key in knobs:
            knobs[key] = coerce_knob(key, spec.knobs[key], value)
        elif key in allowed:
            config_values[key] = value
        else:
            raise ValueError(
                f"unknown setting {key!r} for suite {spec.name!r}; suite knobs: "
                f"{sorted(spec.knobs)}; or any run-config key: {sorted(allowed)}"
            )
    config = RunConfig.from_mapping(config_values)
    defaults = RunConfig().to_dict()
    settings = {
        **{key: value for key, value in config.to_dict().items() if value != defaults[key]},
        **knobs,
    }
    return Bench(
        suite=spec.name,
        config=config,
        knobs=knobs,
        seeds=tuple(range(first_seed, first_seed + seeds)),
        root=root.expanduser().resolve(),
        settings=settings,
    )


def coerce_knob(name: str, default: Any, value: Any) -> Any:
    """Convert a `--set` value to the type of the knob's default (tuples from 'a,b,c')."""
    if isinstance(default, tuple):
        items = value if isinstance(value, (list, tuple)) else str(value).split(",")
        element = type(default[0]) if default else str
        parsed = tuple(_scalar(name, element, item) for item in items if str(item).strip())
        if not parsed:
            raise ValueError(f"{name} needs at least one value, got {value!r}")
        return parsed
    return _scalar(name, type(default), value)


def _scalar(name: str, kind: type, value: Any) -> Any:
    text = str(value).strip()
    if kind is bool:
        if isinstance(value, bool):
            return value
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise ValueError(f"{name} must be true or false, got {value!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be of type {kind.__name__}, got {value!r}") from None
