"""Helpers shared by the tests (imported as ``from helpers import ...``; pytest puts this
directory on ``sys.path``). Fixtures proper live in conftest.py."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# The fixtures shipped with the repository, for tests that need one particular fixture.
SHIPPED_FIXTURES = HERE / "fixtures" / "deepmind"
# The official golden fixtures (and more made with the official code); an environment
# variable replaces them by another directory of fixtures in the same format.
if os.environ.get("PERCEPTIO_DEEPMIND_FIXTURES"):
    FIXTURE_DIRS = [Path(os.environ["PERCEPTIO_DEEPMIND_FIXTURES"])]
else:
    FIXTURE_DIRS = [SHIPPED_FIXTURES, HERE / "fixtures" / "deepmind_extra"]

Arrays = dict[str, np.ndarray]


def split_npz(arrays: Mapping[str, np.ndarray]) -> tuple[Arrays, Arrays, Arrays, Arrays]:
    """Split a fixture ``.npz`` (keys ``group::name``) into (params, state, inputs, outputs),
    keys without the group prefix."""
    groups: dict[str, Arrays] = {"params": {}, "state": {}, "inputs": {}, "outputs": {}}
    for key in arrays:
        group, sep, name = key.partition("::")
        if not sep or group not in groups:
            raise KeyError(f"fixture key {key!r}: expected 'GROUP::name' with GROUP one of {sorted(groups)}")
        groups[group][name] = arrays[key]
    return groups["params"], groups["state"], groups["inputs"], groups["outputs"]


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Re-draw every parameter and batch-norm statistic (from their own generator, so the
    draw does not depend on what ran before) so that no tensor keeps a default (ones /
    zeros) that a wrong mapping or a skipped layer could hide behind. Returns the model in
    eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.3 * noise)
            elif p.dim() >= 2 and "weight" in name:
                p.copy_(noise / p[0].numel() ** 0.5)
            else:
                p.copy_(0.3 * noise)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.3 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()
