"""`public-outputs`: private-record membership from a client's soft labels on public inputs.

The setting of Shi, Ouyang & Wang 2025 ("Unveiling Client Privacy Leakage from Public Dataset
Usage in Federated Distillation", arXiv 2502.08001): in FedMD or DS-FL without secure
aggregation an honest-but-curious server receives each client's soft labels on the public
query and plants nothing. It asks whether a record x was in the target client's PRIVATE
training set, although the client never reports anything on x.

The server distils a proxy of the target from what it received ((Q, K) soft labels on the
public inputs, at the method's temperature) and reads the proxy's confidence on x. Its shadow
teachers, trained on its own records with the target's class histogram and a balanced random
half of the candidates, are distilled into shadow proxies the same way, which gives LiRA's IN
and OUT fits and RMIA's reference models; RMIA's population samples are test-pool records no
model trained on. For scale, the same attacks on the teachers queried directly on x (which
the protocol never allows) bound what the public channel could leak.

Members: records of the target's own partition. Non-members: test-pool records drawn with the
target's class histogram, never trained on. Only round 1 is attacked (teachers trained on
private data alone; later FedMD/DS-FL rounds also digest the public consensus).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from client.teacher import teacher_name
from common.config import RunConfig
from common.data import DatasetSplits
from common.methods import get_method
from common.models import build_model
from common.training import distill, predict_probs, resolve_device, seeded_generator
from simulations.leak.audit import audit_epsilon_from_scores
from simulations.leak.evaluate import membership_metrics, tpr_cell
from simulations.leak.experiment import Experiment, setting
from simulations.leak.metrics import roc_curve
from simulations.leak.plots import plot_roc_loglog
from simulations.leak.report import Report, markdown_table, mean_std
from simulations.leak.rmia import rmia_score
from simulations.leak.scores import lira_online_score, true_label_confidence
from simulations.leak.setup import (
    TARGET_SHADOW_BASE,
    draw_with_histogram,
    load_federation,
    test_records,
    train_and_report,
)
from simulations.leak.student_observer import query_rows

# Proxies get seed indices of their own, apart from every teacher's.
PROXY_SEED_BASE = 50_000
AUDIT_DELTA = 1e-5
CHANNELS = ("public outputs (proxy)", "direct query (not allowed)")
SCORES = ("confidence", "lira", "rmia")
RUN_DEFAULTS = {"num_clients": 10}


@dataclass(frozen=True)
class Settings:
    """Settings of the `public-outputs` experiment (`--set key=value`)."""

    seeds: tuple[int, ...] = setting((0, 1, 2), "experiment seeds; each retrains everything")
    candidates: int = setting(200, "members per seed (target's records), and as many non-members")
    shadows: int = setting(8, "shadow teachers per seed (even; each with half the candidates)")
    population_samples: int = setting(300, "test-pool records as RMIA's population samples z")
    proxy_epochs: int = setting(20, "epochs distilling each proxy on the public soft labels")


def run(settings: Settings, config: RunConfig, report: Report) -> None:
    """Per seed: target, shadows, proxies and both attacks; pooled table and ROC plots."""
    if settings.shadows < 4 or settings.shadows % 2:
        raise ValueError(f"shadows must be an even number >= 4, got {settings.shadows}")
    if settings.candidates < 1 or settings.population_samples < 1 or settings.proxy_epochs < 1:
        raise ValueError(
            "candidates, population_samples and proxy_epochs must be >= 1, got "
            f"{settings.candidates}, {settings.population_samples}, {settings.proxy_epochs}"
        )
    scores: dict[tuple[str, str], list[np.ndarray]] = {}
    members: list[np.ndarray] = []
    for seed in settings.seeds:
        signals, is_member = _signals(settings, config.replace(seed=seed), report)
        members.append(is_member)
        for channel, (target, shadows, shadow_in) in signals.items():
            n = len(is_member)
            views = {
                "confidence": target[:n],
                "lira": lira_online_score(
                    target[:n],
                    np.where(shadow_in, shadows[:, :n], np.nan),
                    np.where(shadow_in, np.nan, shadows[:, :n]),
                    fixed_variance=True,
                ),
                "rmia": rmia_score(
                    target[:n], target[n:], shadows[:, :n], shadows[:, n:], shadow_in
                ),
            }
            for name, values in views.items():
                scores.setdefault((channel, name), []).append(values)
                row = {"seed": seed, "channel": channel, "score": name}
                report.add_rows([row | _metrics(values, is_member)])
        report.progress(f"seed {seed}: attacked")
    pooled_members = np.concatenate(members)
    pooled = {
        key: _metrics(np.concatenate(values), pooled_members) for key, values in scores.items()
    }
    report.add_rows(
        [{"seed": "pooled", "channel": c, "score": s} | m for (c, s), m in pooled.items()]
    )
    for index, channel in enumerate(CHANNELS):
        curves = {
            name: roc_curve(np.concatenate(scores[(channel, name)]), pooled_members)
            for name in SCORES
        }
        plot_roc_loglog(curves, report.plot_path(f"roc_public_outputs_{index}.png"), channel)
    _write_table(report, settings, config, pooled)


def _signals(
    settings: Settings, config: RunConfig, report: Report
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], np.ndarray]:
    """Train the target, its shadows and every proxy for one seed.

    Returns
    -------
    ({channel: (target (C + Z,), shadows (S, C + Z), shadow_in (S, C))}, is_member (C,)):
    confidences on the true labels of the C candidates then the Z population samples, read
    from the proxies (public outputs) or from the teachers themselves (direct query).
    """
    federation = load_federation(config)
    splits = federation.splits
    rng = np.random.default_rng([config.seed, 96])
    partition = federation.partitions[0]
    if settings.candidates > len(partition):
        raise ValueError(
            f"candidates={settings.candidates} exceeds the target's {len(partition)} records"
        )
    histogram = federation.class_histogram(0)
    test_order = rng.permutation(len(splits.test_y))
    population, pool = np.split(test_order, [settings.population_samples])
    non_members = draw_with_histogram(
        splits.test_y, pool, settings.candidates, histogram, [config.seed, 97]
    )
    attacker_pool = np.setdiff1d(pool, non_members)
    member_records = rng.choice(partition, settings.candidates, replace=False)
    # Candidates (members, then non-members) and population samples, as model inputs.
    x = np.concatenate(
        [splits.private_x[member_records], splits.test_x[non_members], splits.test_x[population]]
    )
    y = np.concatenate(
        [splits.private_y[member_records], splits.test_y[non_members], splits.test_y[population]]
    )
    n_candidates = len(member_records) + len(non_members)
    is_member = np.arange(n_candidates) < len(member_records)
    query = query_rows(config, len(splits.public_x), 1)
    device = resolve_device(config.device)

    def read(
        teacher: torch.nn.Module, public_probs: np.ndarray, index: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(C + Z,) confidences of the proxy distilled from `public_probs`, and of `teacher`."""
        proxy = _distil_proxy(config, splits, query, public_probs, index, settings.proxy_epochs)
        return (
            true_label_confidence(predict_probs(proxy, x, 1.0, device), y),
            true_label_confidence(predict_probs(teacher, x, 1.0, device), y),
        )

    report.progress(f"seed {config.seed}: target client and its proxy")
    target_teacher, target_probs = train_and_report(
        config, splits, federation.client_data(0), query
    )
    target = read(target_teacher, target_probs, 0)
    report.progress(f"seed {config.seed}: {settings.shadows} shadow teachers and proxies")
    shadow_in = np.argsort(rng.random((settings.shadows, n_candidates)), axis=0) < (
        settings.shadows // 2
    )
    shadows = []
    for j in range(settings.shadows):
        index = TARGET_SHADOW_BASE + j
        own = draw_with_histogram(
            splits.test_y, attacker_pool, len(partition), histogram, [config.seed, index]
        )
        data = test_records(splits, own, index)
        chosen = np.flatnonzero(shadow_in[j])  # its half of the candidates (members' x too)
        data = dataclasses.replace(
            data, x=np.concatenate([data.x, x[chosen]]), y=np.concatenate([data.y, y[chosen]])
        )
        teacher, probs = train_and_report(config, splits, data, query)
        shadows.append(read(teacher, probs, 1 + j))
    signals = {
        channel: (target[k], np.stack([shadow[k] for shadow in shadows]), shadow_in)
        for k, channel in enumerate(CHANNELS)
    }
    return signals, is_member


def _distil_proxy(
    config: RunConfig,
    splits: DatasetSplits,
    query: np.ndarray,
    public_probs: np.ndarray,
    index: int,
    epochs: int,
) -> torch.nn.Module:
    """The server's copy of a client: a fresh model of the target's architecture distilled on
    the (Q, K) soft labels the client reported for public rows `query`, at the method's T."""
    generator = seeded_generator(config.seed, PROXY_SEED_BASE + index)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(generator.initial_seed()))
        proxy = build_model(teacher_name(config, 0), splits.input_shape, splits.num_classes)
    distill(
        proxy,
        splits.public_x[query],
        public_probs.astype(np.float32),
        temperature=get_method(config.method).temperature(config),
        epochs=epochs,
        lr=config.distill_lr,
        batch_size=config.distill_batch_size,
        generator=generator,
        device=resolve_device(config.device),
    )
    return proxy


def _metrics(values: np.ndarray, is_member: np.ndarray) -> dict[str, float]:
    """`membership_metrics` plus the ε lower bound the scores prove (held-out threshold)."""
    row = membership_metrics(values, is_member)
    row["eps_lower"] = audit_epsilon_from_scores(values, is_member, AUDIT_DELTA)
    return row


def _write_table(report: Report, settings: Settings, config: RunConfig, pooled: dict) -> None:
    frame = pd.DataFrame(report.rows)
    per_seed = frame[frame["seed"] != "pooled"]
    lines = []
    for channel in CHANNELS:
        for name in SCORES:
            seeds = per_seed[(per_seed["channel"] == channel) & (per_seed["score"] == name)]
            row = pooled[(channel, name)]
            lines.append(
                {
                    "server reads": channel,
                    "score": {"lira": "LiRA (online)", "rmia": "RMIA (online)"}.get(name, name),
                    "AUC (seeds)": mean_std(seeds["auc"]),
                    "AUC (pooled)": row["auc"],
                    "TPR@1% FPR [95% CI]": tpr_cell(row, "1%"),
                    "TPR@0.1% FPR [95% CI]": tpr_cell(row, "0.1%"),
                    "ε proven (95%)": row["eps_lower"],
                }
            )
    report.add_section(
        "Membership of private records from public-set outputs (Shi et al. 2025 setting)",
        f"{len(settings.seeds)} seeds; {config.num_clients} clients, method {config.method}; "
        f"the honest-but-curious server reads client 0's round-1 soft labels on "
        f"{config.public_query_size or 'all'} public rows (no secure aggregation) and distils "
        f"a proxy ({settings.proxy_epochs} epochs). {settings.candidates} members (the "
        f"target's own records) and as many non-members per seed; {settings.shadows} shadow "
        f"teachers (half IN per candidate) and their proxies; RMIA against "
        f"{settings.population_samples} population samples, γ = 1. 'direct query' reads the "
        "teachers on x itself, which the protocol never allows: the ceiling of the channel. "
        f"'ε proven': 95 % lower bound (held-out threshold, δ = {AUDIT_DELTA:g}).\n\n"
        + markdown_table(pd.DataFrame(lines)),
    )
    report.summary["pooled"] = {f"{c}/{s}": m for (c, s), m in pooled.items()}


EXPERIMENT = Experiment(
    name="public-outputs", settings_type=Settings, run_defaults=RUN_DEFAULTS, run=run
)
