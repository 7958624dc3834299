"""The `feddistill` command: simulations, benchmarks, leakage experiments and deployment."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import tomllib
from datetime import datetime
from pathlib import Path
from typing import Any

from common.config import RunConfig

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
SUBCOMMAND_MODULES = ("simulations.bench.cli", "simulations.leak.cli", "deploy.cli")


def load_named_config(name_or_path: str) -> dict[str, Any]:
    """Key/value pairs from `simulations/configs/NAME.toml` or from a TOML file path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.toml"
    if not path.exists():
        named = sorted(p.stem for p in CONFIG_DIR.glob("*.toml"))
        raise ValueError(f"config {name_or_path!r} not found; named configs: {named} or a path")
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    """`key=value` strings → dict (values are coerced by RunConfig)."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        overrides[key.strip()] = value.strip().strip("'\"")
    return overrides


def resolve_config(config_name: str, overrides: list[str], out: str | None) -> RunConfig:
    """Named config + overrides + output directory → one validated RunConfig."""
    values: dict[str, Any] = {**load_named_config(config_name), **parse_overrides(overrides)}
    if out:
        values["out_dir"] = out
    if not values.get("out_dir"):
        values["out_dir"] = str(Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S"))
    values["out_dir"] = str(Path(values["out_dir"]).expanduser().resolve())
    return RunConfig.from_mapping(values)


def resume_config(run_dir: Path) -> RunConfig:
    """The config of an earlier run in `run_dir`, set to continue from its last round."""
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise ValueError(f"cannot resume {str(run_dir)!r}: it has no config.json")
    values = json.loads(config_path.read_text())
    return RunConfig.from_mapping({**values, "resume": True, "out_dir": str(run_dir.resolve())})


def _cmd_run(args: argparse.Namespace) -> int:
    from client.placement import messages_per_ray_node
    from common.data import load_splits
    from common.feasibility import check_feasible, describe_planned_aggregation
    from simulations.launcher import check_ray_address, default_resources, simulate

    if args.resume:
        config = resume_config(Path(args.resume))
    else:
        config = resolve_config(args.config, args.set, args.out)
    resources = default_resources(config)
    if args.client_gpus is not None:
        resources = dataclasses.replace(resources, client_gpus=args.client_gpus)
    if args.client_cpus is not None:
        resources = dataclasses.replace(resources, client_cpus=args.client_cpus)
    if args.ray_address is not None:
        check_ray_address(args.ray_address)
    print(f"feddistill: preparing data ({config.dataset}) …", flush=True)
    splits = load_splits(config)  # generate/cache and check once, before clients start
    check_feasible(config, len(splits.public_x))  # refuse before any process starts
    print(
        f"feddistill: {config.num_clients} clients, {config.rounds} rounds, "
        f"{len(splits.private_y)} private / {len(splits.public_x)} public "
        f"({'labelled' if splits.public_y is not None else 'unlabelled'}: "
        f"{splits.public_source}) / {len(splits.test_x)} test samples, "
        f"{describe_planned_aggregation(config, len(splits.public_x))} → {config.out_dir}",
        flush=True,
    )
    out_dir = simulate(config, resources, ray_address=args.ray_address)
    if args.ray_address is not None:
        print(f"feddistill: client messages per Ray node: {messages_per_ray_node(out_dir)}")
    exit_code, lines = run_outcome(json.loads((out_dir / "summary.json").read_text()))
    print("\n".join(lines), file=sys.stderr if exit_code else sys.stdout, flush=True)
    return exit_code


def run_outcome(summary: dict[str, Any]) -> tuple[int, list[str]]:
    """Exit code and closing lines of `feddistill run` from a run's summary.json.

    0 when a round completed (the last line then names the failed rounds, if any); 1 when no
    round completed, with each failed round's reason. The last line always names the results.
    """
    out_dir, failed = summary["out_dir"], summary["rounds_failed"]
    if not summary["rounds_completed"]:
        reasons = [f"  round {f['round']}: {f['reason']}" for f in summary["failed_rounds"]]
        return 1, [
            "feddistill: no round completed; why each round failed:",
            *reasons,
            f"feddistill: error: 0 of {summary['rounds']} rounds completed; results: {out_dir}",
        ]
    done = (
        f"feddistill: done in {summary['wall_seconds']:.0f}s — student accuracy "
        f"{summary['student_accuracy']:.4f}, ECE {summary['student_ece']:.4f}"
    )
    if failed:
        note = f" ({failed} of {summary['rounds']} rounds failed: status column of metrics.csv)"
        return 0, [done, f"results: {out_dir}{note}"]
    return 0, [done, f"results: {out_dir}"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `feddistill` command."""
    parser = argparse.ArgumentParser(prog="feddistill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one federated-distillation simulation")
    run.add_argument("--config", default="default", help="named config or TOML path")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--out", help="results directory (default runs/<timestamp>)")
    run.add_argument("--resume", metavar="DIR", help="continue the run in DIR after a crash")
    run.add_argument("--client-gpus", type=float, help="GPU fraction per client (CUDA only)")
    run.add_argument("--client-cpus", type=int, help="CPUs per client actor (default 1)")
    run.add_argument(
        "--ray-address",
        metavar="HOST:PORT",
        help="run the clients on this existing Ray cluster (its head's GCS address)",
    )
    run.set_defaults(handler=_cmd_run)
    for module in SUBCOMMAND_MODULES:  # each adds its own subcommands
        importlib.import_module(module).register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `feddistill` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError) as error:
        print(f"feddistill: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
