"""The training loop.

    trainer = Trainer(load_experiment("digits"), run_dir="runs/digits")
    metrics = trainer.fit()          # {"val": {...}, "test": {...}}

One optimizer step: ``grad_accum`` micro-batches (forward under bf16 autocast if asked,
backward of ``loss / grad_accum``; DDP syncs gradients on the last one only), gradient
clipping, the scheduled learning rate, the optimizer step. Every ``log_every`` steps a
row goes to ``metrics.csv`` (and TensorBoard), every ``eval_every`` steps the validation
split is evaluated and the best model saved, every ``checkpoint_every`` steps a full
checkpoint is written.

Exact resumption: the data order and every random draw of the data pipeline are pure
functions of ``(seed, step)`` (:class:`~perceptio.data.Sampler`,
:func:`~perceptio.data.step_generator`), the learning rate a function of the step, and
checkpoints hold the model, optimizer and global RNG states (dropout) of every process.
A resumed run therefore computes the same losses as an uninterrupted one.

Ctrl-C (SIGINT) stops after the current step, saves a checkpoint and raises
``KeyboardInterrupt``; a second Ctrl-C stops at once (the last checkpoint is kept).

The run directory is locked while a trainer writes it, a finished run is only continued
(``resume``) or deleted first (``overwrite``), and every file is written atomically
(:mod:`perceptio.train.rundir`, :mod:`perceptio.train.checkpoint`).

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in
DistributedDataParallel (gloo on CPU, NCCL on GPU) or, with ``train.distributed: fsdp``,
sharded with ``fully_shard``. ``train.batch_size`` is the global batch; each process
takes a contiguous slice of it, so N processes compute the same update as one.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from ..data import Splits, step_generator
from ..data.base import StreamDataset, nested_to
from ..data.loader import EvalLoaders, loader_options, step_batches
from ..data.shards import first_batch
from ..model import Perceiver, PerceiverConfig
from ..perceiver_ar import PerceiverAR, PerceiverARConfig
from ..pretrained import atomic_write_json, atomic_write_text, build_model, check_device, load_pretrained
from . import checkpoint as ckpt
from . import rundir
from .experiment import EXPERIMENT_FILE, ExperimentConfig, dump_yaml, load_experiment
from .objectives import Objective, add_sums, build_objective, means
from .streaming import open_stream
from .optim import build_optimizer, describe_groups, freeze, lr_factor, set_lr
from .transfer import init_from, module_groups


# ---------------------------------------------------------------------------------------
# Distributed setup
# ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        return check_device(name)
    except ValueError as e:
        raise ValueError(f"train.device: {e} or 'auto'") from None


# ---------------------------------------------------------------------------------------
# RNG state (dropout) of all processes
# ---------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, _, gauss = random.getstate()
    random.setstate((version, tuple(state["python"]), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------------------------------
# Checking that the config fits the data
# ---------------------------------------------------------------------------------------
def check_model_fits_data(model: Perceiver, splits: Splits, objective: Objective, data_key: str) -> None:
    """One clear error naming the config key when the model cannot take or predict the data."""
    if isinstance(splits.train, StreamDataset):
        sample = first_batch(splits.train, 2)
    else:
        sample = splits.train.batch(torch.arange(min(2, len(splits.train))), torch.Generator().manual_seed(0))
    if (splits.info.objective == "clm") != isinstance(model, PerceiverAR):
        raise ValueError(f"the data ({data_key}) has objective {splits.info.objective!r}: "
                         + ("train a causal model (model.perceiver_ar)" if splits.info.objective == "clm"
                            else "a Perceiver AR (model.perceiver_ar) trains only on causal LM data (bytes_clm)"))
    if isinstance(model, PerceiverAR):
        try:
            model.check_inputs(sample["inputs"], None, None)
        except (ValueError, TypeError) as e:
            raise ValueError(f"the data ({data_key}) does not fit model.perceiver_ar: {e}; set data.seq_len "
                             "<= max_context_length and num_classes to the data's vocabulary") from None
        return
    adapter = model.config.input_adapter
    try:
        model.input_adapter.check(sample["inputs"])
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"the data ({data_key}) does not fit model input_adapter (kind={adapter.kind}): {e}; "
            f"set the input adapter's sizes in the model config to the data's"
        ) from None
    if splits.info.objective == "classification":
        with torch.no_grad():
            logits = model(sample["inputs"]).logits
        classes = len(splits.info.classes or [])
        if logits.shape[-1] != classes:
            raise ValueError(
                f"the data ({data_key}) has {classes} classes {splits.info.classes[:10]} but the model predicts "
                f"{logits.shape[-1]}; set model.perceiver.decoder.output_channels (or the output adapter's "
                f"num_classes) to {classes}"
            )
    if splits.info.objective == "multitask":
        tasks = splits.info.extras["tasks"]
        queries = model.decoder.query_builder.num_queries(None)
        with torch.no_grad():
            width = model(sample["inputs"], points=torch.arange(1)).logits.shape[-1]
        most = max(len(c) for c in tasks.values())
        if queries != len(tasks) or width < most:
            raise ValueError(
                f"the data ({data_key}) has {len(tasks)} tasks with up to {most} classes, but the model decodes "
                f"{queries} queries to {width} logits; set model.perceiver.decoder.queries.num_queries to "
                f"{len(tasks)} (one query per task) and decoder.output_channels to at least {most}"
            )
    if splits.info.objective == "token_classification":
        with torch.no_grad():
            logits = model(sample["inputs"]).logits
        length, labels = sample["targets"].shape[1], len(splits.info.classes or [])
        if logits.dim() != 3 or logits.shape[1] < length or logits.shape[-1] != labels:
            raise ValueError(
                f"the data ({data_key}) has {labels} labels {splits.info.classes[:10]} for each of {length} bytes "
                f"but the model outputs {tuple(logits.shape[1:])} per example; decode one query per input position "
                f"(model.perceiver.decoder.queries.num_queries >= {length}) to output_channels: {labels}, "
                "without an output adapter"
            )
    if splits.info.objective == "dense":
        with torch.no_grad():
            out = model(sample["inputs"], points=torch.arange(1)).logits
        want = sample["targets"].shape[-1]
        if out.shape[-1] != want:
            raise ValueError(f"the data ({data_key}) has {want} output channels per point but the model predicts "
                             f"{out.shape[-1]}; set model.perceiver.decoder.output_channels to {want}")


def without_loader_keys(experiment: dict[str, Any]) -> dict[str, Any]:
    """An experiment dict without the keys that change how batches are read, not what they
    are (``train.num_workers`` ...): a run resumed with other ones computes the same losses."""
    loader = {"num_workers", "prefetch_factor", "persistent_workers"}
    return {**experiment, "train": {k: v for k, v in experiment.get("train", {}).items() if k not in loader}}


# ---------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------
class _StopRequest:
    """SIGINT handler: first Ctrl-C asks to stop after the current step, second one
    interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nCtrl-C: stopping after this step and saving a checkpoint (Ctrl-C again to stop now)",
              file=sys.stderr, flush=True)


class TrainingDiverged(ValueError):
    """The loss (or the gradient norm) became NaN or infinite: training stops there."""


class Trainer:
    """Trains ``experiment`` into ``run_dir``: a new or empty directory, or an existing run
    to continue (``resume``) or to delete first (``overwrite``). ``callbacks``: functions
    ``(trainer, step)`` called after every optimizer step (tests use them to interrupt a run).
    ``splits``: the data (None: ``experiment.data.load()``); ``weights``: a state dict to
    start from (not when resuming), as :func:`perceptio.train.fit` gives them."""

    def __init__(self, experiment: ExperimentConfig, run_dir: str | os.PathLike, resume: bool = False,
                 callbacks: list[Callable[[Trainer, int], None]] | None = None, overwrite: bool = False,
                 splits: Splits | None = None, weights: dict[str, torch.Tensor] | None = None) -> None:
        self.experiment, self.run_dir, self.resume, self.overwrite = experiment, Path(run_dir), resume, overwrite
        self.given_splits, self.weights = splits, weights
        self.callbacks = list(callbacks or [])
        self.stop = _StopRequest()
        self.lock: rundir.RunLock | None = None

    # -- setup ------------------------------------------------------------------------------
    def _setup(self) -> None:
        exp, tc = self.experiment, self.experiment.train
        self.dist = init_distributed()
        self.device = resolve_device(tc.device, self.dist)
        if self.dist.is_main:  # before anything is loaded or written: a busy or finished run stops here
            self.lock = rundir.open_run_dir(self.run_dir, self.resume, self.overwrite)
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.splits = self.given_splits if self.given_splits is not None else exp.data.load()
        model_config = exp.model.resolve()
        if tc.activation_checkpointing and isinstance(model_config, PerceiverARConfig):
            raise ValueError("train.activation_checkpointing is not supported by Perceiver AR models yet")
        if tc.activation_checkpointing:
            model_config = dataclasses.replace(
                model_config, encoder=dataclasses.replace(model_config.encoder, activation_checkpointing=True)
            )
        self.model_config: PerceiverConfig | PerceiverARConfig = model_config
        torch.manual_seed(tc.seed)  # the same initial weights in every process
        self.module = build_model(model_config)
        self.module.check_finite = True  # a NaN input stops the run naming the example
        self._init_weights()
        self.objective = build_objective(self.splits.info, tc.label_smoothing, **exp.objective.settings())
        check_model_fits_data(self.module, self.splits, self.objective, exp.data.describe())
        self.module.to(self.device)
        self.streaming = isinstance(self.splits.train, StreamDataset)
        self.sampler = None if self.streaming else self.splits.make_sampler(tc.batch_size, tc.seed)
        options = (tc.num_workers, tc.prefetch_factor, tc.persistent_workers, self.device)
        self.loader = loader_options(self.splits.train, *options)
        self.eval_loaders = EvalLoaders(loader_options(self.splits.val, *options))
        self._batches = None  # (step, micro, batch) from the DataLoader (perceptio.data.loader)

        self.step, self.best, state = 0, None, None
        saved = self.run_dir / EXPERIMENT_FILE
        if self.resume and saved.is_file() and self.dist.is_main:
            previous = load_experiment(saved)
            if without_loader_keys(previous.to_dict()) != without_loader_keys(exp.to_dict()):
                warnings.warn(f"--resume: the config differs from the one the run started with ({saved}); "
                              "resumed losses will not match an uninterrupted run", stacklevel=2)
            latest = ckpt.load_latest(self.run_dir, self.module)
            if latest is None:
                warnings.warn(f"--resume: no checkpoint in {self.run_dir}/checkpoints, starting from step 0",
                              stacklevel=2)
            else:
                last, state = latest
                self.step, self.best = int(state["step"]), state.get("best")
                self.resumed_from = last
        if self.dist.enabled and self.resume:  # every process continues from the checkpoint process 0 read
            shared = [state]  # (DDP copies process 0's weights to the others when it wraps the model)
            dist.broadcast_object_list(shared, src=0)
            state = shared[0]
            if state is not None:
                self.step, self.best = int(state["step"]), state.get("best")
        if self.dist.is_main:
            if self.overwrite:
                rundir.clear_run(self.run_dir)
            atomic_write_text(self.run_dir / EXPERIMENT_FILE, dump_yaml(exp))

        self.model: nn.Module = self.module
        fsdp = self.dist.enabled and tc.distributed == "fsdp"
        if fsdp:
            from torch.distributed.fsdp import fully_shard

            for layer in self._shard_units():
                fully_shard(layer)
            fully_shard(self.module)
        elif self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            # find_unused_parameters: e.g. a multimodal model whose label input is always masked
            self.model = DistributedDataParallel(self.module, device_ids=ids, find_unused_parameters=True)
        self.fsdp = fsdp
        self.optimizer = build_optimizer(self.module, exp.optim)
        if self.dist.is_main and (tc.freeze or exp.optim.param_groups or exp.model.init_from):
            print("optimizer groups:\n" + describe_groups(self.optimizer.param_groups), flush=True)
        self.ema = None
        if tc.ema_decay is not None:
            params = [p.detach() for p in self.module.parameters()]
            saved_ema = state.get("ema") if state is not None else None
            self.ema = [e.to(p.device).clone() for e, p in zip(saved_ema, params)] if saved_ema else [
                p.clone() for p in params]
        if state is not None:
            self._load_optimizer(state["optimizer"])
            for group in self.optimizer.param_groups:  # checkpoints written before per-group learning rates
                group.setdefault("base_lr", exp.optim.lr)
            set_rng_state(state["rng"][self.dist.rank] if self.dist.rank < len(state["rng"]) else state["rng"][0])
        else:
            torch.manual_seed(tc.seed + self.dist.rank)  # dropout differs per process
        if tc.compile:
            self.model = torch.compile(self.model)
        if self.streaming:  # the stream path: batches read in order, resumed from the saved positions
            self.stream = open_stream(self.splits.train, tc, self.dist.rank, self.dist.world_size, self.loader, state)

    def _init_weights(self) -> None:
        """``model.init_from`` (not when resuming: the checkpoint has the weights), then
        ``train.freeze``; both are reported before training starts."""
        exp = self.experiment
        resuming = self.resume and ckpt.latest_checkpoint(self.run_dir) is not None
        if self.weights is not None and not resuming:
            self.module.load_state_dict(self.weights)
        if exp.model.init_from is not None and not resuming:
            report = init_from(self.module, exp.model.init_from, exp.model.init_modules)
            if self.dist.is_main:
                print(report.summary(), flush=True)
        if exp.train.freeze:
            frozen = freeze(self.module, exp.train.freeze)
            if self.dist.is_main:
                print(f"frozen ({len(frozen)} tensors, train.freeze={exp.train.freeze}): "
                      f"{', '.join(module_groups(frozen))}", flush=True)

    def _shard_units(self) -> list[nn.Module]:
        if isinstance(self.module, PerceiverAR):
            return [*self.module.cross_attends, *self.module.self_attends]
        enc = self.module.encoder
        return [*enc.cross_attends, *[layer for block in enc.latent_blocks for layer in block.layers]]

    def autocast(self):
        enabled = self.experiment.train.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # -- state -------------------------------------------------------------------------------
    def _model_state(self) -> dict[str, torch.Tensor]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            return get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.module.state_dict()

    def _optimizer_state(self) -> dict[str, Any]:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            return get_optimizer_state_dict(self.module, self.optimizer,
                                            options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return self.optimizer.state_dict()

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.module, self.optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(state)

    def save_checkpoint(self) -> None:
        """Collective: every process contributes its RNG state; process 0 writes."""
        model_state, optim_state = self._model_state(), self._optimizer_state()
        rngs = [rng_state()]
        streams = [self.stream.state()] if self.streaming else None
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            dist.all_gather_object(rngs, rng_state())
            if self.streaming:
                streams = [None] * self.dist.world_size
                dist.all_gather_object(streams, self.stream.state())
        if self.dist.is_main:
            trainer_state = {"step": self.step, "optimizer": optim_state, "rng": rngs, "best": self.best}
            if self.streaming:
                trainer_state["stream"] = streams
            if self.ema is not None:
                trainer_state["ema"] = [e.detach().cpu() for e in self.ema]
            ckpt.save_checkpoint(self.run_dir, self.step, model_state, self.model_config, trainer_state,
                                 self.experiment.train.keep_last)
        self._barrier()
        self._saved_step = self.step

    def _barrier(self) -> None:
        if self.dist.enabled:
            dist.barrier()

    # -- logging -----------------------------------------------------------------------------
    def _open_logs(self) -> None:
        self.csv_path = self.run_dir / "metrics.csv"
        if not self.dist.is_main:
            return
        rows = []
        if self.csv_path.exists() and self.step > 0:  # keep the rows up to the resumed step
            with self.csv_path.open(newline="") as f:  # (a row torn by a crash is dropped)
                rows = [r for r in csv.DictReader(f) if str(r.get("step")).isdigit() and r.get("value") is not None
                        and int(r["step"]) <= self.step]
        text = io.StringIO()
        writer = csv.DictWriter(text, ["step", "split", "name", "value"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, text.getvalue())
        self.tb = None
        if self.experiment.logging.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ImportError("logging.tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))

    def log(self, split: str, metrics: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        with self.csv_path.open("a", newline="") as f:
            csv.writer(f).writerows([self.step, split, k, f"{v:.8g}"] for k, v in sorted(metrics.items()))
        if self.tb is not None:
            for k, v in metrics.items():
                self.tb.add_scalar(f"{split}/{k}", v, self.step)

    def _reduce(self, sums: dict[str, tuple[float, int]]) -> dict[str, tuple[float, int]]:
        if not self.dist.enabled:
            return sums
        gathered = [None] * self.dist.world_size
        dist.all_gather_object(gathered, sums)
        total: dict[str, tuple[float, int]] = {}
        for s in gathered:
            add_sums(total, s)
        return total

    def _progress(self, total: int):
        if not (self.dist.is_main and self.experiment.logging.progress):
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
        return tqdm(total=total, initial=self.step, desc=self.experiment.name, unit="step", dynamic_ncols=True)

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, split: str = "val") -> dict[str, float]:
        """Metrics of ``split`` computed by process 0 (other processes return ``{}``). With
        FSDP the full weights are gathered (collectively) into an unsharded copy first."""
        tc = self.experiment.train
        module = self.module
        if self.fsdp:
            state = self._model_state()
            if self.dist.is_main:
                module = build_model(self.model_config)
                module.load_state_dict(state)
                module.to(self.device)
        metrics = {}
        if self.dist.is_main:
            metrics = self.objective.evaluate(module, self.splits.get(split), tc.eval_batch_size, self.device,
                                              self.autocast, loaders=self.eval_loaders)
        return metrics

    def _is_better(self, value: float) -> bool:
        if not math.isfinite(value):  # a NaN model is never the best one
            return False
        if self.best is None:
            return True
        return value > self.best if self.objective.higher_is_better else value < self.best

    def _validate(self) -> None:
        with self.averaged_weights():
            self._validate_current()

    def _validate_current(self) -> None:
        metrics = self.evaluate("val")
        self.log("val", metrics)
        name = self.experiment.train.best_metric or self.objective.main_metric
        better = False
        if self.dist.is_main:
            if name not in metrics:
                raise ValueError(f"train.best_metric={name!r} is not a validation metric; allowed: {sorted(metrics)}")
            better = self._is_better(metrics[name]) and all(math.isfinite(v) for v in metrics.values())
        if self.dist.enabled:
            flag = [better]
            dist.broadcast_object_list(flag, src=0)
            better = flag[0]
        if better:
            state = self._model_state()
            if self.dist.is_main:
                self.best = metrics[name]
                ckpt.save_best(self.run_dir, state, self.model_config, {"step": self.step, **metrics})
        if self.dist.is_main and self.progress is not None:
            self.progress.write(f"step {self.step}: val " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))

    # -- the loop ----------------------------------------------------------------------------
    def train_step(self) -> dict[str, tuple[float, int]]:
        tc = self.experiment.train
        set_lr(self.optimizer, lr_factor(self.step, tc.steps, self.experiment.optim))
        sums: dict[str, tuple[float, int]] = {}
        for micro in range(tc.grad_accum):
            if self.streaming:  # the stream path (perceptio.train.streaming)
                batch = self.stream.next(step_generator(tc.seed, self.step, micro, self.dist.rank))
            else:
                batch = self._micro_batch(micro)
            batch = nested_to(batch, self.device)
            sync = contextlib.nullcontext()
            if micro < tc.grad_accum - 1 and hasattr(self.model, "no_sync"):
                sync = self.model.no_sync()
            with sync:
                with self.autocast():
                    loss, batch_sums = self.objective.loss(self.model, batch, step_generator(tc.seed, self.step, micro))
                self._check_finite("loss", float(loss.detach()))  # no extra sync: the objectives read it
                (loss / tc.grad_accum).backward()
            add_sums(sums, batch_sums)
        clip = self.experiment.optim.grad_clip
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(self.module.parameters(), clip)
            sums["grad_norm"] = (float(norm), 1)
            self._check_finite("gradient norm", float(norm))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            # the usual warm-up of the decay: early averages forget the random init faster
            decay = min(tc.ema_decay, (1 + self.step) / (10 + self.step))
            with torch.no_grad():
                torch._foreach_lerp_(self.ema, [p.detach() for p in self.module.parameters()], 1 - decay)
        self.step += 1
        return sums

    def _micro_batch(self, micro: int) -> dict[str, Any]:
        """Micro-batch ``micro`` of the current step, from the batch reader started at the
        first step trained (restarted if the step was moved meanwhile)."""
        item = next(self._batches, None) if self._batches is not None else None
        if item is None or item[:2] != (self.step, micro):
            tc = self.experiment.train
            self._batches = step_batches(self.splits.train, self.sampler, seed=tc.seed, start=self.step,
                                         stop=max(tc.steps, self.step + 1), grad_accum=tc.grad_accum,
                                         rank=self.dist.rank, world_size=self.dist.world_size, options=self.loader)
            item = next(self._batches)
        return item[2]

    def _close_loaders(self) -> None:
        """Stop the DataLoader workers (of training and evaluation)."""
        if getattr(self, "_batches", None) is not None:
            self._batches.close()
            self._batches = None
        if getattr(self, "eval_loaders", None) is not None:
            self.eval_loaders.close()
        if getattr(self, "stream", None) is not None:
            self.stream.close()

    def _check_finite(self, what: str, value: float) -> None:
        """Stop the run (every process) when ``value`` is NaN or infinite, before the
        optimizer step: no NaN weights are saved or recorded as the best model."""
        finite = math.isfinite(value)
        if self.dist.enabled:  # all processes stop together, none waits in a collective
            flag = torch.tensor([float(finite)], device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            finite = bool(flag.item() > 0)
        if not finite:
            last = ckpt.latest_checkpoint(self.run_dir)
            kept = f"the checkpoints up to {last.name} and best/ are kept" if last is not None else "nothing was saved"
            raise TrainingDiverged(
                f"training diverged at step {self.step + 1}: the {what} is {value} (expected a finite number); "
                f"stopped without saving these weights ({kept}). Lower optim.lr (now {self.experiment.optim.lr:g}), "
                f"set or lower optim.grad_clip, warm up longer (optim.warmup_steps), or check the data")

    @contextlib.contextmanager
    def averaged_weights(self):
        """Temporarily swap the EMA weights into the model (no-op without ``train.ema_decay``)."""
        if self.ema is None:
            yield
            return
        params = list(self.module.parameters())
        with torch.no_grad():
            raw = [p.detach().clone() for p in params]
            torch._foreach_copy_([p.data for p in params], self.ema)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in params], raw)

    def fit(self) -> dict[str, Any]:
        """Train (and evaluate) the run; the run directory stays locked until it returns."""
        try:
            return self._fit()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _fit(self) -> dict[str, Any]:
        self._setup()
        tc, lc = self.experiment.train, self.experiment.logging
        self._open_logs()
        self._saved_step = self.step
        self.progress = self._progress(tc.steps)
        window: dict[str, tuple[float, int]] = {}
        t0, n0 = time.perf_counter(), self.step
        try:
            with self.stop:
                while self.step < tc.steps:
                    add_sums(window, self.train_step())
                    for callback in self.callbacks:
                        callback(self, self.step)
                    if self.step % lc.log_every == 0 or self.step == tc.steps:
                        metrics = means(self._reduce(window))
                        elapsed = time.perf_counter() - t0
                        metrics["lr"] = self.optimizer.param_groups[-1]["lr"]  # optim.lr (the default group is last)
                        metrics["samples_per_s"] = (self.step - n0) * tc.batch_size / max(elapsed, 1e-9)
                        self.log("train", metrics)
                        window, t0, n0 = {}, time.perf_counter(), self.step
                        if self.progress is not None:
                            self.progress.set_postfix(loss=f"{metrics.get('loss', float('nan')):.4f}",
                                                      samples_s=f"{metrics['samples_per_s']:.0f}")
                    if self.progress is not None:
                        self.progress.update(1)
                    if self.step % tc.eval_every == 0 or self.step == tc.steps:
                        self._validate()
                    if self.step % tc.checkpoint_every == 0 or self.step == tc.steps:
                        self.save_checkpoint()
                    if self._stop_requested():
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            if self._saved_step != self.step:
                self.save_checkpoint()
            if self.dist.is_main:
                print(f"interrupted: checkpoint of step {self.step} in {ckpt.checkpoint_root(self.run_dir)}; "
                      f"continue with --resume", file=sys.stderr)
            raise
        finally:
            if self.progress is not None:
                self.progress.close()
            self._close_loaders()
        results: dict[str, Any] = {}
        if self.dist.is_main:
            results = finish_run(self.run_dir, self.experiment, self.splits, self.device,
                                 plots=lc.plots, loaders=self.eval_loaders)
            if getattr(self, "tb", None) is not None:
                for split, metrics in results.items():
                    for k, v in metrics.items():
                        self.tb.add_scalar(f"final_{split}/{k}", v, self.step)
                self.tb.close()
        self._barrier()
        return results

    def _stop_requested(self) -> bool:
        flag = self.stop.requested
        if self.dist.enabled:
            t = torch.tensor([float(flag)], device=self.device if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(t)
            flag = bool(t.item() > 0)
        return flag


# ---------------------------------------------------------------------------------------
# Final evaluation (also `perceptio evaluate RUN_DIR`)
# ---------------------------------------------------------------------------------------
def evaluate_run(run_dir: str | os.PathLike, experiment: ExperimentConfig | None = None, splits: Splits | None = None,
                 device: torch.device | str = "cpu", which: str = "best",
                 loaders: EvalLoaders | None = None) -> dict[str, dict[str, float]]:
    """Validation and test metrics (and those of the data set's further splits, e.g.
    ``extrapolation``) of the best (or last) model of a run."""
    from .experiment import load_run_experiment

    run_dir = Path(run_dir)
    experiment = experiment or load_run_experiment(run_dir)
    checkpoint = ckpt.best_checkpoint(run_dir) if which == "best" else None
    checkpoint = checkpoint or ckpt.latest_checkpoint(run_dir)
    if checkpoint is None:
        raise FileNotFoundError(f"{run_dir}: no checkpoint in {ckpt.checkpoint_root(run_dir)}; train first")
    device = check_device(device)
    model = load_pretrained(checkpoint).to(device)
    model.check_finite = True
    splits = splits or experiment.data.load()
    objective = build_objective(splits.info, experiment.train.label_smoothing, **experiment.objective.settings())
    autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16,  # noqa: E731
                                      enabled=experiment.train.precision == "bf16")
    bs, tc = experiment.train.eval_batch_size, experiment.train
    if loaders is None:
        loaders = EvalLoaders(loader_options(splits.val, tc.num_workers, tc.prefetch_factor, False, device))
    try:
        return {split: objective.evaluate(model, splits.get(split), bs, device, autocast, loaders=loaders)
                for split in splits.eval_names}
    finally:
        loaders.close()


def finish_run(run_dir: Path, experiment: ExperimentConfig, splits: Splits, device: torch.device,
               plots: bool = True, loaders: EvalLoaders | None = None) -> dict[str, dict[str, float]]:
    results = evaluate_run(run_dir, experiment, splits, device, loaders=loaders)
    atomic_write_json(run_dir / "metrics.json", results)
    with (run_dir / "metrics.csv").open("a", newline="") as f:
        step = ckpt.latest_checkpoint(run_dir)
        step_no = int(step.name.split("_")[1]) if step else 0
        csv.writer(f).writerows([step_no, f"final_{split}", k, f"{v:.8g}"]
                                for split, m in results.items() for k, v in sorted(m.items()))
    if plots:
        from .plots import save_plots

        save_plots(run_dir, experiment, splits)
    return results
