"""Time the default federated-distillation compute in one process on each available device.

The Flower simulation engine needs Ray; where it cannot run (e.g. a GPU host without it), this
runs the same rounds through `simulations.bench.plain_loop.run_plain` — the same client and
server functions, seeds and secure-aggregation objects, without the framework — on CPU and on
CUDA, and prints accuracy and seconds per round side by side.

Usage: python -m simulations.bench.device_check [--set key=value ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import pandas as pd
import torch

from common.config import RunConfig
from common.data import load_splits
from simulations.bench.plain_loop import run_plain
from simulations.cli import load_named_config, parse_overrides


def main(argv: list[str] | None = None) -> None:
    """Run the named config on every available device; write `device_check.csv/json`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", default="runs/device-check")
    args = parser.parse_args(argv)
    values = {**load_named_config(args.config), **parse_overrides(args.set)}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    frames, summary = [], {"cpu": platform.processor() or platform.machine()}
    for device in devices:
        config = RunConfig.from_mapping({**values, "device": device})
        splits = load_splits(config)
        print(f"device_check: {config.num_clients} clients × {config.rounds} rounds on {device}")
        rows = pd.DataFrame(run_plain(config, splits)).assign(device=device)
        print(rows[["round", "student_accuracy", "student_ece", "seconds"]].to_string(index=False))
        frames.append(rows)
        if device == "cuda":
            summary["gpu"] = torch.cuda.get_device_name(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table = pd.concat(frames)
    table.to_csv(out / "device_check.csv", index=False)
    per_device = table.groupby("device").agg(
        final_accuracy=("student_accuracy", "last"), seconds_per_round=("seconds", "mean")
    )
    summary["per_device"] = per_device.to_dict(orient="index")
    (out / "device_check.json").write_text(json.dumps(summary, indent=2))
    print(per_device.to_string())
    print(f"device_check: results in {out.resolve()}")


if __name__ == "__main__":
    main()
