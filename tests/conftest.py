"""pytest fixtures for every test. Shared helpers (fixture paths, ``randomize``,
``split_npz``) are in helpers.py, not here: tests do not import conftest."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
