"""Interop with the official DeepMind Perceiver IO code (JAX/Haiku).

* :func:`config_from_reference` turns the reference's constructor arguments (as in the
  golden fixtures' ``config``) into a :class:`~perceptio.model.PerceiverConfig`: it
  translates them into the keywords of the builders in :mod:`perceptio.architectures`.
* :func:`convert_reference_params` maps Haiku parameter names
  (``perceiver_encoder/~/cross_attention/attention/linear::w``) to our state dict.
* :func:`load_reference_file` reads a released checkpoint (pickle) with a restricted
  unpickler that rebuilds only numpy arrays and plain containers.
"""

from __future__ import annotations

import io
import math
import pickle
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .. import architectures
from ..adapters.audio import AudioAdapterConfig, AudioInputAdapter, AudioOutput, AudioOutputConfig
from ..adapters.flow import FlowInputAdapter
from ..adapters.heads import ClassificationOutputConfig, FirstQuery, ProjectionOutputConfig
from ..adapters.image import ImageAdapterConfig, ImageInputAdapter
from ..adapters.label import OneHotAdapterConfig, OneHotInputAdapter
from ..adapters.multimodal import MultimodalInputAdapter, MultimodalOutput
from ..adapters.positions import NetworkInputs, PositionEncodingConfig
from ..adapters.text import TextInputAdapter, TiedEmbeddingOutput
from ..queries import FourierQueriesConfig, MultimodalQueries, QueryBuilder, TrainableQueries, TrainableQueriesConfig
from ..encoder import EncoderConfig, PerceiverEncoder
from ..model import Perceiver, PerceiverConfig
from ..pretrained import DamagedFileError, load_state_dict_strict

Arrays = dict[str, np.ndarray]  # "module/path::param" -> array


# ---------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------
def encoder_config_from_reference(enc: Mapping[str, Any]) -> EncoderConfig:
    """Reference ``PerceiverEncoder`` kwargs -> :class:`EncoderConfig`."""
    return EncoderConfig(
        num_latents=enc["z_index_dim"],
        num_latent_channels=enc["num_z_channels"],
        num_blocks=enc.get("num_blocks", 8),
        num_self_attends_per_block=enc.get("num_self_attends_per_block", 6),
        num_self_attend_heads=enc.get("num_self_attend_heads", 8),
        num_cross_attend_heads=enc.get("num_cross_attend_heads", 8),
        qk_channels=enc.get("qk_channels"),
        v_channels=enc.get("v_channels"),
        cross_attend_widening_factor=enc.get("cross_attend_widening_factor", 1),
        self_attend_widening_factor=enc.get("self_attend_widening_factor", 1),
        use_query_residual=enc.get("use_query_residual", True),
        cross_attention_shape_for_attn=enc.get("cross_attention_shape_for_attn", "kv"),
        dropout=enc.get("dropout_prob", 0.0),
        attention_dropout=enc.get("dropout_attn_prob", 0.0),
    )


def decoder_keywords(dec: Mapping[str, Any]) -> dict[str, Any]:
    """Reference ``BasicDecoder`` kwargs (its defaults otherwise) -> the ``decoder_*``
    keywords of the builders in :mod:`perceptio.architectures`."""
    return dict(
        decoder_heads=dec.get("num_heads", 1),
        decoder_qk_channels=dec.get("qk_channels"),
        decoder_v_channels=dec.get("v_channels"),
        decoder_query_residual=dec.get("use_query_residual", False),
    )


def _masked_language_model(cfg: Mapping[str, Any]) -> PerceiverConfig:
    dec = cfg["decoder"]
    return architectures.masked_language_model(
        encoder=encoder_config_from_reference(cfg["encoder"]),
        vocab_size=cfg["vocab_size"], max_seq_len=cfg["max_seq_len"], d_model=cfg["d_model"],
        num_queries=dec["output_index_dims"],
        decoder_output_channels=dec["output_num_channels"] if dec.get("final_project", True) else None,
        **decoder_keywords(dec),
    )


def position_config_from_reference(prep: Mapping[str, Any]) -> PositionEncodingConfig:
    """Position arguments of a reference ``ImagePreprocessor``/``AudioPreprocessor``
    (``position_encoding_type``, ``fourier_position_encoding_kwargs`` or ``fourier``,
    ``trainable_position_encoding_kwargs``, ``project_pos_dim``, ``n_extra_pos_mlp``,
    ``concat_or_add_pos``) -> :class:`PositionEncodingConfig`."""
    kind = prep.get("position_encoding_type", "fourier")
    project = prep.get("project_pos_dim", -1)
    common = dict(
        project_pos_dim=project if project and project > 0 else None,
        num_extra_mlp=prep.get("n_extra_pos_mlp", 0),
        combine=prep.get("concat_or_add_pos", "concat"),
    )
    if kind == "fourier":
        ff = prep.get("fourier_position_encoding_kwargs") or prep.get("fourier")
        if ff is None:
            raise ValueError("fourier positions need fourier_position_encoding_kwargs (num_bands, ...)")
        res = ff.get("max_resolution")
        return PositionEncodingConfig(
            encoding="fourier", num_bands=ff["num_bands"], max_resolution=list(res) if res is not None else None,
            concat_pos=ff.get("concat_pos", True), sine_only=ff.get("sine_only", False), **common,
        )
    if kind == "trainable":
        tr = prep.get("trainable_position_encoding_kwargs") or prep.get("trainable")
        if tr is None:
            raise ValueError("trainable positions need trainable_position_encoding_kwargs (num_channels, ...)")
        return PositionEncodingConfig(
            encoding="trainable", num_channels=tr["num_channels"], init_scale=tr.get("init_scale", 0.02), **common
        )
    raise ValueError(f"unknown position_encoding_type {kind!r}; supported: ['fourier', 'trainable']")


def image_adapter_config_from_reference(prep: Mapping[str, Any], image_shape: list[int]) -> ImageAdapterConfig:
    """Reference ``ImagePreprocessor`` kwargs (its defaults otherwise) -> :class:`ImageAdapterConfig`."""
    return ImageAdapterConfig(
        image_shape=list(image_shape),
        prep_type=prep.get("prep_type", "conv"),
        spatial_downsample=prep.get("spatial_downsample", 4),
        temporal_downsample=prep.get("temporal_downsample", 1),
        num_channels=prep.get("num_channels", 64),
        conv_after_patching=prep.get("conv_after_patching", False),
        conv_use_batchnorm=prep.get("conv2d_use_batchnorm", True),
        position=position_config_from_reference(prep),
    )


def _image_classifier(cfg: Mapping[str, Any]) -> PerceiverConfig:
    dec = cfg["decoder"]
    if dec.get("position_encoding", dec.get("position_encoding_type", "trainable")) != "trainable":
        raise ValueError("ClassificationDecoder: only trainable query positions are supported")
    return architectures.classifier(
        encoder=encoder_config_from_reference(cfg["encoder"]),
        inputs=image_adapter_config_from_reference(cfg.get("preprocessor", {}), cfg["image_shape"]),
        num_classes=dec["num_classes"],
        query_channels=dec.get("query_channels") or dec["trainable_position_encoding_kwargs"]["num_channels"],
        **decoder_keywords(dec),
    )


def _optical_flow(cfg: Mapping[str, Any]) -> PerceiverConfig:
    prep, dec = cfg.get("preprocessor", {}), cfg["decoder"]
    frames = cfg["frames_shape"]
    if len(frames) != 4 or frames[0] != 2:
        raise ValueError(f"optical_flow: frames_shape must be [2, H, W, C], got {frames}")
    if list(cfg.get("train_size", frames[1:3])) != list(frames[1:3]):
        raise ValueError(f"optical_flow: frames {frames[1:3]} must have the training size {cfg['train_size']}")
    expected = dict(prep_type="patches", spatial_downsample=1, temporal_downsample=2, conv_after_patching=True)
    for key, value in expected.items():  # the flow preprocessing is fixed by the reference model
        if prep.get(key, value) != value:
            raise ValueError(f"optical_flow: preprocessor {key}={prep[key]!r} is not supported; the flow model uses {value!r}")
    return architectures.optical_flow(
        encoder=encoder_config_from_reference(cfg["encoder"]),
        train_size=frames[1:3], image_channels=frames[3], num_channels=prep.get("num_channels", 64),
        position=position_config_from_reference(prep),
        output_channels=dec.get("output_num_channels", 2), rescale_factor=dec.get("rescale_factor", 100.0),
        **decoder_keywords(dec),
    )


def _linear_width(description: Any, default: int) -> int:
    """Width of a postprocessor described as ``{"num_outputs": n}`` or ``"Linear(n) ..."``."""
    if isinstance(description, Mapping):
        for key in ("num_outputs", "num_classes", "samples_per_patch"):
            if key in description:
                return int(description[key])
    if isinstance(description, str):
        match = re.search(r"Linear\((\d+)\)", description)
        if match:
            return int(match.group(1))
    return default


def _multimodal_autoencoder(cfg: Mapping[str, Any]) -> PerceiverConfig:
    """The video + audio + label autoencoder of the reference colab. Modalities are
    recognised by name: ``image`` (video frames), ``audio`` (patches of samples),
    ``label`` (one-hot, with trainable decoder queries)."""
    prep, dec, post = cfg["preprocessor"], cfg["decoder"], cfg.get("postprocessor", {})
    size = cfg.get("image_size", 224)
    height, width = (size, size) if isinstance(size, int) else size
    channels = cfg.get("image_channels", 3)
    image_shape = [cfg["num_frames"], height, width, channels]
    num_samples = cfg["num_frames"] * cfg.get("audio_samples_per_frame", 0)
    samples_per_patch = cfg.get("samples_per_patch", 16)

    inputs: dict[str, Any] = {}
    for name in sorted(k for k in prep if k not in ("min_padding_size", "mask_probs")):
        p = prep[name] if isinstance(prep[name], Mapping) else {}
        if name == "image":
            inputs[name] = image_adapter_config_from_reference(p, image_shape)
        elif name == "audio":
            if p.get("prep_type", "patches") != "patches":
                raise ValueError(f"audio prep_type {p['prep_type']!r} is not supported; the reference has 'patches'")
            inputs[name] = AudioAdapterConfig(
                num_samples=num_samples, samples_per_patch=p.get("samples_per_patch", samples_per_patch),
                position=position_config_from_reference(p),
            )
        elif name == "label":
            inputs[name] = OneHotAdapterConfig(num_classes=cfg["num_classes"])
        else:
            raise ValueError(f"unknown modality {name!r}; supported: ['audio', 'image', 'label']")

    shared = dec.get("shared_decoder", {})
    queries: dict[str, Any] = {}
    for name in sorted(k for k in dec if k not in ("kind", "shared_decoder")):
        d = dec[name]
        if name == "image":
            index_dims = d.get("index_dims", image_shape[:3])
        elif name == "audio":
            index_dims = d.get("index_dims", [num_samples // samples_per_patch])
        else:
            index_dims = d.get("index_dims", [1])
        if "trainable_query_channels" in d or d.get("position_encoding_type") == "trainable":
            channels_q = d.get("trainable_query_channels") or d["trainable_position_encoding_kwargs"]["num_channels"]
            queries[name] = TrainableQueriesConfig(num_queries=math.prod(index_dims), num_channels=channels_q)
        else:
            ff = d.get("fourier") or d["fourier_position_encoding_kwargs"]
            res = ff.get("max_resolution")
            queries[name] = FourierQueriesConfig(
                index_dims=list(index_dims), num_bands=ff["num_bands"],
                max_resolution=list(res) if res is not None else None,
                concat_pos=ff.get("concat_pos", True), sine_only=ff.get("sine_only", False),
            )

    heads: dict[str, Any] = {}
    for name in queries:
        if name == "audio":
            heads[name] = AudioOutputConfig(samples_per_patch=_linear_width(post.get(name), samples_per_patch))
        elif name == "image":
            heads[name] = ProjectionOutputConfig(num_outputs=_linear_width(post.get(name), channels))
        elif name == "label":
            heads[name] = ClassificationOutputConfig(num_classes=_linear_width(post.get(name), cfg["num_classes"]))

    return architectures.multimodal_autoencoder(
        encoder=encoder_config_from_reference(cfg["encoder"]),
        inputs=inputs, queries=queries, outputs=heads,
        decoder_channels=shared["output_num_channels"],
        mask_probs=prep.get("mask_probs"),
        input_padding=prep.get("min_padding_size", 2),
        query_padding=shared.get("min_padding_size", 2),
        **decoder_keywords(shared),
    )


# Model kinds of the reference -> config builders. Other modules add theirs here.
CONFIG_BUILDERS: dict[str, Callable[[Mapping[str, Any]], PerceiverConfig]] = {
    "masked_language_model": _masked_language_model,
    "image_classifier": _image_classifier,
    "optical_flow": _optical_flow,
    "multimodal_autoencoder": _multimodal_autoencoder,
}


def config_from_reference(cfg: Mapping[str, Any]) -> PerceiverConfig:
    """Build our config from the reference constructor arguments (a fixture's ``config``)."""
    kind = cfg.get("model")
    if kind not in CONFIG_BUILDERS:
        raise ValueError(f"unknown reference model kind {kind!r}; supported: {sorted(CONFIG_BUILDERS)}")
    return CONFIG_BUILDERS[kind](cfg)


# ---------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------
class ParamMapper:
    """Collects ``our state-dict key -> tensor`` from reference arrays, tracking which
    reference arrays were used so that leftovers can be reported."""

    def __init__(self, params: Arrays, state: Arrays | None = None) -> None:
        self.params, self.state = dict(params), dict(state or {})
        self.used: set[str] = set()
        self.out: dict[str, Tensor] = {}
        self.absent: list[str] = []

    def take(self, ref: str, ours: str, transform: Callable[[np.ndarray], np.ndarray] = lambda a: a, state: bool = False) -> None:
        source = self.state if state else self.params
        if ref not in source:
            self.absent.append(ref)
            return
        self.used.add(("state::" if state else "") + ref)
        self.out[ours] = torch.from_numpy(np.ascontiguousarray(transform(np.asarray(source[ref], dtype=np.float32))))

    def linear(self, ref: str, ours: str) -> None:
        self.take(f"{ref}::w", f"{ours}.weight", lambda w: w.T)
        self.take(f"{ref}::b", f"{ours}.bias")

    def layer_norm(self, ref: str, ours: str) -> None:
        self.take(f"{ref}::scale", f"{ours}.weight")
        self.take(f"{ref}::offset", f"{ours}.bias")

    def attention(self, ref: str, ours: str) -> None:
        for i, name in enumerate(("q", "k", "v", "o")):
            self.linear(f"{ref}/linear" + (f"_{i}" if i else ""), f"{ours}.{name}")

    def mlp(self, ref: str, ours: str) -> None:
        self.linear(f"{ref}/linear", f"{ours}.fc1")
        self.linear(f"{ref}/linear_1", f"{ours}.fc2")

    def cross_attention(self, ref: str, ours: str) -> None:
        self.layer_norm(f"{ref}/layer_norm", f"{ours}.q_norm")
        self.layer_norm(f"{ref}/layer_norm_1", f"{ours}.kv_norm")
        self.attention(f"{ref}/attention", f"{ours}.attention")
        self.layer_norm(f"{ref}/layer_norm_2", f"{ours}.mlp_norm")
        self.mlp(f"{ref}/mlp", f"{ours}.mlp")

    def self_attention(self, ref: str, ours: str) -> None:
        self.layer_norm(f"{ref}/layer_norm", f"{ours}.norm")
        self.attention(f"{ref}/attention", f"{ours}.attention")
        self.layer_norm(f"{ref}/layer_norm_1", f"{ours}.mlp_norm")
        self.mlp(f"{ref}/mlp", f"{ours}.mlp")

    def conv(self, ref: str, ours: str, bias: bool = True) -> None:
        self.take(f"{ref}::w", f"{ours}.weight", lambda w: w.transpose(3, 2, 0, 1))  # HWIO -> OIHW
        if bias:
            self.take(f"{ref}::b", f"{ours}.bias")

    def batch_norm(self, ref: str, ours: str) -> None:
        """Haiku ``BatchNorm``: scale/offset params, moving averages in the state (only
        ``average`` is used in inference; the EMA ``hidden`` value is not needed)."""
        flat = lambda a: a.reshape(-1)  # noqa: E731  (Haiku keeps [1, 1, 1, C])
        self.take(f"{ref}::scale", f"{ours}.weight", flat)
        self.take(f"{ref}::offset", f"{ours}.bias", flat)
        self.take(f"{ref}/~/mean_ema::average", f"{ours}.running_mean", flat, state=True)
        self.take(f"{ref}/~/var_ema::average", f"{ours}.running_var", flat, state=True)
        counter = f"{ref}/~/mean_ema::counter"
        self.out[f"{ours}.num_batches_tracked"] = torch.tensor(int(np.asarray(self.state.get(counter, 0))))
        for stat in ("mean_ema::counter", "mean_ema::hidden", "var_ema::counter", "var_ema::hidden"):
            self.used.add(f"state::{ref}/~/{stat}")

    def encoder(self, encoder: PerceiverEncoder, ref: str = "perceiver_encoder/~", ours: str = "encoder") -> None:
        self.take(f"{ref}/trainable_position_encoding::pos_embs", f"{ours}.latents.pos_embs")
        self.cross_attention(f"{ref}/cross_attention", f"{ours}.cross_attends.0")
        for i in range(len(encoder.latent_blocks[0].layers)):
            suffix = f"_{i}" if i else ""
            self.self_attention(f"{ref}/self_attention{suffix}", f"{ours}.latent_blocks.0.layers.{i}")

    def leftovers(self) -> list[str]:
        names = list(self.params) + [f"state::{k}" for k in self.state]
        return sorted(n for n in names if n not in self.used)


# Reference module prefix of the BasicDecoder inside each kind of decoder.
DECODER_PREFIXES = (
    "classification_decoder/~/basic_decoder",
    "flow_decoder/~/basic_decoder",
    "multimodal_decoder/~/basic_decoder",
    "basic_decoder",
)


def _decoder_prefix(params: Arrays) -> str:
    for prefix in DECODER_PREFIXES:  # the BasicDecoder that holds the cross-attention
        if any(k.startswith(prefix + "/cross_attention/") for k in params):
            return prefix
    raise ValueError(f"no decoder parameters found; expected one of the prefixes {DECODER_PREFIXES}")


def map_query_builder(m: ParamMapper, builder: QueryBuilder, ref: str, ours: str) -> None:
    if isinstance(builder, TrainableQueries):
        m.take(f"{ref}/~/trainable_position_encoding::pos_embs", f"{ours}.queries.pos_embs")
    elif isinstance(builder, MultimodalQueries):
        _map_multimodal_queries(m, builder, ref, ours)


# The reference decoder that builds each modality's queries in the multimodal colab.
MODALITY_DECODERS = {
    "image": "basic_video_autoencoding_decoder/~/basic_decoder",
    "label": "classification_decoder/~/basic_decoder",
}


def _map_multimodal_queries(m: ParamMapper, builder: MultimodalQueries, ref: str, ours: str) -> None:
    """``ref`` is the shared ``multimodal_decoder/~/basic_decoder``; paddings live in the
    multimodal decoder's ``decoder_query``, per-modality queries in each modality's decoder."""
    outer = ref.split("/~/")[0]
    for name in builder.names:
        m.take(f"{outer}/~decoder_query/{name}_padding::pos_embs", f"{ours}.padding.{name}.pos_embs")
        map_query_builder(m, builder.builders[name], MODALITY_DECODERS.get(name, "basic_decoder"),
                          f"{ours}.builders.{name}")


# Adapter types -> functions mapping their reference parameters. Other modules add theirs.
INPUT_ADAPTER_MAPPERS: dict[type, Callable[[ParamMapper, nn.Module], None]] = {}
OUTPUT_ADAPTER_MAPPERS: dict[type, Callable[[ParamMapper, nn.Module], None]] = {}


def _map_text(m: ParamMapper, adapter: nn.Module) -> None:
    m.take("embed::embeddings", "input_adapter.embedding.weight")
    m.take("trainable_position_encoding::pos_embs", "input_adapter.position.pos_embs")


def _map_tied_embedding(m: ParamMapper, adapter: nn.Module) -> None:
    m.take("embedding_decoder::bias", "output_adapter.bias")


def map_network_inputs(m: ParamMapper, net: NetworkInputs, ref: str, ours: str) -> None:
    """Position parameters created in a reference preprocessor's ``_build_network_inputs``."""
    ref = f"{ref}/~_build_network_inputs"
    if net.config.encoding == "trainable":
        m.take(f"{ref}/trainable_position_encoding::pos_embs", f"{ours}.trainable.pos_embs")
    if net.projector is not None:
        m.linear(f"{ref}/position_encoding_projector/linear", f"{ours}.projector")
    for i in range(len(net.mlp)):
        m.linear(f"{ref}/linear" + (f"_{i}" if i else ""), f"{ours}.mlp.{i}")


def map_image(m: ParamMapper, adapter: ImageInputAdapter, ref: str = "image_preprocessor",
              ours: str = "input_adapter") -> None:
    cfg = adapter.config
    if cfg.prep_type == "conv":
        for i in range(len(adapter.conv.convs)):
            suffix = f"_{i}" if i else ""
            m.conv(f"{ref}/~/conv2_d_downsample/~/conv{suffix}", f"{ours}.conv.convs.{i}", bias=False)
            if adapter.conv.norms is not None:
                m.batch_norm(f"{ref}/~/conv2_d_downsample/~/batchnorm{suffix}", f"{ours}.conv.norms.{i}")
    elif cfg.prep_type == "conv1x1":
        m.conv(f"{ref}/~/conv2_d", f"{ours}.conv1x1")
    elif cfg.prep_type == "patches" and cfg.conv_after_patching:
        m.linear(f"{ref}/patches_linear", f"{ours}.patches_linear")
    map_network_inputs(m, adapter.network_inputs, ref, f"{ours}.network_inputs")


def _map_flow(m: ParamMapper, adapter: FlowInputAdapter) -> None:
    map_image(m, adapter.image, ours="input_adapter.image")


def map_audio(m: ParamMapper, adapter: AudioInputAdapter, ref: str = "audio_preprocessor",
              ours: str = "input_adapter") -> None:
    map_network_inputs(m, adapter.network_inputs, ref, f"{ours}.network_inputs")


# Haiku names of the modality preprocessors (a second one of a kind gets "_1", ...).
MODALITY_PREPROCESSORS: dict[type, tuple[str, Callable[..., None] | None]] = {
    ImageInputAdapter: ("image_preprocessor", map_image),
    AudioInputAdapter: ("audio_preprocessor", map_audio),
    OneHotInputAdapter: ("one_hot_preprocessor", None),
}


def _haiku_names(modules: Mapping[str, nn.Module], table: Mapping[type, tuple[str, Any]]) -> dict[str, str]:
    """Modality -> Haiku module name, numbering repeats of a kind in (sorted) creation order."""
    counts: dict[str, int] = {}
    names = {}
    for modality, module in modules.items():
        if type(module) not in table:
            raise ValueError(f"no DeepMind parameter mapping for {type(module).__name__} (modality {modality!r})")
        base = table[type(module)][0]
        names[modality] = base + (f"_{counts[base]}" if counts.get(base) else "")
        counts[base] = counts.get(base, 0) + 1
    return names


def _map_multimodal(m: ParamMapper, adapter: MultimodalInputAdapter) -> None:
    refs = _haiku_names(adapter.modalities, MODALITY_PREPROCESSORS)
    for name, sub in adapter.modalities.items():
        mapper = MODALITY_PREPROCESSORS[type(sub)][1]
        if mapper is not None:
            mapper(m, sub, refs[name], f"input_adapter.modalities.{name}")
        m.take(f"multimodal_preprocessor/{name}_padding::pos_embs", f"input_adapter.padding.{name}.pos_embs")
        if adapter.mask_token is not None:
            m.take(f"multimodal_preprocessor/{name}_mask_token::pos_embs", f"input_adapter.mask_token.{name}.pos_embs")


INPUT_ADAPTER_MAPPERS[TextInputAdapter] = _map_text
INPUT_ADAPTER_MAPPERS[ImageInputAdapter] = map_image
INPUT_ADAPTER_MAPPERS[FlowInputAdapter] = _map_flow
INPUT_ADAPTER_MAPPERS[AudioInputAdapter] = map_audio
INPUT_ADAPTER_MAPPERS[MultimodalInputAdapter] = _map_multimodal

# Output heads -> (Haiku postprocessor name, the linear layer inside ours).
POSTPROCESSORS: dict[type, tuple[str, str]] = {
    AudioOutput: ("audio_postprocessor", "linear"),
    nn.Linear: ("projection_postprocessor", ""),
    FirstQuery: ("classification_postprocessor", "projection"),
}


def _map_head(m: ParamMapper, head: nn.Module, ref: str, ours: str) -> None:
    if isinstance(head, FirstQuery) and head.projection is None:
        return  # logits come from the decoder's own projection
    inner = POSTPROCESSORS[type(head)][1]
    m.linear(f"{ref}/linear", f"{ours}.{inner}" if inner else ours)


def _map_multimodal_output(m: ParamMapper, head: MultimodalOutput) -> None:
    with_params = {k: h for k, h in head.heads.items() if not (isinstance(h, FirstQuery) and h.projection is None)}
    refs = _haiku_names(with_params, POSTPROCESSORS)
    for name, sub in with_params.items():
        _map_head(m, sub, refs[name], f"output_adapter.heads.{name}")


for _head_type, (_ref, _) in POSTPROCESSORS.items():
    OUTPUT_ADAPTER_MAPPERS[_head_type] = lambda m, head, _ref=_ref: _map_head(m, head, _ref, "output_adapter")
OUTPUT_ADAPTER_MAPPERS[MultimodalOutput] = _map_multimodal_output
OUTPUT_ADAPTER_MAPPERS[TiedEmbeddingOutput] = _map_tied_embedding


def convert_reference_params(model: Perceiver, params: Arrays, state: Arrays | None = None) -> dict[str, Tensor]:
    """Reference arrays -> a state dict for ``model``. Raises ValueError naming every
    reference array that was not used and every parameter that is missing or misshapen."""
    m = ParamMapper(params, state)
    if type(model.input_adapter) in INPUT_ADAPTER_MAPPERS:
        INPUT_ADAPTER_MAPPERS[type(model.input_adapter)](m, model.input_adapter)
    m.encoder(model.encoder)
    prefix = _decoder_prefix(m.params)
    decoder = model.decoder
    m.cross_attention(f"{prefix}/cross_attention", "decoder.cross_attend")
    if decoder.output is not None:
        m.linear(f"{prefix}/output", "decoder.output")
    map_query_builder(m, decoder.query_builder, prefix, "decoder.query_builder")
    if model.output_adapter is not None and type(model.output_adapter) in OUTPUT_ADAPTER_MAPPERS:
        OUTPUT_ADAPTER_MAPPERS[type(model.output_adapter)](m, model.output_adapter)
    leftovers = m.leftovers()
    if leftovers:
        raise ValueError(f"reference parameters not used by the model: {leftovers}")
    return m.out


def load_reference_params(model: Perceiver, params: Arrays, state: Arrays | None = None) -> Perceiver:
    load_state_dict_strict(model, convert_reference_params(model, params, state))
    return model


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------
class _NdarrayName:
    """What the name ``numpy.ndarray`` unpickles to: accepted only as the first argument of
    ``_reconstruct``; the real class is never handed out (calling it would allocate any size)."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray: arrays are rebuilt only from the file's "
                                     "own bytes")


class _DtypeSpec:
    """What ``numpy.dtype(spec, align, copy)`` unpickles to: a plain numeric dtype
    (bool, integers, floats, complex), never a structured, object or sub-array one."""

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = True) -> None:
        dtype = np.dtype(spec) if isinstance(spec, str) and len(spec) <= 8 else None
        if dtype is None or dtype.kind not in "biufc" or dtype.shape or dtype.fields:
            raise pickle.UnpicklingError(f"refusing dtype {spec!r:.40}: only numeric arrays are read")
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        # (version, byte order, subarray, names, fields, elsize, alignment, flags): only the byte order may vary
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in "<>|=" and state[2:5] == (None,) * 3):
            raise pickle.UnpicklingError("refusing a dtype with sub-arrays or fields")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


def _latin1(text: Any, encoding: Any = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("refusing _codecs.encode other than of a string to latin1")
    return text.encode("latin1")


def _as_dtype(spec: Any) -> np.dtype:
    if not isinstance(spec, _DtypeSpec):
        raise pickle.UnpicklingError(f"expected a numpy dtype, got {type(spec).__name__}")
    return spec.dtype


def _checked_shape(shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise pickle.UnpicklingError(f"refusing array shape {shape!r:.80}")
    return shape


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its memo is a dict
    """Rebuilds numpy arrays and plain containers only, and only from the file's own bytes:
    every array is made from bytes stored in the file, and all of them together may not
    hold more bytes than the file has (memo references cannot multiply them). Haiku /
    immutabledict mapping wrappers of old releases are read as plain dicts without
    importing them. The C unpickler is not used: ``LONG_BINPUT 2**31`` makes it allocate
    a memo table of 16 GiB."""

    _CONTAINERS = {("collections", "OrderedDict"), ("builtins", "dict"), ("builtins", "list"),
                   ("builtins", "tuple")}
    _MAPPING_WRAPPERS = {
        ("haiku._src.data_structures", "FlatMapping"), ("haiku._src.data_structures", "FlatMap"),
        ("haiku.data_structures", "FlatMapping"), ("immutabledict", "immutabledict"),
        ("frozendict", "frozendict"), ("flax.core.frozen_dict", "FrozenDict"),
    }
    _NUMPY = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.budget = len(data)  # array bytes still allowed

    def charge(self, nbytes: int) -> None:
        self.budget -= nbytes
        if self.budget < 0:
            raise pickle.UnpicklingError("refusing arrays that hold more bytes than the file itself")

    def array_from_bytes(self, raw: Any, dtype: np.dtype, shape: tuple[int, ...], order: str = "C") -> np.ndarray:
        if not isinstance(raw, (bytes, bytearray)):
            raise pickle.UnpicklingError(f"refusing array data of type {type(raw).__name__}: expected bytes")
        if len(raw) != math.prod(shape) * dtype.itemsize:
            raise pickle.UnpicklingError(f"array of shape {shape} and dtype {dtype} needs "
                                         f"{math.prod(shape) * dtype.itemsize:,} bytes, the file gives {len(raw):,}")
        self.charge(len(raw))
        # a writable copy: torch.from_numpy warns about read-only arrays
        return np.frombuffer(raw, dtype).reshape(shape, order="F" if order == "F" else "C").copy()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._CONTAINERS:
            return super().find_class(module, name)
        if (module, name) in self._MAPPING_WRAPPERS:
            return _mapping_from_pickle
        if (module, name) == ("_codecs", "encode"):  # how protocol 2 stores bytes
            return _latin1
        if module in self._NUMPY and name in ("ndarray", "dtype", "_reconstruct", "scalar", "_frombuffer"):
            return {"ndarray": _NdarrayName, "dtype": _DtypeSpec, "_reconstruct": self.reconstruct,
                    "scalar": self.scalar, "_frombuffer": self.frombuffer}[name]
        raise pickle.UnpicklingError(
            f"refusing to unpickle {module}.{name}: a checkpoint may contain only numpy arrays and "
            "plain containers"
        )

    # numpy's pickle entry points, each checked against the bytes the file provides
    def reconstruct(self, cls: Any, shape: Any, typecode: Any) -> _PendingArray:
        if cls is not _NdarrayName or _checked_shape(shape) != (0,):
            raise pickle.UnpicklingError("refusing numpy _reconstruct other than numpy's own (ndarray, (0,))")
        return _PendingArray(self)

    def scalar(self, dtype: Any, raw: Any) -> np.generic:
        return self.array_from_bytes(raw, _as_dtype(dtype), ())[()]

    def frombuffer(self, raw: Any, dtype: Any, shape: Any, order: Any = "C") -> np.ndarray:
        return self.array_from_bytes(raw, _as_dtype(dtype), _checked_shape(shape), order)


class _PendingArray:
    """The empty array of ``_reconstruct``, filled by the pickle's BUILD (``__setstate__``);
    :func:`_arrays` swaps it for the array."""

    def __init__(self, reader: _RestrictedUnpickler) -> None:
        self.reader, self.array = reader, None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5) or self.array is not None:
            raise pickle.UnpicklingError("refusing a malformed numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        self.array = self.reader.array_from_bytes(raw, _as_dtype(dtype), _checked_shape(shape),
                                                  "F" if fortran else "C")


def _mapping_from_pickle(*args: Any, **kwargs: Any) -> dict:
    data: dict = {}
    for arg in args:
        if isinstance(arg, Mapping):
            data.update(arg)
        elif isinstance(arg, (list, tuple)):
            data.update(dict(arg))
    data.update(kwargs)
    return data


def _array(value: Any, where: str) -> np.ndarray:
    """A parameter value of the checkpoint as an array: arrays and numbers only (a nested
    list could be a memo-reference bomb that ``np.asarray`` would expand)."""
    if isinstance(value, _PendingArray) and value.array is not None:
        return value.array
    if isinstance(value, (np.ndarray, np.generic, int, float)) and not isinstance(value, bool):
        return np.asarray(value)
    raise ValueError(f"checkpoint entry {where!r} is a {type(value).__name__}, not an array")


def _flatten(tree: Mapping[str, Any]) -> Arrays:
    """``{module: {param: array}}`` -> ``{"module::param": array}``."""
    flat: Arrays = {}
    for module, params in tree.items():
        if not isinstance(params, Mapping):
            raise ValueError(f"checkpoint entry {module!r} is not a mapping of parameters")
        for name, value in params.items():
            flat[f"{module}::{name}"] = _array(value, f"{module}::{name}")
    return flat


def load_reference_file(path: str) -> tuple[Arrays, Arrays]:
    """Read a DeepMind checkpoint pickle -> (params, state), flat ``"module::param"`` keys.
    Every failure, whatever the damage, is one ValueError naming the file."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        data = _RestrictedUnpickler(data).load()
    except Exception as e:  # noqa: BLE001 - any damage or refusal becomes one error naming the file
        reason = str(e) or type(e).__name__
        raise DamagedFileError(f"{path}: not a readable DeepMind checkpoint ({reason})") from None
    if not isinstance(data, Mapping):
        raise DamagedFileError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        if "params" in data and isinstance(data["params"], Mapping) and all(
            isinstance(v, Mapping) for v in data["params"].values()
        ):
            return _flatten(data["params"]), _flatten(data.get("state") or {})
        return _flatten(data), {}
    except ValueError as e:
        raise DamagedFileError(f"{path}: {e}") from None
