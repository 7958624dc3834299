"""Suite `comm`: accuracy against cumulative upload bytes, for soft labels at several widths.

For each model pair of knob `models` (`default`: the 9.6k-parameter student; `large`: knob
`large_model`, ≥ 1 M parameters, teacher = student architecture, FedAvg only and its first
`large_seeds` seeds to bound the CPU time), each α of knob `alphas` and each seed: federated
distillation with SecAgg+ at every `label_bits` of knob `label_bits` over the whole public set,
with `query_size` informative or random queries (knob `selections`) at `query_bits`, in plain
mode (LZMA-coded counts) at `query_bits` and at the default width, and FedAvg / FedProx of the
student (float32 weights every round; learning rate and local epochs tuned on the public set's
labels as in `quality`) for `fedavg_rounds` rounds. All in process (`run_plain`,
`fedavg_in_process`): bytes are counted on the records the apps send (`payload_bytes`, every
SecAgg+ stage included), which the `quality` tests check against the Flower runs.

Also measured, not adopted unless it pays: CFD's delta coding (each client's counts minus its
previous round's on the same rows, zig-zag, LZMA) against coding the counts themselves.
"""

from __future__ import annotations

import lzma
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from common.config import RunConfig
from common.data import DatasetSplits, load_splits
from common.label_coding import LZMA_FILTERS, encode_counts
from common.training import resolve_device
from simulations.bench import report
from simulations.bench.baselines import fedavg_in_process, tuned_fedavg, tuned_fedprox
from simulations.bench.fedavg_app import fedavg_upload_bytes
from simulations.bench.plain_loop import run_plain
from simulations.bench.suite import Bench, BenchSpec

FEDAVG = "FedAvg (float32 weights)"
FEDPROX = "FedProx (float32 weights)"


@dataclass(frozen=True)
class Variant:
    """One FD configuration of the sweep: its table label and its run-config changes."""

    label: str
    changes: dict[str, Any] = field(default_factory=dict)


def fd_variants(knobs: dict[str, Any], default_bits: int) -> list[Variant]:
    """The FD runs of one (model, α, seed): widths, query selections, plain coding."""
    variants = [Variant(f"FD SecAgg+ b={b}", {"label_bits": b}) for b in knobs["label_bits"]]
    bits, size = knobs["query_bits"], knobs["query_size"]
    variants += [
        Variant(
            f"FD SecAgg+ b={bits} Q={size} {selection}",
            {"label_bits": bits, "public_query_size": size, "query_selection": selection},
        )
        for selection in knobs["selections"]
    ]
    for plain_bits in dict.fromkeys((bits, default_bits)):
        variants.append(
            Variant(f"FD plain LZMA b={plain_bits}", {"label_bits": plain_bits, "secagg": False})
        )
    return variants


def large_variants(knobs: dict[str, Any]) -> list[Variant]:
    """The FD runs of the large pair: the narrowest secure and plain widths of the sweep."""
    bits = knobs["query_bits"]
    return [
        Variant(f"FD SecAgg+ b={bits}", {"label_bits": bits}),
        Variant(f"FD plain LZMA b={bits}", {"label_bits": bits, "secagg": False}),
    ]


def run(bench: Bench) -> None:
    """Run every variant, model, α and seed; write comm.csv, comm_rounds.csv, comm.md, plots."""
    torch.set_num_threads(bench.config.client_threads)  # in-process training, as a client's
    curves: list[dict[str, Any]] = []
    deltas: list[dict[str, Any]] = []
    tuning: dict[tuple[str, float], dict[str, Any]] = {}
    models = {"default": bench.config.student_model, "large": bench.knobs["large_model"]}
    unknown = set(bench.knobs["models"]) - set(models)
    if unknown:
        raise ValueError(f"models must name 'default' and/or 'large', got {sorted(unknown)}")
    for model_key in bench.knobs["models"]:
        model = models[model_key]
        seeds = bench.seeds if model_key == "default" else bench.seeds[: bench.knobs["large_seeds"]]
        for alpha in bench.knobs["alphas"]:
            for seed in seeds:
                config = bench.for_seed(
                    seed, dirichlet_alpha=alpha, student_model=model, teacher_models=model
                )
                splits = load_splits(config)
                base = {"model": model, "alpha": alpha, "seed": seed}
                tag = f"{model} α={alpha} seed={seed}"
                variants = (
                    fd_variants(bench.knobs, config.label_bits)
                    if model_key == "default"
                    else large_variants(bench.knobs)
                )
                for variant in variants:
                    bench.step(f"{tag}: {variant.label}")
                    run_config = config.replace(**variant.changes)
                    observer = None if run_config.secagg else DeltaCoding(run_config.label_bits)
                    rows = run_plain(run_config, splits, observer)
                    curves += _fd_curve(base, variant, rows)
                    if observer is not None:
                        deltas.append({**base, "variant": variant.label, **observer.totals()})
                if (model, alpha) not in tuning:
                    bench.step(f"{tag}: tuning weight averaging on the public set's labels")
                    with_fedprox = model_key == "default"  # the large pair: FedAvg only (CPU)
                    tuning[(model, alpha)] = _tune(bench, config, splits, with_fedprox)
                for name, changes in tuning[(model, alpha)].items():
                    bench.step(f"{tag}: {name} for {bench.knobs['fedavg_rounds']} rounds")
                    long_run = config.replace(rounds=bench.knobs["fedavg_rounds"], **changes)
                    curves += _fedavg_curve(base, name, long_run, splits)
                _write(bench, pd.DataFrame(curves), pd.DataFrame(deltas))


class DeltaCoding:
    """Observer of `run_plain`: coded bytes of each client's counts, and of their delta to the
    same client's previous round (only when both rounds queried the same rows)."""

    def __init__(self, label_bits: int) -> None:
        self.bits = label_bits
        self.previous: dict[int, np.ndarray] = {}
        self.direct_bytes = 0
        self.delta_bytes = 0
        self.pairs = 0

    def __call__(self, round_number: int, client: int, counts: np.ndarray) -> None:
        earlier = self.previous.get(client)
        self.previous[client] = counts
        if earlier is None or earlier.shape != counts.shape:
            return
        delta = counts - earlier  # (Q, K) in [-2^b, 2^b]
        zigzag = np.where(delta >= 0, 2 * delta, -2 * delta - 1)  # small magnitudes → small codes
        self.direct_bytes += encode_counts(counts, self.bits, per_row=False).nbytes
        self.delta_bytes += _lzma_bytes(zigzag[:, :-1], self.bits + 2)
        self.pairs += 1

    def totals(self) -> dict[str, float]:
        """Summed bytes over every (client, round ≥ 2) pair, and their ratio."""
        ratio = self.delta_bytes / self.direct_bytes if self.direct_bytes else float("nan")
        return {
            "pairs": self.pairs,
            "direct_bytes": self.direct_bytes,
            "delta_bytes": self.delta_bytes,
            "delta_over_direct": ratio,
        }


def _lzma_bytes(values: np.ndarray, bits: int) -> int:
    """LZMA size of non-negative integers < 2^bits, byte planes as `encode_counts` codes them."""
    dtype = np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32
    flat = np.ascontiguousarray(values, dtype=dtype).ravel()
    planes = flat.view(np.uint8).reshape(flat.size, -1).T
    return len(lzma.compress(planes.tobytes(), format=lzma.FORMAT_RAW, filters=LZMA_FILTERS))


def _tune(
    bench: Bench, config: RunConfig, splits: DatasetSplits, with_fedprox: bool
) -> dict[str, dict[str, Any]]:
    """Row name → run-config changes: FedAvg's (lr, epochs), then FedProx's μ at that pick."""
    device = resolve_device(config.device)
    fedavg = tuned_fedavg(bench, config, splits, device)
    picked = {"local_lr": fedavg["local_lr"], "local_epochs": fedavg["local_epochs"]}
    if not with_fedprox:
        return {FEDAVG: picked}
    fedprox = tuned_fedprox(bench, config.replace(**picked), splits, device)
    return {FEDAVG: picked, FEDPROX: {**picked, "proximal_mu": fedprox["proximal_mu"]}}


def _fd_curve(base: dict, variant: Variant, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    frame = pd.DataFrame(rows)
    ok = frame[frame["status"] == "ok"]
    up = (ok["bytes_up"] / ok["clients"]).cumsum()
    down = (ok["bytes_down"] / ok["clients"]).cumsum()
    return [
        {
            **base,
            "method": variant.label,
            "round": int(row["round"]),
            "accuracy": row["student_accuracy"],
            "kb_up_per_client_round": row["bytes_up"] / row["clients"] / 1e3,
            "kb_down_per_client_round": row["bytes_down"] / row["clients"] / 1e3,
            "upload_mb_per_client": up.loc[index] / 1e6,
            "download_mb_per_client": down.loc[index] / 1e6,
        }
        for index, row in ok.iterrows()
    ]


def _fedavg_curve(
    base: dict, name: str, config: RunConfig, splits: DatasetSplits
) -> list[dict[str, Any]]:
    device = resolve_device(config.device)
    rows = fedavg_in_process(config, splits, splits.test_x, splits.test_y, device)
    per_round = fedavg_upload_bytes(config, splits)
    return [
        {
            **base,
            "method": name,
            "round": number,
            "accuracy": row["student_accuracy"],
            "kb_up_per_client_round": per_round / 1e3,
            "kb_down_per_client_round": per_round / 1e3,
            "upload_mb_per_client": number * per_round / 1e6,
            "download_mb_per_client": number * per_round / 1e6,
        }
        for number, row in enumerate(rows, start=1)
    ]


def bytes_to_reach(curve: pd.DataFrame, accuracy: float) -> float:
    """Cumulative upload (MB per client) of the first round whose mean accuracy ≥ `accuracy`
    (NaN when no round reaches it). `curve`: one method's mean curve, sorted by round."""
    reached = curve[curve["accuracy"] >= accuracy - 1e-12]
    return float(reached["upload_mb_per_client"].iloc[0]) if len(reached) else float("nan")


def _write(bench: Bench, curves: pd.DataFrame, deltas: pd.DataFrame) -> None:
    out = bench.out_dir
    report.write_csv(curves, out / "comm_rounds.csv")
    keys = ["model", "alpha", "method"]
    mean_curves = (
        curves.groupby([*keys, "round"], sort=False)
        .agg(
            accuracy=("accuracy", "mean"),
            upload_mb_per_client=("upload_mb_per_client", "mean"),
        )
        .reset_index()
    )
    finals = curves[curves["round"] == curves.groupby(["seed", *keys])["round"].transform("max")]
    fd_rounds = int(curves[curves["method"].str.startswith("FD")]["round"].max())
    at_fd_rounds = curves[curves["round"] == fd_rounds]
    summary = report.summarise(
        finals,
        keys,
        ["round", "accuracy", "kb_up_per_client_round", "kb_down_per_client_round"],
    ).merge(
        report.summarise(at_fd_rounds, keys, ["accuracy", "upload_mb_per_client"]).rename(
            columns=lambda c: c if c in keys else f"at_fd_rounds_{c}"
        ),
        on=keys,
        how="left",
    )
    report.write_csv(summary, out / "comm.csv")
    if len(deltas):
        report.write_csv(deltas, out / "comm_delta_coding.csv")
    sections = [
        report.settings_line(bench.settings, bench.seeds),
        "Mean ± std over seeds (the large pair over its first `large_seeds` seeds). KB are "
        "payload bytes per client per round, counted on the records the apps send (SecAgg+: "
        "all five stages: signed keys, encrypted shares, masked input packed at m bits, "
        "consistency signatures, unmask shares). FedAvg and FedProx send float32 weights both "
        f"ways. 'at round {fd_rounds}' compares every method after FD's number of rounds.",
    ]
    for (model, alpha), part in summary.groupby(["model", "alpha"], sort=False):
        sections.append(f"## {model}, α = {alpha}")
        sections.append(report.markdown_table(_table(part, fd_rounds), _columns(fd_rounds)))
        plot = f"comm_{model}_a{alpha}.png"
        lines = {
            method: (group["upload_mb_per_client"], group["accuracy"], None)
            for method, group in mean_curves[
                (mean_curves["model"] == model) & (mean_curves["alpha"] == alpha)
            ].groupby("method", sort=False)
        }
        report.line_plot(
            out / plot,
            lines,
            xlabel="cumulative upload per client (MB, log)",
            ylabel="test accuracy",
            title=f"Accuracy vs upload ({model}, α = {alpha})",
            logx=True,
        )
        sections.append(f"![accuracy vs upload]({plot})")
    if len(deltas):
        sections.append(_delta_section(deltas))
    sections.append(_checks(summary, mean_curves, bench, fd_rounds))
    path = report.write_markdown(out / "comm.md", "Communication", sections)
    bench.step(f"wrote {out / 'comm.csv'}, {out / 'comm_rounds.csv'} and {path}")


def _columns(fd_rounds: int) -> tuple[str, ...]:
    return (
        "method",
        "rounds",
        "KB up / client / round",
        "KB down / client / round",
        "final accuracy",
        f"accuracy at round {fd_rounds}",
        f"MB up / client by round {fd_rounds}",
    )


def _table(part: pd.DataFrame, fd_rounds: int) -> list[dict[str, str]]:
    columns = _columns(fd_rounds)
    return [
        dict(
            zip(
                columns,
                (
                    row["method"],
                    str(int(row["round_mean"])),
                    report.number(row["kb_up_per_client_round_mean"], 1),
                    report.number(row["kb_down_per_client_round_mean"], 1),
                    report.mean_std(row["accuracy_mean"], row["accuracy_std"]),
                    report.mean_std(
                        row["at_fd_rounds_accuracy_mean"], row["at_fd_rounds_accuracy_std"]
                    ),
                    report.number(row["at_fd_rounds_upload_mb_per_client_mean"], 4),
                ),
                strict=True,
            )
        )
        for _, row in part.iterrows()
    ]


def _delta_section(deltas: pd.DataFrame) -> str:
    by = deltas.groupby(["model", "alpha", "variant"], sort=False)[
        ["direct_bytes", "delta_bytes"]
    ].sum()
    lines = [
        "## Delta coding against the previous round (CFD), measured",
        "| model | α | variant | counts, LZMA (bytes) | delta, zig-zag + LZMA (bytes) | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for (model, alpha, variant), row in by.iterrows():
        ratio = row["delta_bytes"] / row["direct_bytes"]
        lines.append(
            f"| {model} | {alpha} | {variant} | {int(row['direct_bytes'])} | "
            f"{int(row['delta_bytes'])} | {ratio:.2f} |"
        )
    return "\n".join(lines)


def _checks(summary: pd.DataFrame, mean_curves: pd.DataFrame, bench: Bench, fd_rounds: int) -> str:
    """The issue's three targets, each computed from the mean curves, met or missed."""
    lines = ["## Targets (measured)"]
    default, large = bench.config.student_model, bench.knobs["large_model"]

    def curve(model: str, alpha: float, method: str) -> pd.DataFrame:
        part = mean_curves[
            (mean_curves["model"] == model)
            & (mean_curves["alpha"] == alpha)
            & (mean_curves["method"] == method)
        ]
        return part.sort_values("round")

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    for alpha in bench.knobs["alphas"]:
        fedavg = curve(default, alpha, FEDAVG)
        if len(fedavg) >= fd_rounds:
            target = float(fedavg["accuracy"].iloc[fd_rounds - 1])
            budget = float(fedavg["upload_mb_per_client"].iloc[fd_rounds - 1])
            rows = summary[(summary["model"] == default) & (summary["alpha"] == alpha)]
            fd_methods = [m for m in rows["method"] if m.startswith("FD")]
            reach = {m: bytes_to_reach(curve(default, alpha, m), target) for m in fd_methods}
            reached = {m: b for m, b in reach.items() if np.isfinite(b)}
            best = min(reached, key=reached.get) if reached else None
            text = (
                f"the cheapest FD to reach it is {best} with {reached[best]:.4f} MB"
                if best
                else "no FD variant reaches it"
            )
            lines.append(
                f"- {default}, α = {alpha}: FedAvg's {fd_rounds}-round accuracy {target:.3f} "
                f"costs it {budget:.4f} MB per client; {text} (target ≤ FedAvg's bytes): "
                f"{verdict(best is not None and reached[best] <= budget)}."
            )
            low = rows.set_index("method")
            widest = f"FD SecAgg+ b={max(bench.knobs['label_bits'])}"
            four = f"FD SecAgg+ b={bench.knobs['query_bits']}"
            if four in low.index and widest in low.index:
                loss = low.loc[widest, "accuracy_mean"] - low.loc[four, "accuracy_mean"]
                lines.append(
                    f"- {default}, α = {alpha}: {four} loses {100 * loss:.2f} points against "
                    f"{widest} at equal rounds (target ≤ 0.5): {verdict(loss <= 0.005)}."
                )
        big_fedavg = curve(large, alpha, FEDAVG)
        for variant in large_variants(bench.knobs) if len(big_fedavg) else []:
            fd_curve = curve(large, alpha, variant.label)
            level = min(fd_curve["accuracy"].max(), big_fedavg["accuracy"].max())
            fd_mb, fedavg_mb = bytes_to_reach(fd_curve, level), bytes_to_reach(big_fedavg, level)
            ratio = fedavg_mb / fd_mb
            lines.append(
                f"- {large}, α = {alpha}: to reach {level:.3f} (the lower of the two best mean "
                f"accuracies) FedAvg uploads {fedavg_mb:.3f} MB per client, {variant.label} "
                f"{fd_mb:.4f} MB: {ratio:.0f}× fewer (target ≥ 100×): {verdict(ratio >= 100)}."
            )
    return "\n".join(lines)


SPEC = BenchSpec(
    name="comm",
    summary="accuracy vs upload bytes: FD at several label_bits and query selections vs FedAvg",
    knobs={
        "models": ("default", "large"),
        "alphas": (0.5, 0.1),
        "label_bits": (2, 4, 8, 16, 24),
        "query_bits": 4,
        "query_size": 800,
        "selections": ("random", "entropy", "margin"),
        "large_model": "mlp-xl",
        "large_seeds": 1,
        "fedavg_rounds": 15,
        "fedavg_lrs": (0.003, 0.01),
        "fedavg_epochs": (1, 2, 4),
        "fedprox_mus": (0.001, 0.01, 0.1),
    },
    config={"num_clients": 10, "partitioner": "dirichlet", "server_threads": 1},
    tiny={
        "alphas": (0.5,),
        "label_bits": (4, 16),
        "query_size": 200,
        "selections": ("entropy",),
        "large_model": "mlp-s",
        "fedavg_rounds": 3,
        "num_samples": 1200,
        "num_clients": 3,
        "rounds": 2,
        "local_epochs": 1,
        "distill_epochs": 2,
        "teacher_models": "cnn1d-s",
        "student_model": "cnn1d-s",
        "fedavg_lrs": (0.01,),
        "fedavg_epochs": (1,),
        "fedprox_mus": (0.01,),
    },
    run=run,
)
