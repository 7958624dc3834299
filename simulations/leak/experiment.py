"""What a leakage experiment is: typed settings, run-config defaults and a run function.

Each experiment module defines a frozen dataclass of its own settings (every field documented,
every default small enough for 2 CPU cores) and an `EXPERIMENT`. `--set key=value` pairs go to
the experiment's settings when the key is one of its fields, otherwise to the run config
(`common.config.RunConfig`), so the teachers, data and secure aggregation are configured with
the same keys as `feddistill run`.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from common.config import RunConfig

if typing.TYPE_CHECKING:
    from simulations.leak.report import Report


def setting(default: Any, text: str) -> Any:
    """A settings field with its one-line documentation (listed by `--show-settings`)."""
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class Experiment:
    """One `feddistill leak` experiment.

    Attributes
    ----------
    name : the command-line name, e.g. ``"membership"``.
    settings_type : frozen dataclass of the experiment's own settings.
    run_defaults : run-config keys this experiment changes from `RunConfig`'s defaults.
    run : ``run(settings, config, report)``: runs the attack and fills the report.
    """

    name: str
    settings_type: type
    run_defaults: Mapping[str, Any]
    run: Callable[[Any, RunConfig, Report], None]


def resolve(experiment: Experiment, pairs: Mapping[str, str]) -> tuple[Any, RunConfig]:
    """Split `--set` pairs between the experiment's settings and the run config; validate both.

    Returns
    -------
    (settings, config)

    Raises
    ------
    ValueError
        For an unknown key (naming both sets of allowed keys) or a value of the wrong type.
    """
    setting_types = typing.get_type_hints(experiment.settings_type)
    config_keys = {f.name for f in fields(RunConfig)}
    unknown = sorted(set(pairs) - set(setting_types) - config_keys)
    if unknown:
        raise ValueError(
            f"unknown key(s) {unknown} for {experiment.name}; experiment settings: "
            f"{sorted(setting_types)}; run-config keys: {sorted(config_keys)}"
        )
    settings = experiment.settings_type(
        **{
            key: coerce(key, value, setting_types[key])
            for key, value in pairs.items()
            if key in setting_types
        }
    )
    config_values = {k: v for k, v in pairs.items() if k not in setting_types}
    config = RunConfig.from_mapping({**experiment.run_defaults, **config_values})
    return settings, config


def describe(settings: Any) -> dict[str, Any]:
    """Settings as JSON-ready key/value pairs (tuples become lists)."""
    return {
        key: list(value) if isinstance(value, tuple) else value
        for key, value in dataclasses.asdict(settings).items()
    }


def coerce(key: str, value: str, hint: Any) -> Any:
    """A `--set` string to the field's type: int, float, bool, str or a comma-separated tuple."""
    if typing.get_origin(hint) is tuple:
        item_type = typing.get_args(hint)[0]
        items = [item.strip() for item in value.split(",") if item.strip()]
        if not items:
            raise ValueError(f"{key} needs at least one comma-separated value, got {value!r}")
        return tuple(_scalar(key, item, item_type) for item in items)
    return _scalar(key, value, hint)


def _scalar(key: str, value: str, target: type) -> Any:
    if target is bool:
        if value.lower() not in ("true", "false"):
            raise ValueError(f"{key} must be true or false, got {value!r}")
        return value.lower() == "true"
    try:
        return target(value)
    except ValueError:
        raise ValueError(f"{key} must be {target.__name__}, got {value!r}") from None
