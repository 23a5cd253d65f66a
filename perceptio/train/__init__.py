"""Training Perceivers on your own data: experiment configs, the trainer, optimizers,
checkpoints (see docs/training.md)."""

from .experiment import ExperimentConfig, load_experiment
from .trainer import Trainer, evaluate_run
from .python_api import fit
