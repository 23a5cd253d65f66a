"""The experiment config: one YAML file describes a whole training run.

    data:    {kind: digits, ...}            # a DataConfig (perceptio.data), chosen by kind
    model:   {perceiver: {...}}             # a full PerceiverConfig, or
             {perceiver_ar: {...}}          # a PerceiverARConfig (causal byte LM), or
             {preset: NAME, overrides: {...}}   # a named preset with overrides
    optim:   {optimizer: lamb, lr: ..., warmup_steps: ..., ...}
    train:   {steps: ..., batch_size: ..., precision: bf16, ...}
    logging: {progress: true, tensorboard: false, plots: true, ...}

Every section is a :class:`~perceptio.config.Config`, so unknown or ill-typed keys are
rejected with their key path and the allowed keys/values. ``--set a.b.c=value`` edits
the raw mapping before validation (the grammar of :mod:`perceptio.overrides`: values are
YAML, ``3``, ``1e-3``, ``true``, ``[8, 8]``). The resolved config is written to
``RUN_DIR/experiment.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import Config, ConfigError, check_positive, set_by_path
from ..data import DataConfig
from ..model import PerceiverConfig
from ..perceiver_ar import PerceiverARConfig
from ..overrides import load_yaml, parse_assignments, yaml_module
from ..presets import preset_config

QUICKSTART = "quickstart"  # `perceptio train` with no config
EXPERIMENT_FILE = "experiment.yaml"  # the resolved config in a run directory


@dataclass(kw_only=True)
class ModelSection(Config):
    """Either ``perceiver`` (a full model config) or ``preset`` (+ ``overrides``, flat size
    fields or dotted paths as ``perceptio.presets.preset_config`` takes them)."""

    perceiver: PerceiverConfig | None = None
    perceiver_ar: PerceiverARConfig | None = None  # a Perceiver AR (causal) model
    preset: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    # start from these weights (perceptio.train.transfer): a model or run directory, a DeepMind
    # checkpoint, a Hugging Face directory or Hub id; init_modules: only these modules (None: all that fit)
    init_from: str | None = None
    init_modules: list[str] | None = None

    def validate(self) -> None:
        if sum(x is not None for x in (self.perceiver, self.perceiver_ar, self.preset)) != 1:
            raise ConfigError("model: give exactly one of model.perceiver (a full config), model.perceiver_ar "
                              "(a Perceiver AR config) or model.preset (a name)")
        if self.overrides and self.preset is None:
            raise ConfigError("model.overrides applies to model.preset; edit model.perceiver directly instead")
        if self.init_modules is not None and self.init_from is None:
            raise ConfigError("model.init_modules selects modules of model.init_from; set model.init_from too")
        if self.init_modules is not None and not self.init_modules:
            raise ConfigError("model.init_modules is empty; name modules (e.g. [input_adapter, encoder]) or "
                              "leave it out to load every module that fits")

    def resolve(self) -> PerceiverConfig | PerceiverARConfig:
        if self.perceiver is not None:
            return self.perceiver
        if self.perceiver_ar is not None:
            return self.perceiver_ar
        try:
            return preset_config(self.preset, **self.overrides)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"model.preset: {e}") from None


@dataclass(kw_only=True)
class ParamGroupConfig(Config):
    """Parameters whose names match ``params`` (fnmatch patterns, or module names: ``encoder``
    = ``encoder.*``) train with their own ``lr`` / ``weight_decay`` (None: optim's); the
    first group a parameter matches wins, the rest train with optim's settings."""

    params: str | list[str]
    lr: float | None = None
    weight_decay: float | None = None

    def validate(self) -> None:
        check_positive(self, "lr")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise ConfigError(f"optim.param_groups: weight_decay must be >= 0, got {self.weight_decay}")
        if not self.patterns():
            raise ConfigError("optim.param_groups: params is empty; give name patterns such as 'encoder.*'")

    def patterns(self) -> list[str]:
        return [self.params] if isinstance(self.params, str) else list(self.params)


@dataclass(kw_only=True)
class OptimConfig(Config):
    optimizer: Literal["adamw", "lamb"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    warmup_steps: int = 0  # linear warm-up from 0
    schedule: Literal["constant", "cosine", "constant_cosine"] = "cosine"
    decay_start: float = 0.0  # constant_cosine: fraction of the steps kept constant after warm-up
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    param_groups: list[ParamGroupConfig] = field(default_factory=list)  # per-group lr / weight decay

    def validate(self) -> None:
        check_positive(self, "lr", "eps", "grad_clip")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("optim.warmup_steps and optim.weight_decay must be >= 0")
        for name in ("decay_start", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"optim.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass(kw_only=True)
class TrainConfig(Config):
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # global batch: summed over processes and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 0
    label_smoothing: float = 0.0
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (CPU or CUDA)
    activation_checkpointing: bool = False
    compile: bool = False  # torch.compile the model
    device: str = "auto"  # auto: cuda if available, else cpu
    distributed: Literal["ddp", "fsdp"] = "ddp"  # strategy when launched with torchrun
    eval_every: int = 200  # steps between validation runs (and at the end)
    eval_batch_size: int = 256
    checkpoint_every: int = 200
    keep_last: int = 2  # step checkpoints kept besides best/
    best_metric: str | None = None  # validation metric for best/; None: the objective's main one
    threads: int | None = None  # torch.set_num_threads; None: torch's default
    ema_decay: float | None = None  # evaluate and keep best/ with an exponential moving average of the weights
    freeze: list[str] = field(default_factory=list)  # parameter name patterns (fnmatch, or module names) not trained
    # DataLoader worker processes reading batches (perceptio.data.loader); None: 0 for data in
    # memory, else min(4, CPUs - 1). Batches are the same for any number of workers.
    num_workers: int | None = None
    prefetch_factor: int | None = None  # batches each worker keeps ready; None: torch's default (2)
    persistent_workers: bool = True  # keep evaluation workers between evaluations

    def validate(self) -> None:
        check_positive(self, "steps", "batch_size", "grad_accum", "eval_every", "eval_batch_size",
                       "checkpoint_every", "keep_last", "threads", "prefetch_factor")
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0 (0: read batches in the main process), "
                              f"got {self.num_workers}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.ema_decay is not None and self.distributed == "fsdp":
            raise ConfigError("train.ema_decay is not supported with train.distributed=fsdp; use ddp")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"train.batch_size={self.batch_size} must be divisible by "
                              f"train.grad_accum={self.grad_accum}")


@dataclass(kw_only=True)
class LoggingConfig(Config):
    progress: bool = True  # tqdm progress bar (throughput, ETA)
    log_every: int = 10  # steps between rows of metrics.csv
    tensorboard: bool = False  # needs the tensorboard package
    plots: bool = True  # PNG learning curves and cross-attention maps (needs matplotlib)

    def validate(self) -> None:
        check_positive(self, "log_every")


@dataclass(kw_only=True)
class ObjectiveConfig(Config):
    """Settings of the data set's objective (see perceptio.train.objectives)."""

    num_points: int | None = 512  # dense: output points decoded per training step; None: all
    modality_points: dict[str, int] = field(default_factory=dict)  # multimodal: points per modality
    weights: dict[str, float] = field(default_factory=dict)  # multimodal: loss weight per modality
    eval_chunk_size: int = 4096  # output points decoded at once in evaluation

    def validate(self) -> None:
        check_positive(self, "num_points", "eval_chunk_size")
        bad = {k: v for k, v in self.modality_points.items() if v <= 0}
        if bad:
            raise ConfigError(f"objective.modality_points must be positive, got {bad}")

    def settings(self) -> dict[str, Any]:
        """Keyword arguments of the objectives (only the ones an objective takes are used)."""
        return {"num_points": self.num_points, "modality_points": self.modality_points, "weights": self.weights,
                "eval_chunk_size": self.eval_chunk_size}


@dataclass(kw_only=True)
class ExperimentConfig(Config):
    data: DataConfig
    model: ModelSection
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    name: str = "run"  # the run's folder under runs/ (without --run-dir): a plain name, never a path

    def validate(self) -> None:
        if not (re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", self.name) and ".." not in self.name):
            raise ConfigError(f"name must be a plain name (letters, digits, '_', '-', '.'; it names the folder "
                              f"runs/NAME), got {self.name!r}; choose where the run goes with --run-dir instead")


# ---------------------------------------------------------------------------------------
# YAML files and --set overrides
# ---------------------------------------------------------------------------------------
def config_dir() -> Path:
    """The built-in experiment configs (``configs/`` of the repository, shipped in the package)."""
    return Path(__file__).resolve().parent.parent / "configs"


def builtin_configs() -> list[str]:
    return sorted(p.stem for p in config_dir().glob("*.yaml"))


def find_config(name_or_path: str | Path) -> Path:
    """A YAML path, or the name of a built-in config (``digits``, ``quickstart``...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    builtin = config_dir() / f"{name_or_path}.yaml"
    if builtin.is_file():
        return builtin
    raise FileNotFoundError(f"config {str(name_or_path)!r} not found: not a file and not one of the built-in "
                            f"configs {builtin_configs()}")


def apply_set(raw: dict[str, Any], assignments: list[str]) -> dict[str, Any]:
    """Apply ``--set`` assignments (:mod:`perceptio.overrides`) to the raw mapping in place;
    missing sections become mappings, so that a wrong key is reported by validation with
    the allowed keys."""
    for path, value in parse_assignments(assignments):
        set_by_path(raw, path, value, create=True)
    return raw


def read_config_file(name_or_path: str | Path) -> tuple[Path, dict[str, Any]]:
    """The YAML mapping of an experiment file (or of a built-in config) -> (its path, the mapping)."""
    path = find_config(name_or_path)
    try:
        raw = load_yaml(path.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; expected a YAML experiment config") from None
    except yaml_module().YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    except ConfigError as e:  # e.g. an alias bomb
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: an experiment config is a mapping with keys data, model, optim, train, logging")
    return path, raw


def load_experiment(name_or_path: str | Path = QUICKSTART, assignments: list[str] | None = None) -> ExperimentConfig:
    path, raw = read_config_file(name_or_path)
    raw = apply_set(raw, assignments or [])
    try:
        return ExperimentConfig.from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def experiment_from_dict(raw: dict[str, Any], assignments: list[str] | None = None) -> ExperimentConfig:
    return ExperimentConfig.from_dict(apply_set(raw, assignments or []))


def load_run_experiment(run_dir: str | Path) -> ExperimentConfig:
    """The resolved experiment config saved in a run directory."""
    path = Path(run_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a perceptio run directory")
    return load_experiment(path)


def dump_yaml(config: ExperimentConfig) -> str:
    return yaml_module().safe_dump(config.to_dict(), sort_keys=False)
