"""`feddistill bench SUITE`: run a benchmark suite and write its CSV, markdown table and plots.

Usage::

    feddistill bench quality [--set key=value ...] [--out DIR] [--seeds N] [--tiny]
    python -m simulations.bench.cli comm --tiny --seeds 2

`--set` takes suite knobs (e.g. `alphas=0.1,0.5`) and run-config keys (e.g. `rounds=3`);
`--tiny` starts from the suite's smallest setting. Results go to `DIR/<suite>/`; Flower runs
are kept in `DIR/flower-runs/` and reused by suites that need the same run.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from simulations.bench.suite import DEFAULT_SEEDS, BenchSpec, make_bench

SUITES = ("quality", "temperature", "principles", "overhead", "scale", "comm")
DEFAULT_OUT = Path("runs") / "bench"


def load_suite(name: str) -> BenchSpec:
    """The spec of suite `name` (its module is imported only when asked for)."""
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; suites: {SUITES}")
    return importlib.import_module(f"simulations.bench.{name}").SPEC


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `bench` subcommand to an argparse CLI (its handler is `run_command`)."""
    parser = subparsers.add_parser(
        "bench", help="run a benchmark suite", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("suite", choices=SUITES)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a suite knob (lists comma-separated) or a run-config key; repeatable",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results root folder")
    parser.add_argument("--seeds", type=int, default=DEFAULT_SEEDS, help="repetitions (seeds)")
    parser.add_argument(
        "--first-seed",
        type=int,
        default=0,
        help="seed of the first repetition (default 0): --first-seed 1 --seeds 2 runs seeds 1, 2",
    )
    parser.add_argument("--tiny", action="store_true", help="the suite's smallest setting")
    parser.set_defaults(handler=run_command)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Resolve the settings, run the suite and print where its results are."""
    from simulations.cli import parse_overrides

    spec = load_suite(args.suite)
    bench = make_bench(
        spec, parse_overrides(args.set), args.out, args.seeds, args.tiny, args.first_seed
    )
    bench.step(f"{spec.summary}; seeds {list(bench.seeds)}; output {bench.out_dir}")
    spec.run(bench)
    print(f"results: {bench.out_dir}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point (`python -m simulations.bench.cli SUITE ...`)."""
    parser = argparse.ArgumentParser(prog="feddistill")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.handler(args)
    except (ValueError, RuntimeError) as error:
        print(f"feddistill bench: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
