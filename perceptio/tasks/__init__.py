"""Inference: every task once, on a :class:`~perceptio.Perceiver` from anywhere (a preset,
a converted checkpoint, a model directory or a training run, see :mod:`.loading`).

* :mod:`.fill_mask`: fill masked byte spans of text (``[MASK]``, ``[MASK:N]`` or byte
  ranges), for the published language model and masked-byte training runs alike;
* :mod:`.classification`: the top-k classes of logits, shared by the classifying tasks;
* :mod:`.image_classification`: top-k classes of image files (ImageNet classifiers);
* :mod:`.optical_flow`: flow between two frames of any size by overlapping tiles,
  ``.flo`` files and the Middlebury colour coding;
* :mod:`.multimodal`: video + audio autoencoding and clip classification;
* :mod:`.runs`: a training run's predictions on files read as its data set reads them;
* :mod:`.loading`: the model of a model directory or a training run directory.

Image files are read by :func:`perceptio.data.files.read_image` (one reader for published
models, training data and runs).
"""

from .classification import Prediction, top_predictions
from .fill_mask import FillMaskResult, fill_mask
from .image_classification import classify_images
from .loading import load_model, load_run_model
from .multimodal import AutoencodingResult, autoencode
from .optical_flow import estimate_flow, flow_to_color, read_flo, save_png, tiled_flow, write_flo
from .runs import TrainedRun, load_run, predict_run, read_run_input
