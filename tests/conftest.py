import os
from pathlib import Path

import pytest
import torch

FIXTURE_DIR = Path(os.environ.get("PERCEPTIO_DEEPMIND_FIXTURES", Path(__file__).parent / "fixtures" / "deepmind"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
