"""The public-set axis of suite `quality` (knob `public_sets`): which public set FD can stand on.

Every variant shares one private pool and one test set (per seed: today's carved private and
test pools of MNIST-1D, written to files and given as `dataset` and `test_dataset`), so the
clients, their partitions and the test set are identical across variants and only
`public_dataset` changes:

- `split` — the in-distribution public split carved from the same generator draw (labelled);
- `other` — another MNIST-1D generator setting (`OTHER_SETTING`: noise and shear ×1.5, signal
  rescaling 0.6 instead of 0.4), the same size, written as an x-only (unlabelled) file;
- `shift` — the `public_shift = 1.0` redraw of the split (noise and shear ×2, labelled);
- `n800`, `n3200`, `n12800` — fresh in-distribution draws of that many inputs (labelled).

Per variant: every FD method of knob `methods`, the oracle-teacher student (the ceiling of FD
on that public set) and, with labels, the hard-label student. FedAvg and FedProx never read
the public set: they run once per seed (tuned on the `split` labels, as in `quality`) and
stand beside every variant. Options that need public labels are refused for `other`, so its
hard-label row is absent by design.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import torch

from common.config import RunConfig
from common.data import cache_dir, load_splits
from common.data_sources import Mnist1dSettings, generate_mnist1d
from common.files import save_npz
from common.training import resolve_device
from simulations.bench import report
from simulations.bench.baselines import hard_label_student, oracle_teacher_student
from simulations.bench.suite import Bench

VARIANTS = ("split", "other", "shift", "n800", "n3200", "n12800")
OTHER_SETTING = {"shift": 0.5, "scale": 0.6}
OTHER_SEED_OFFSET = 50021  # the other generator's draw is independent of every role's
VALUES = ("accuracy", "nll", "ece", "wall_seconds")


def run(bench: Bench) -> None:
    """Every variant of knob `public_sets` for every α and seed; writes quality_public.csv/.md."""
    from simulations.bench import quality  # the suite this axis belongs to

    unknown = sorted(set(bench.knobs["public_sets"]) - set(VARIANTS))
    if unknown:
        raise ValueError(f"public_sets must be among {VARIANTS}, got {unknown}")
    torch.set_num_threads(bench.config.client_threads)
    rows: list[dict[str, Any]] = []
    tuning: dict[float, dict[str, Any]] = {}
    for alpha in bench.knobs["alphas"]:
        for seed in bench.seeds:
            carved = bench.for_seed(seed, dirichlet_alpha=alpha)
            files = write_role_files(carved, bench.out_dir / "data" / f"s{seed}")
            shared = carved.replace(
                dataset=f"npz:{files['private']}", test_dataset=f"npz:{files['test']}"
            )
            device = resolve_device(shared.device)
            base = {"alpha": alpha, "seed": seed}
            tag = f"α={alpha} seed={seed}"
            for variant in bench.knobs["public_sets"]:
                config = shared.replace(public_dataset=f"npz:{files[variant]}")
                splits = load_splits(config)
                at = {**base, "public_set": variant, "public_size": len(splits.public_x)}
                bench.step(f"{tag} public={variant}: oracle-teacher student")
                metrics = oracle_teacher_student(config, splits, device)
                rows.append(quality._row(at, quality.ORACLE, metrics))
                if splits.public_y is not None:
                    bench.step(f"{tag} public={variant}: hard-label student")
                    metrics = hard_label_student(config, splits, device)
                    rows.append(quality._row(at, quality.HARD_LABEL, metrics))
                for method in bench.knobs["methods"]:
                    bench.step(f"{tag} public={variant}: FD {method}")
                    label = f"public-{variant}-{method}-a{alpha}-s{seed}"
                    curve, wall = quality.federated(
                        bench, config.replace(method=method), label, "feddistill"
                    )
                    rows.append(quality._run_row(at, quality.fd_label(method), curve, wall))
            split_config = shared.replace(public_dataset=f"npz:{files['split']}")
            if alpha not in tuning:
                splits = load_splits(split_config)
                tuning[alpha] = quality._tune_weight_averaging(
                    bench, tag, split_config, splits, device
                )
            for name, changes in quality._weight_averaging_configs(tuning[alpha]).items():
                bench.step(f"{tag}: {name} {changes} (reads no public set)")
                label = f"public-{name.split()[0].lower()}-a{alpha}-s{seed}"
                curve, wall = quality.federated(
                    bench, split_config.replace(**changes), label, "fedavg"
                )
                at = {**base, "public_set": "(none)", "public_size": 0}
                rows.append(quality._run_row(at, name, curve, wall))
            _write(bench, pd.DataFrame(rows))


def write_role_files(config: RunConfig, directory: Path) -> dict[str, Path]:
    """The shared private and test pools and every public variant of one seed, as npz files
    under `directory` (written once; a later call reuses them). Returns role/variant → path."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = {name: directory / f"{name}.npz" for name in ("private", "test", *VARIANTS)}
    if all(path.exists() for path in paths.values()):
        return paths
    splits = load_splits(config.replace(public_dataset="", test_dataset="", public_shift=0.0))
    shifted = load_splits(config.replace(public_dataset="", test_dataset="", public_shift=1.0))
    save_npz(paths["private"], splits.private_x, splits.private_y)
    save_npz(paths["test"], splits.test_x, splits.test_y)
    save_npz(paths["split"], splits.public_x, splits.public_y)
    save_npz(paths["shift"], shifted.public_x, shifted.public_y)
    data_dir = cache_dir(config)
    size = len(splits.public_x)
    other_x, _ = generate_mnist1d(
        data_dir, Mnist1dSettings(n=size, seed=config.seed + OTHER_SEED_OFFSET, **OTHER_SETTING)
    )
    save_npz(paths["other"], other_x)  # x only: an unlabelled public set
    for name in ("n800", "n3200", "n12800"):
        n = int(name[1:])
        x, y = generate_mnist1d(data_dir, Mnist1dSettings(n=n, seed=config.seed + n))
        save_npz(paths[name], x, y)
    return paths


def _write(bench: Bench, rows: pd.DataFrame) -> None:
    out = bench.out_dir
    report.write_csv(rows, out / "quality_public.csv")
    summary = report.summarise(rows, ["alpha", "public_set", "method"], VALUES)
    report.write_csv(summary, out / "quality_public_summary.csv")
    sections = [report.settings_line(bench.settings, bench.seeds), _notes()]
    for alpha in summary["alpha"].unique():
        part = summary[summary["alpha"] == alpha]
        sections.append(f"## Dirichlet α = {alpha}\n\n" + _table(part, rows))
        sections.append(_degradation(part))
    path = report.write_markdown(out / "quality_public.md", "Quality: which public set", sections)
    bench.step(f"wrote {out / 'quality_public.csv'} and {path}")


def _notes() -> str:
    return (
        "Mean ± std over seeds. Every variant shares one private pool and one test set per "
        "seed (the carved MNIST-1D pools, given as dataset and test_dataset files); only "
        "public_dataset changes. `other` is another MNIST-1D generator setting "
        f"({OTHER_SETTING}, fresh draw) given as an x-only file; `shift` is public_shift=1.0; "
        "`nN` are fresh in-distribution draws of N inputs. FD methods run at their defaults. "
        "FedAvg and FedProx read no public set (tuned on the split's labels, first seed)."
    )


def _table(part: pd.DataFrame, rows: pd.DataFrame) -> str:
    variants = [v for v in part["public_set"].unique() if v != "(none)"]
    methods = list(dict.fromkeys(part["method"]))
    table = []
    for method in methods:
        cells: dict[str, str] = {"method": method}
        for variant in variants:
            entry = part[(part["public_set"] == variant) & (part["method"] == method)]
            fixed = part[(part["public_set"] == "(none)") & (part["method"] == method)]
            chosen = entry if len(entry) else fixed
            cells[variant] = (
                report.mean_std(chosen["accuracy_mean"].iloc[0], chosen["accuracy_std"].iloc[0])
                if len(chosen)
                else "— (needs labels)"
            )
        table.append(cells)
    sizes = rows.groupby("public_set")["public_size"].first()
    header = [f"{v} ({int(sizes[v])})" for v in variants]
    renamed = [
        {"method": c["method"], **{h: c[v] for h, v in zip(header, variants, strict=True)}}
        for c in table
    ]
    return "Test accuracy (public set and its size):\n\n" + report.markdown_table(
        renamed, ("method", *header)
    )


def _degradation(part: pd.DataFrame) -> str:
    """Per FD method: accuracy on each variant minus on `split` (points), and the method that
    degrades least on `other` (the unlabelled other-generator set)."""
    fd = part[part["method"].str.match(r"FD \w+$")]
    split = fd[fd["public_set"] == "split"].set_index("method")["accuracy_mean"]
    lines = ["Change against the in-distribution split (points):"]
    for variant in [v for v in fd["public_set"].unique() if v != "split"]:
        other = fd[fd["public_set"] == variant].set_index("method")["accuracy_mean"]
        deltas = (100 * (other - split)).dropna()
        if not len(deltas):
            continue
        parts = ", ".join(f"{m} {d:+.1f}" for m, d in deltas.items())
        lines.append(f"- {variant}: {parts}; least degraded: {deltas.idxmax()}.")
    if len(split) and "other" in set(fd["public_set"]):
        best_split = split.max()
        other = fd[fd["public_set"] == "other"].set_index("method")["accuracy_mean"]
        gap = 100 * (other.max() - best_split)
        verdict = "met" if gap >= -5 else "missed"
        lines.append(
            f"- Target: the best method on `other` ({other.idxmax()}, {other.max():.3f}) within 5 "
            f"points of the best on `split` ({split.idxmax()}, {best_split:.3f}): {gap:+.1f} "
            f"points, {verdict}."
        )
    return "\n".join(lines)
