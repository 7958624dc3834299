"""The one typed run configuration, shared by the ServerApp, the ClientApp and the CLI.

Keys are identical everywhere: in `[tool.flwr.app.config]` of pyproject.toml, in
`flwr run --run-config`, in `feddistill run --set key=value` and in the named configs under
`simulations/configs/`. Every key has a default that runs; `RunConfig.from_mapping` validates
once and names the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from common.secagg import MAX_SLOTS

DATASETS = ("mnist1d", "mnist", "cifar10")
DATASET_PREFIXES = ("npz:", "parquet:")
PARTITIONERS = ("iid", "dirichlet", "pathological")
ENSEMBLE_RULES = ("uniform", "weighted")
OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")
STUDENT_LOSSES = ("kd", "kd+rkd")  # the names of common.kd.STUDENT_LOSSES
DP_MODES = ("off", "client", "record")  # common.dp (client), common.dp_sgd (record)
QUERY_SELECTIONS = ("random", "entropy", "margin")  # server.queries
MIN_LABEL_BITS, MAX_LABEL_BITS = 1, 24  # common.quantise


def _doc(default: Any, text: str) -> Any:
    return field(default=default, metadata={"doc": text})


@dataclass(frozen=True)
class RunConfig:
    """Everything a run depends on; a run is a function of this object."""

    # --- run ---
    seed: int = _doc(0, "seed for data generation, partitioning, models and sampling")
    rounds: int = _doc(5, "number of federated-distillation rounds")
    out_dir: str = _doc("", "results directory; empty = runs/<timestamp> under the cwd")
    resume: bool = _doc(False, "continue the run in out_dir from its last completed round")
    device: str = _doc("auto", "auto (CUDA when present), cpu or cuda")
    client_threads: int = _doc(1, "torch CPU threads per client (fixed for reproducibility)")
    server_threads: int = _doc(
        2, "torch CPU threads of the server's distillation (fixed: the core count would vary it)"
    )
    # --- data ---
    dataset: str = _doc("mnist1d", "mnist1d | mnist | cifar10 | npz:PATH | parquet:DIR")
    public_dataset: str = _doc(
        "",
        "public set (distillation inputs, labels optional): mnist1d[:n=..,seed=..,shift=..] | "
        "npz:PATH | parquet:DIR | mnist | cifar10; empty = carved from dataset",
    )
    test_dataset: str = _doc(
        "", "server-only test set, same forms as public_dataset; empty = carved from dataset"
    )
    data_dir: str = _doc("", "cache for generated/downloaded data; empty = ~/.cache/feddistill")
    num_samples: int = _doc(20000, "MNIST-1D samples generated (private + public + test)")
    public_fraction: float = _doc(
        0.2, "share of the non-test pool carved as public inputs (public_dataset empty)"
    )
    test_fraction: float = _doc(
        0.2, "share of the whole dataset carved as the test set (test_dataset empty)"
    )
    public_query_size: int = _doc(0, "public samples queried per round; 0 = the whole public set")
    query_selection: str = _doc(
        "random", "random | entropy | margin: how the server picks each round's public queries"
    )
    public_shift: float = _doc(
        0.0, "mnist1d: public inputs drawn with noise and shear ×(1 + shift); 0 = same distribution"
    )
    num_clients: int = _doc(10, "number of data partitions (= SuperNodes in simulation)")
    partitioner: str = _doc("dirichlet", "iid | dirichlet | pathological")
    dirichlet_alpha: float = _doc(0.5, "Dirichlet concentration (smaller = more skewed)")
    classes_per_client: int = _doc(2, "classes per client for the pathological partitioner")
    # --- models ---
    teacher_models: str = _doc("cnn1d-m", "comma-separated teacher models, assigned round-robin")
    student_model: str = _doc("cnn1d-m", "student model")
    # --- client: local teacher training ---
    local_epochs: int = _doc(8, "teacher epochs on private data per round")
    local_lr: float = _doc(0.01, "teacher learning rate")
    local_batch_size: int = _doc(64, "teacher batch size")
    local_optimizer: str = _doc("adam", "sgd | adam")
    digest_epochs: int = _doc(1, "epochs distilling toward the previous ensemble before training")
    temperature: float = _doc(3.0, "softmax temperature T of reported soft labels and of KD")
    # --- server: cohort ---
    fraction: float = _doc(1.0, "fraction of connected nodes sampled each round")
    min_clients: int = _doc(2, "minimum cohort size; a smaller round is skipped loudly")
    round_timeout: float = _doc(600.0, "seconds to wait for a stage's replies")
    # --- FD method (common/methods/: what clients report, how the server combines it) ---
    method: str = _doc("fedmd", "fedmd | dsfl | selective | certainty")
    public_warmup_epochs: int = _doc(
        5, "fedmd: epochs on the labelled public set before private data (allow_public_labels)"
    )
    era_temperature: float = _doc(0.1, "dsfl: ERA sharpening temperature T_era")
    selective_quantile: float = _doc(
        0.05, "selective: share abstained on of a client's own held-out private samples"
    )
    ambiguity_threshold: float = _doc(
        0.5, "selective: drop ensemble rows whose normalised entropy at T=1 exceeds this"
    )
    min_row_weight: float = _doc(
        0.5, "selective, certainty: drop rows whose total client weight is below this"
    )
    # --- server: ensemble and distillation ---
    ensemble: str = _doc("uniform", "uniform mean or weighted (by private sample count)")
    distill_epochs: int = _doc(20, "student epochs on the public set per round")
    distill_lr: float = _doc(0.003, "student learning rate (Adam)")
    distill_batch_size: int = _doc(128, "student batch size")
    student_loss: str = _doc(
        "kd", "kd | kd+rkd: the student's objective (kd+rkd adds RKD on the ensemble's outputs)"
    )
    # --- wire format ---
    label_bits: int = _doc(
        16, "bits per soft-label entry (unbiased stochastic rounding; SecAgg+ fixed point)"
    )
    # --- secure aggregation ---
    secagg: bool = _doc(True, "aggregate soft labels with SecAgg+ (false = plain, in the clear)")
    secagg_neighbours: int = _doc(0, "SecAgg+ graph degree k; 0 = auto (O(log n)); >= n-1 = all")
    secagg_threshold: int = _doc(0, "shares needed to recover a secret t; 0 = auto (> k/2)")
    secagg_min_cohort: int = _doc(3, "fewest clients a secure sum may cover (clients refuse less)")
    secagg_stage_timeout: float = _doc(120.0, "seconds to wait for each later SecAgg stage")
    secagg_epoch_rounds: int = _doc(
        5, "rounds one SecAgg+ key set-up covers (1-64; 1 = set up every round)"
    )
    secagg_weight_bound: float = _doc(1e6, "largest client weight the encoding must hold")
    secagg_roster: str = _doc(
        "",
        "SecAgg+ identity roster (JSON) with partition-N.key beside it; empty = the launcher "
        "makes one under out_dir; SuperNodes with node-config secagg-roster use their own",
    )
    send_client_metrics: bool = _doc(False, "send per-client metrics even under secagg (a leak)")
    # --- differential privacy ---
    dp_mode: str = _doc(
        "off", "off | client (distributed noise, dp_noise_multiplier) | record (DP-SGD teachers)"
    )
    dp_noise_multiplier: float = _doc(0.0, "z = σ/Δ₂ of the distributed Gaussian noise; 0 = off")
    dp_delta: float = _doc(1e-5, "δ at which ε is reported")
    dp_min_clients: int = _doc(
        0, "n_min: noise shares sized so n_min survivors carry σ²; 0 = cohort"
    )
    dp_record_noise_multiplier: float = _doc(
        1.0, "record: DP-SGD noise σ on the summed clipped gradients, in units of the clip"
    )
    dp_record_clip: float = _doc(1.0, "record: per-sample gradient L2 clip C of DP-SGD")
    dp_record_sample_rate: float = _doc(
        0.05, "record: Poisson rate q per DP-SGD step; an epoch is ceil(1/q) steps"
    )
    allow_public_labels: bool = _doc(False, "allow the hard-label ablation term (needs labels)")
    hard_label_weight: float = _doc(0.0, "weight of CE on public hard labels (ablation only)")
    proximal_mu: float = _doc(
        0.0, "weight-averaging baseline app only: FedProx's proximal μ; 0 = FedAvg"
    )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> RunConfig:
        """Build and validate a config from flat key/value pairs (unknown keys are errors)."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            guesses = {key: difflib.get_close_matches(key, known, n=1) for key in unknown}
            hints = [f"{key!r} → {match[0]!r}" for key, match in guesses.items() if match]
            hint = f"; did you mean {', '.join(hints)}?" if hints else ""
            raise ValueError(
                f"unknown config key(s) {unknown}{hint}; allowed keys: {sorted(known)}"
            )
        coerced = {key: _coerce(key, value, known[key].type) for key, value in values.items()}
        config = cls(**coerced)
        config.validate()
        return config

    def replace(self, **changes: Any) -> RunConfig:
        """Return a validated copy with `changes` applied."""
        return RunConfig.from_mapping({**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        """Flat key/value pairs, the same keys as the Flower run config."""
        return dataclasses.asdict(self)

    @property
    def teacher_model_list(self) -> list[str]:
        """Teacher model names in assignment order (client i gets entry i mod len)."""
        return [name.strip() for name in self.teacher_models.split(",") if name.strip()]

    def validate(self) -> None:
        """Raise ValueError naming the first bad value and what is allowed."""
        from common.models import MODEL_NAMES  # local: models import torch

        _require(self.rounds >= 1, f"rounds must be >= 1, got {self.rounds}")
        _require(
            self.client_threads >= 1, f"client_threads must be >= 1, got {self.client_threads}"
        )
        _require(
            self.server_threads >= 1, f"server_threads must be >= 1, got {self.server_threads}"
        )
        _require(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")
        self._validate_dataset()
        _require(
            0.0 < self.public_fraction < 1.0,
            f"public_fraction must be in (0, 1), got {self.public_fraction}",
        )
        _require(
            0.0 < self.test_fraction < 1.0,
            f"test_fraction must be in (0, 1), got {self.test_fraction}",
        )
        _require(
            self.public_query_size >= 0,
            f"public_query_size must be >= 0 (0 = all), got {self.public_query_size}",
        )
        _require(
            self.query_selection in QUERY_SELECTIONS,
            f"query_selection must be one of {QUERY_SELECTIONS}, got {self.query_selection!r}",
        )
        _require(
            self.public_shift >= 0, f"public_shift must be >= 0 (0 = off), got {self.public_shift}"
        )
        _require(
            self.public_shift == 0 or self.dataset == "mnist1d",
            f"public_shift={self.public_shift} needs dataset=mnist1d (it regenerates the public "
            f"inputs), got dataset={self.dataset!r}",
        )
        _require(
            self.public_shift == 0 or not self.public_dataset,
            f"public_shift={self.public_shift} redraws the carved public split, but "
            f"public_dataset={self.public_dataset!r} is its own source; give the shift in its "
            "spec instead (public_dataset=mnist1d:shift=...)",
        )
        _require(self.num_clients >= 2, f"num_clients must be >= 2, got {self.num_clients}")
        _require(
            self.partitioner in PARTITIONERS,
            f"partitioner must be one of {PARTITIONERS}, got {self.partitioner!r}",
        )
        _require(
            self.dirichlet_alpha > 0, f"dirichlet_alpha must be > 0, got {self.dirichlet_alpha}"
        )
        _require(
            self.classes_per_client >= 1,
            f"classes_per_client must be >= 1, got {self.classes_per_client}",
        )
        _require(bool(self.teacher_model_list), "teacher_models must name at least one model")
        for name in [*self.teacher_model_list, self.student_model]:
            _require(name in MODEL_NAMES, f"unknown model {name!r}; allowed: {MODEL_NAMES}")
        for key in ("local_epochs", "distill_epochs"):
            _require(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        _require(self.digest_epochs >= 0, f"digest_epochs must be >= 0, got {self.digest_epochs}")
        for key in ("local_lr", "distill_lr", "round_timeout"):
            _require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        for key in ("local_batch_size", "distill_batch_size"):
            _require(getattr(self, key) >= 1, f"{key} must be >= 1, got {getattr(self, key)}")
        _require(
            self.local_optimizer in OPTIMIZERS,
            f"local_optimizer must be one of {OPTIMIZERS}, got {self.local_optimizer!r}",
        )
        _require(self.temperature > 0, f"temperature must be > 0, got {self.temperature}")
        _require(0.0 < self.fraction <= 1.0, f"fraction must be in (0, 1], got {self.fraction}")
        _require(self.min_clients >= 1, f"min_clients must be >= 1, got {self.min_clients}")
        _require(
            self.ensemble in ENSEMBLE_RULES,
            f"ensemble must be one of {ENSEMBLE_RULES}, got {self.ensemble!r}",
        )
        _require(
            self.student_loss in STUDENT_LOSSES,
            f"student_loss must be one of {STUDENT_LOSSES}, got {self.student_loss!r}",
        )
        self._validate_method()
        _require(self.proximal_mu >= 0, f"proximal_mu must be >= 0, got {self.proximal_mu}")
        _require(
            MIN_LABEL_BITS <= self.label_bits <= MAX_LABEL_BITS,
            f"label_bits must be in [{MIN_LABEL_BITS}, {MAX_LABEL_BITS}], got {self.label_bits}",
        )
        for key in ("secagg_neighbours", "secagg_threshold"):
            _require(
                getattr(self, key) >= 0, f"{key} must be >= 0 (0 = auto), got {getattr(self, key)}"
            )
        _require(
            self.secagg_min_cohort >= 2,
            f"secagg_min_cohort must be >= 2, got {self.secagg_min_cohort}",
        )
        _require(
            1 <= self.secagg_epoch_rounds <= MAX_SLOTS,
            f"secagg_epoch_rounds must be in [1, {MAX_SLOTS}], got {self.secagg_epoch_rounds}",
        )
        _require(
            not self.secagg_roster.strip() or self.secagg_roster == self.secagg_roster.strip(),
            f"secagg_roster must be a file path without surrounding spaces, got "
            f"{self.secagg_roster!r}",
        )
        for key in ("secagg_stage_timeout", "secagg_weight_bound"):
            _require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        _require(
            self.dp_noise_multiplier >= 0,
            f"dp_noise_multiplier must be >= 0 (0 = off), got {self.dp_noise_multiplier}",
        )
        _require(0 < self.dp_delta < 1, f"dp_delta must be in (0, 1), got {self.dp_delta}")
        _require(
            self.dp_min_clients >= 0,
            f"dp_min_clients must be >= 0 (0 = cohort size), got {self.dp_min_clients}",
        )
        self._validate_dp_mode()
        if self.dp_noise_multiplier > 0:
            _require(
                self.secagg,
                "dp_noise_multiplier > 0 needs secagg=true: each client adds only a share of the "
                "noise, which protects the secure sum, not a report sent in the clear",
            )
            _require(
                self.ensemble == "uniform",
                "dp_noise_multiplier > 0 needs ensemble=uniform: the sensitivity bound assumes "
                f"weight 1 per client, got ensemble={self.ensemble!r}",
            )
        _require(
            self.hard_label_weight >= 0,
            f"hard_label_weight must be >= 0, got {self.hard_label_weight}",
        )
        _require(
            self.hard_label_weight == 0 or self.allow_public_labels,
            f"hard_label_weight={self.hard_label_weight} uses the public set's true labels; "
            "set allow_public_labels=true to run this ablation",
        )

    def _validate_dp_mode(self) -> None:
        """dp_mode=client needs z > 0; a z > 0 alone (configs before dp_mode) is client-level
        too. dp_mode=record refuses what would touch private data outside DP-SGD."""
        _require(
            self.dp_mode in DP_MODES, f"dp_mode must be one of {DP_MODES}, got {self.dp_mode!r}"
        )
        _require(
            self.dp_mode != "client" or self.dp_noise_multiplier > 0,
            "dp_mode='client' needs dp_noise_multiplier > 0 (z = σ/Δ₂ of the distributed noise), "
            f"got {self.dp_noise_multiplier}",
        )
        if self.dp_mode != "record":
            return
        _require(
            self.dp_noise_multiplier == 0,
            "dp_mode='record' protects records with DP-SGD; client-level noise is dp_mode="
            f"'client', so dp_noise_multiplier must be 0, got {self.dp_noise_multiplier}",
        )
        for key in ("dp_record_noise_multiplier", "dp_record_clip"):
            _require(getattr(self, key) > 0, f"{key} must be > 0, got {getattr(self, key)}")
        _require(
            0 < self.dp_record_sample_rate <= 1,
            f"dp_record_sample_rate must be in (0, 1], got {self.dp_record_sample_rate}",
        )
        _require(
            self.ensemble == "uniform",
            "dp_mode='record' needs ensemble=uniform: weighted releases Σ private sample "
            f"counts, which changes with one record, got ensemble={self.ensemble!r}",
        )
        from common.dp_sgd import check_teacher_models  # local: imports Opacus
        from common.methods import get_method

        _require(
            get_method(self.method).row_weights is None,
            f"dp_mode='record' is not supported with method={self.method!r}: its per-row "
            "weights come from a density estimator fitted on private features without DP; "
            "use fedmd or dsfl",
        )
        check_teacher_models(self.teacher_model_list)

    def _validate_method(self) -> None:
        from common.methods import METHOD_NAMES, get_method  # local: methods import torch

        _require(
            self.method in METHOD_NAMES,
            f"method must be one of {METHOD_NAMES}, got {self.method!r}",
        )
        _require(
            self.public_warmup_epochs >= 0,
            f"public_warmup_epochs must be >= 0, got {self.public_warmup_epochs}",
        )
        _require(
            self.era_temperature > 0, f"era_temperature must be > 0, got {self.era_temperature}"
        )
        _require(
            0 < self.selective_quantile < 1,
            f"selective_quantile must be in (0, 1), got {self.selective_quantile}",
        )
        _require(
            0 < self.ambiguity_threshold <= 1,
            f"ambiguity_threshold must be in (0, 1], got {self.ambiguity_threshold}",
        )
        _require(
            self.min_row_weight >= 0, f"min_row_weight must be >= 0, got {self.min_row_weight}"
        )
        _require(
            self.dp_noise_multiplier == 0 or not get_method(self.method).per_row_weights,
            f"dp_noise_multiplier > 0 is not supported with method={self.method!r}: its "
            "per-row weight totals would be released without noise; use fedmd or dsfl",
        )

    def _validate_dataset(self) -> None:
        from common.data_sources import parse_source  # local: keeps config free of numpy

        for role in ("public_dataset", "test_dataset"):
            value = getattr(self, role)
            _require(
                value == value.strip(),
                f"{role} must not have surrounding spaces, got {value!r}",
            )
            if value:  # a path is checked where the role is loaded: a node may not hold it
                parse_source(value, role)
        name = self.dataset
        if name.startswith(DATASET_PREFIXES):  # checked when loaded: a deployed server or node
            parse_source(name, "dataset")  # with its own files never reads the private pool
            return
        _require(
            name in DATASETS,
            f"unknown dataset {name!r}; allowed: {DATASETS} or npz:PATH / parquet:DIR",
        )
        if name == "mnist1d":
            _require(self.num_samples >= 100, f"num_samples must be >= 100, got {self.num_samples}")


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _coerce(key: str, value: Any, type_name: Any) -> Any:
    """Convert CLI/TOML values to the field's type, refusing lossy conversions."""
    target = {"int": int, "float": float, "bool": bool, "str": str}[str(type_name)]
    if target is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if target is int:
        if isinstance(value, bool) or not (
            isinstance(value, int) or (isinstance(value, str) and value.lstrip("-").isdigit())
        ):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        return int(value)
    if target is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{key} must be a number, got {value!r}") from None
    return str(value)
