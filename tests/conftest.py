import os
from pathlib import Path

import pytest
import torch

_HERE = Path(__file__).parent
# The fixtures shipped with the repository, for tests that need one particular fixture.
SHIPPED_FIXTURES = _HERE / "fixtures" / "deepmind"
# The official golden fixtures (and more made with the official code); an environment
# variable replaces them by another directory of fixtures in the same format.
if os.environ.get("PERCEPTIO_DEEPMIND_FIXTURES"):
    FIXTURE_DIRS = [Path(os.environ["PERCEPTIO_DEEPMIND_FIXTURES"])]
else:
    FIXTURE_DIRS = [_HERE / "fixtures" / "deepmind", _HERE / "fixtures" / "deepmind_extra"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
