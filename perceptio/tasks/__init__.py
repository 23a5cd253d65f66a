"""Inference on raw inputs with the published models: one module per task.

* :mod:`.fill_mask`: fill masked byte spans of text (language perceiver);
* :mod:`.optical_flow`: flow between two frames of any size by overlapping tiles,
  ``.flo`` files and the Middlebury colour coding.
"""

from .fill_mask import FillMaskResult, fill_mask
from .optical_flow import flow_to_color, read_flo, tiled_flow, write_flo
