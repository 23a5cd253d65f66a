"""perceptio: Perceiver and Perceiver IO in PyTorch."""

from .adapters.audio import AudioAdapterConfig, AudioOutputConfig
from .adapters.base import AdapterOutput, InputAdapterConfig, OutputAdapterConfig
from .adapters.grid import GridAdapterConfig, PointCloudAdapterConfig, SpectrogramAdapterConfig
from .adapters.flow import FlowAdapterConfig, FlowOutputConfig
from .adapters.heads import ClassificationOutputConfig, ProjectionOutputConfig
from .adapters.image import ImageAdapterConfig, imagenet_normalize
from .adapters.label import OneHotAdapterConfig
from .adapters.multimodal import MultimodalAdapterConfig, MultimodalOutputConfig
from .adapters.positions import PositionEncodingConfig
from .adapters.text import TextAdapterConfig, TiedEmbeddingOutputConfig
from .config import Config, ConfigError
from .decoder import CrossAttentionDecoderConfig, DecoderConfig, LatentMeanDecoderConfig
from .queries import (
    ConcatQueriesConfig,
    FourierQueriesConfig,
    InputQueriesConfig,
    MultimodalQueriesConfig,
    QueryConfig,
    TrainableQueriesConfig,
)
from .encoder import EncoderConfig, PerceiverEncoder, PonderConfig
from .resampler import PerceiverResampler, ResamplerConfig, resampler_from_flamingo_pytorch
from .model import Perceiver, PerceiverConfig, PerceiverOutput
from .perceiver_ar import PerceiverAR, PerceiverARConfig, PerceiverAROutput
from .pretrained import DamagedFileError, load_pretrained
from .tokenizer import ByteTokenizer, CausalByteTokenizer
from .presets import Preset, count_parameters, create_model, get_preset, list_presets, preset_config, register_preset
from .checkpoints import convert, load_checkpoint, load_deepmind_checkpoint

__version__ = "0.1.0"


def __getattr__(name: str):
    # Lazy: `import perceptio` must not import the transformers interop (nor transformers).
    if name == "from_transformers":
        from .interop.transformers import from_transformers

        return from_transformers
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
