"""Inference on raw inputs with the published models: one module per task.

* :mod:`.fill_mask`: fill masked byte spans of text (language perceiver);
* :mod:`.image_classification`: top-k classes of image files (ImageNet classifiers);
* :mod:`.optical_flow`: flow between two frames of any size by overlapping tiles,
  ``.flo`` files and the Middlebury colour coding;
* :mod:`.multimodal`: video + audio autoencoding and clip classification;
* :mod:`.images`: image files (Pillow, the optional ``image`` extra).
"""

from .fill_mask import FillMaskResult, fill_mask
from .image_classification import Prediction, classify_images
from .optical_flow import estimate_flow, flow_to_color, read_flo, tiled_flow, write_flo
from .multimodal import AutoencodingResult, autoencode
