"""Training data: built-in data sets and loaders for your own files (see docs/training.md)."""

from .base import (ArrayDataset, DataConfig, DataInfo, ExampleDataset, Sampler, Splits, StreamDataset,
                   example_generator, step_generator)
from . import builtin as _builtin  # noqa: F401  (registers the built-in kinds)
from . import files as _files  # noqa: F401  (registers the file kinds)
from . import text as _text  # noqa: F401  (registers the labelled-text kinds)
from . import multitask as _multitask  # noqa: F401  (registers the multitask kind)
from . import loader as _loader  # noqa: F401  (registers the kind of data given from Python)
from . import hf as _hf  # noqa: F401  (registers hf_dataset; the datasets package is imported when it loads)
from . import shards as _shards  # noqa: F401  (registers the webdataset kind)
