"""`feddistill leak EXPERIMENT [--set key=value ...] [--out DIR]`: privacy-leakage experiments.

Each experiment is a real attack against real simulated clients and writes `DIR/results.csv`,
`DIR/summary.json`, PNG plots and `DIR/report.md`. Keys given with `--set` are the experiment's
own settings (`--show-settings` lists them) or any run-config key of `feddistill run`.
Also runnable as `python -m simulations.leak.cli EXPERIMENT ...`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

# name -> (module, one-line help); modules are imported only when run (they import torch).
EXPERIMENTS = {
    "membership": (
        "simulations.leak.membership",
        "canary membership attack by the server, without and with secure aggregation",
    ),
    "label-distribution": (
        "simulations.leak.label_distribution",
        "infer clients' class histograms from soft labels or the secure aggregate",
    ),
    "differencing": (
        "simulations.leak.differencing",
        "isolate one client from two secure aggregates whose cohorts differ by it",
    ),
    "dp-tradeoff": (
        "simulations.leak.dp_tradeoff",
        "sweep distributed-DP noise: student accuracy, ε and the attack's TPR vs the DP bound",
    ),
    "public-outputs": (
        "simulations.leak.public_outputs",
        "private-record membership from a client's public-set soft labels (Shi et al. 2025)",
    ),
    "student-observer": (
        "simulations.leak.student_observer",
        "membership inference against the published student alone",
    ),
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `leak` subcommand to the `feddistill` parser (`simulations/cli.py`)."""
    lines = "\n".join(f"  {name:<20}{text}" for name, (_, text) in EXPERIMENTS.items())
    parser = subparsers.add_parser(
        "leak",
        help="privacy-leakage experiments (attacks on simulated clients)",
        description=f"{__doc__}\nexperiments:\n{lines}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS), help="which experiment")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="results directory (default runs/leak-EXPERIMENT-<time>)")
    parser.add_argument(
        "--show-settings", action="store_true", help="list the experiment's settings and exit"
    )
    parser.set_defaults(handler=run_command)


def run_command(args: argparse.Namespace) -> int:
    """Resolve settings, run the experiment, write its files and say where they are."""
    from simulations.cli import parse_overrides
    from simulations.leak.experiment import describe, resolve
    from simulations.leak.report import Report

    experiment = importlib.import_module(EXPERIMENTS[args.experiment][0]).EXPERIMENT
    if args.show_settings:
        print(_settings_help(experiment.settings_type))
        return 0
    settings, config = resolve(experiment, parse_overrides(args.set))
    default_out = Path("runs") / f"leak-{args.experiment}-{datetime.now():%Y%m%d-%H%M%S}"
    out_dir = Path(args.out or default_out).expanduser().resolve()
    config = config.replace(out_dir=str(out_dir))
    report = Report(out_dir, args.experiment)
    report.progress(f"settings {describe(settings)}; results → {out_dir}")
    experiment.run(settings, config, report)
    path = report.write(f"feddistill leak {args.experiment}", describe(settings), config.to_dict())
    for failure in report.failures:
        print(f"feddistill leak {args.experiment}: CHECK FAILED: {failure}", file=sys.stderr)
    status = "FAILED CHECKS" if report.failures else "done"
    print(f"feddistill leak {args.experiment}: {status}\nresults: {path}", flush=True)
    return 1 if report.failures else 0


def _settings_help(settings_type: type) -> str:
    lines = []
    for field in dataclasses.fields(settings_type):
        default: Any = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        lines.append(f"  {field.name}={shown}\n      {field.metadata.get('doc', '')}")
    return "settings (--set key=value; run-config keys are accepted too):\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m simulations.leak.cli`: the same as `feddistill leak ...`."""
    from simulations.cli import main as feddistill_main

    return feddistill_main(["leak", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
