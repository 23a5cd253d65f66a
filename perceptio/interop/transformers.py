"""Drop-in replacements for Hugging Face ``transformers`` Perceiver models.

:func:`from_transformers` takes a ``transformers`` Perceiver model (or a directory saved
by its ``save_pretrained``) and returns a :class:`TransformersPerceiver`: an
``nn.Module`` called exactly like the ``transformers`` model
(``model(inputs=..., attention_mask=...)``, same tensor layouts) whose output's
``.logits`` equal the ``transformers`` model's. The converted perceptio
:class:`~perceptio.model.Perceiver` is its ``.perceiver`` attribute.

One wrapper class per ``transformers`` class (``WRAPPERS``, each named as its
``transformers`` class: ``PerceiverModel``, ``PerceiverForMaskedLM``, ...) knows three things: the
perceptio config of a ``transformers`` config (its values translated into the keywords of
a builder of :mod:`perceptio.architectures`), the parameter names
(``transformers`` name -> ours), and how to turn ``transformers`` inputs into ours
(the outputs already agree). Where the ``transformers`` port differs from the DeepMind
reference, the wrapper reproduces ``transformers``; docs/transformers.md lists every
such difference.

The wrappers are used like ``transformers`` models (docs/transformers.md, "What drop-in
covers"): outputs indexable like a ``ModelOutput``, ``config`` the ``transformers`` config
whose ``output_attentions`` / ``output_hidden_states`` / ``return_dict`` are read at every
call, ``get_input_embeddings`` / ``set_input_embeddings``, ``save_pretrained`` to a
directory ``transformers`` loads.

``transformers`` is imported only when a directory is read; converting a model object
needs nothing from it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from .. import architectures
from ..adapters.base import InputAdapterConfig
from ..adapters.flow import PATCH_SIZE
from ..adapters.image import ImageAdapterConfig
from ..adapters.text import TextAdapterConfig
from ..encoder import EncoderConfig, PerceiverEncoder
from ..layers.attention import collect_attention
from ..layers.blocks import Activation
from ..model import Perceiver, PerceiverConfig
from ..pretrained import (CONFIG_NAME, WEIGHTS_NAME, DamagedFileError, atomic_write, atomic_write_json, check_device,
                          load_state_dict_strict, read_json, read_safetensors, read_torch_file)

# ``hidden_act`` of a transformers config -> our activation. ``gelu_new``, ``gelu_fast``
# and ``gelu_pytorch_tanh`` are all the tanh approximation of GELU.
ACTIVATIONS: dict[str, Activation] = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}

# The modules of a transformers PerceiverModel that its task classes fill and a user may replace.
PROCESSORS = ("input_preprocessor", "decoder", "output_postprocessor")


# ---------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class TransformersOutput(Mapping):
    """The fields of the ``transformers`` outputs, used like its ``ModelOutput``: by
    attribute, by key (``out["logits"]``) or by position over the fields that are not None
    (``out[0]``, ``len(out)``, ``to_tuple()``), in ``transformers``' order. ``latents [B, N, D]``
    is ours and is not one of the keys.

    ``last_hidden_state`` (the latents) is set for ``PerceiverModel`` only, ``loss`` for the
    task models given ``labels``. ``hidden_states`` (``output_hidden_states``): the latents
    before every self-attention layer and after every block, ``[B, N, D]`` each.
    ``attentions`` (self-attention probabilities, ``[B, heads, N, N]`` per layer application)
    and ``cross_attentions`` (encoder, then decoder cross-attention): ``output_attentions``."""

    loss: Tensor | None = None
    logits: Any = None
    last_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
    cross_attentions: tuple[Tensor, ...] | None = None
    latents: Tensor | None = None

    KEYS: ClassVar[tuple[str, ...]] = (
        "loss", "logits", "last_hidden_state", "hidden_states", "attentions", "cross_attentions",
    )

    def keys(self) -> list[str]:  # type: ignore[override]
        return [k for k in self.KEYS if getattr(self, k) is not None]

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def to_tuple(self) -> tuple:
        """The fields that are not None, in order (``ModelOutput.to_tuple``)."""
        return tuple(getattr(self, k) for k in self.keys())

    def transformers_tuple(self) -> tuple:
        """What ``transformers`` returns with ``return_dict=False``: as ``to_tuple()``, but
        the decoder's cross-attention follows the tuple of encoder cross-attentions as its
        own item."""
        out = self.to_tuple()
        cross = self.cross_attentions
        if cross is None or len(cross) < 2:
            return out
        return (*out[:-1], cross[:1], *cross[1:])


# A pytree node, so that torch.export (and ONNX export) can return it.
torch.export.register_dataclass(
    TransformersOutput, serialized_type_name="perceptio.interop.transformers.TransformersOutput"
)


# ---------------------------------------------------------------------------------------
# Config pieces shared by all classes
# ---------------------------------------------------------------------------------------
def activation_from_transformers(hidden_act: Any) -> Activation:
    if not isinstance(hidden_act, str) or hidden_act not in ACTIVATIONS:
        raise ValueError(
            f"transformers hidden_act={hidden_act!r} has no perceptio equivalent; supported: {sorted(ACTIVATIONS)}"
        )
    return ACTIVATIONS[hidden_act]


def encoder_config_from_transformers(c: Any) -> EncoderConfig:
    """``transformers`` ``PerceiverConfig`` -> :class:`EncoderConfig` (its layer norms all
    use eps 1e-5 whatever ``layer_norm_eps`` says, as ours do)."""
    return EncoderConfig(
        num_latents=c.num_latents,
        num_latent_channels=c.d_latents,
        num_blocks=c.num_blocks,
        num_self_attends_per_block=c.num_self_attends_per_block,
        num_self_attend_heads=c.num_self_attention_heads,
        num_cross_attend_heads=c.num_cross_attention_heads,
        qk_channels=c.qk_channels,
        v_channels=c.v_channels,
        cross_attend_widening_factor=c.cross_attention_widening_factor,
        self_attend_widening_factor=c.self_attention_widening_factor,
        use_query_residual=c.use_query_residual,
        cross_attention_shape_for_attn=c.cross_attention_shape_for_attention,
        attention_dropout=c.attention_probs_dropout_prob,
        activation=activation_from_transformers(c.hidden_act),
    )


def decoder_keywords_from_transformers(c: Any) -> dict[str, Any]:
    """The ``decoder_*`` keywords of the builders in :mod:`perceptio.architectures` where
    ``transformers`` differs from the reference: one ``hidden_act`` and one
    ``attention_probs_dropout_prob`` for every layer, and the decoder's ``qk_channels``
    default following ``cross_attention_shape_for_attention`` (docs/transformers.md, 2, 3)."""
    return dict(
        decoder_activation=activation_from_transformers(c.hidden_act),
        decoder_attention_dropout=c.attention_probs_dropout_prob,
        decoder_qk_follows_encoder=True,
    )


# ---------------------------------------------------------------------------------------
# Parameter names: transformers -> ours
# ---------------------------------------------------------------------------------------
_LAYER = {
    "attention.self.query": "attention.q",
    "attention.self.key": "attention.k",
    "attention.self.value": "attention.v",
    "attention.output.dense": "attention.o",
    "layernorm": "mlp_norm",
    "mlp.dense1": "mlp.fc1",
    "mlp.dense2": "mlp.fc2",
}
_CROSS_LAYER = {**_LAYER, "attention.self.layernorm1": "q_norm", "attention.self.layernorm2": "kv_norm"}
_SELF_LAYER = {**_LAYER, "attention.self.layernorm1": "norm"}


def linear_names(theirs: str, ours: str) -> dict[str, str]:
    """Names of a Linear / LayerNorm / Conv (``weight`` and ``bias``)."""
    return {f"{theirs}.{p}": f"{ours}.{p}" for p in ("weight", "bias")}


def layer_names(theirs: str, ours: str, cross: bool) -> dict[str, str]:
    """A ``transformers`` ``PerceiverLayer`` -> our ``CrossAttention`` / ``SelfAttention``."""
    names: dict[str, str] = {}
    for a, b in (_CROSS_LAYER if cross else _SELF_LAYER).items():
        names |= linear_names(f"{theirs}.{a}", f"{ours}.{b}")
    return names


def encoder_names(c: Any) -> dict[str, str]:
    names = {"perceiver.embeddings.latents": "encoder.latents.pos_embs"}
    names |= layer_names("perceiver.encoder.cross_attention", "encoder.cross_attends.0", cross=True)
    for i in range(c.num_self_attends_per_block):
        names |= layer_names(f"perceiver.encoder.self_attends.{i}", f"encoder.latent_blocks.0.layers.{i}", cross=False)
    return names


def decoder_names(theirs: str, final_project: bool) -> dict[str, str]:
    """A ``PerceiverBasicDecoder`` at ``theirs`` with trainable queries."""
    names = {f"{theirs}.output_position_encodings.position_embeddings": "decoder.query_builder.queries.pos_embs"}
    names |= layer_names(f"{theirs}.decoding_cross_attention", "decoder.cross_attend", cross=True)
    if final_project:
        names |= linear_names(f"{theirs}.final_layer", "decoder.output")
    return names


def rename_state(state: Mapping[str, Tensor], names: Mapping[str, str], what: str) -> dict[str, Tensor]:
    """``{their name: tensor}`` -> ``{our name: tensor}``; raises ValueError naming every
    expected name that is absent and every given name that has no place."""
    missing = sorted(k for k in names if k not in state)
    unused = sorted(k for k in state if k not in names)
    if missing or unused:
        parts = [f"{label}: {items}" for label, items in (("missing", missing), ("unused", unused)) if items]
        raise ValueError(f"{what} state dict does not fit the expected layout; " + "; ".join(parts))
    return {ours: state[theirs].detach() for theirs, ours in names.items()}  # loading copies them


# ---------------------------------------------------------------------------------------
# Wrappers
# ---------------------------------------------------------------------------------------
def _mask_from_transformers(mask: Any) -> Tensor | None:
    """``transformers`` attention mask (1 = attend, 0 = padding; any dtype) -> bool."""
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise TypeError(f"attention_mask must be a tensor [batch, inputs], got {type(mask).__name__}")
    if torch.compiler.is_compiling():  # torch.compile / torch.export: the values are not known
        return mask.bool()
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (attend)")
    mask = mask.bool()
    if mask.dim() == 2 and not bool(mask.any(dim=1).all()):
        warnings.warn(
            "attention_mask masks every input of some example: transformers attends uniformly to all its "
            "(padding) inputs there, perceptio attends to none (reference semantics); that example's outputs "
            "differ from transformers",
            stacklevel=3,
        )
    return mask


def classification_loss(logits: Tensor, labels: Tensor, num_labels: int, problem_type: str | None) -> Tensor:
    """``transformers``' sequence / image classification loss."""
    if problem_type is None:
        if num_labels == 1:
            problem_type = "regression"
        elif labels.dtype in (torch.long, torch.int):
            problem_type = "single_label_classification"
        else:
            problem_type = "multi_label_classification"
    if problem_type == "regression":
        if num_labels == 1:
            return F.mse_loss(logits.squeeze(), labels.squeeze())
        return F.mse_loss(logits, labels)
    if problem_type == "single_label_classification":
        return F.cross_entropy(logits.view(-1, num_labels), labels.view(-1))
    if problem_type == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, labels)
    raise ValueError(f"unknown problem_type {problem_type!r}")


@contextmanager
def collect_hidden_states(blocks: nn.ModuleList) -> Iterator[list[Tensor]]:
    """Record the latents as ``transformers``' ``PerceiverEncoder`` returns them with
    ``output_hidden_states``: before every self-attention layer of each :class:`LatentBlock`
    application and after it, ``[B, N, D]`` each (the tensors of the graph)."""
    states: list[Tensor] = []
    hooks = []
    for block in blocks:
        for layer in block.layers:
            hooks.append(layer.register_forward_pre_hook(lambda module, args: states.append(args[0])))
        hooks.append(block.register_forward_hook(lambda module, args, out: states.append(out)))
    try:
        yield states
    finally:
        for hook in hooks:
            hook.remove()


class TransformersPerceiver(nn.Module):
    """Base class of the drop-in wrappers: ``forward`` takes the ``transformers``
    arguments and returns a :class:`TransformersOutput`; ``perceiver`` is the model;
    ``config`` is the ``transformers`` config (read at every call, as ``transformers``
    does: ``output_attentions``, ``output_hidden_states``, ``use_return_dict``).

    Subclasses set ``hf_class``, ``input_alias`` (the keyword ``transformers`` accepts
    in place of ``inputs``) and ``extra_kwargs`` (keywords only that class's ``forward``
    takes), implement ``perceiver_config`` and ``param_names`` and, where the layouts
    differ, ``prepare_inputs`` / ``points``."""

    hf_class: ClassVar[str]
    input_alias: ClassVar[str | None] = None
    extra_kwargs: ClassVar[tuple[str, ...]] = ()
    base_model_prefix: ClassVar[str] = "perceiver"
    main_input_name: ClassVar[str] = "inputs"
    encoder_path: ClassVar[str] = "perceiver.encoder"  # module names of the encoder in this wrapper

    def __init__(self, perceiver: nn.Module, config: Any) -> None:
        super().__init__()
        self.perceiver = perceiver
        self.config = config

    # -- conversion ------------------------------------------------------------------
    @classmethod
    def build(cls, c: Any) -> nn.Module:
        """The perceptio module for ``transformers`` config ``c`` (random weights)."""
        return Perceiver(cls.perceiver_config(c))

    @classmethod
    def perceiver_config(cls, c: Any) -> PerceiverConfig:
        raise NotImplementedError

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        raise NotImplementedError

    @classmethod
    def check_model(cls, model: nn.Module) -> None:
        """Refuse a ``transformers`` model object whose ``input_preprocessor``, ``decoder``
        or ``output_postprocessor`` is not of the type its class builds from its config
        (custom modules have no perceptio config): the class is built again on the meta
        device (nothing allocated) and the types compared."""
        with torch.device("meta"):
            reference = type(model)(model.config)
        ours, theirs = getattr(model, "perceiver", model), getattr(reference, "perceiver", reference)
        custom = {
            name: (type(getattr(ours, name, None)).__name__, type(getattr(theirs, name, None)).__name__)
            for name in PROCESSORS
            if type(getattr(ours, name, None)) is not type(getattr(theirs, name, None))
        }
        if custom:
            what = ", ".join(f"{k}={a} (the class builds {b})" for k, (a, b) in custom.items())
            raise ValueError(
                f"{cls.hf_class} with custom {what} cannot be mapped to perceptio: only the modules each "
                f"class builds from its config are supported (classes: {sorted(WRAPPERS)})"
            )

    @classmethod
    def convert(cls, c: Any, state: Mapping[str, Tensor]) -> TransformersPerceiver:
        """Build from a ``transformers`` config object and its model's state dict: in eval
        mode, on the device and in the floating dtype of the state."""
        perceiver = cls.build(c)
        load_state_dict_strict(perceiver, rename_state(state, cls.param_names(c), cls.hf_class))
        like = next(t for t in state.values() if t.is_floating_point())
        return cls(perceiver.to(device=like.device, dtype=like.dtype), c).train(False)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu", output_loading_info: bool = False
    ) -> TransformersPerceiver | tuple[TransformersPerceiver, dict[str, list[str]]]:
        """The model in a ``transformers`` directory (:func:`from_transformers`), which must
        be of this class. ``output_loading_info``: also ``transformers``' loading report;
        its lists are empty, since a tensor that is missing, unexpected or misshapen is an
        error here."""
        model = from_transformers(directory, map_location)
        if not isinstance(model, cls):
            raise ValueError(f"{directory} holds a {model.hf_class}, not a {cls.hf_class}")
        if output_loading_info:
            return model, {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        return model

    def transformers_state_dict(self) -> dict[str, Tensor]:
        """The weights under their ``transformers`` names (the inverse of the conversion)."""
        ours = self.perceiver.state_dict()
        return {theirs: ours[name] for theirs, name in self.param_names(self.config).items()}

    def save_pretrained(self, directory: str | os.PathLike, safe_serialization: bool = True) -> None:
        """Write a directory ``transformers`` loads (``{hf_class}.from_pretrained``) and
        :func:`from_transformers` reads back: ``config.json`` (the ``transformers`` config,
        ``architectures = [hf_class]``) and ``model.safetensors`` (``pytorch_model.bin``
        with ``safe_serialization=False``) with ``transformers``' parameter names; written
        atomically."""
        config = self.config.to_dict()
        config["architectures"] = [self.hf_class]
        state = {k: v.detach().cpu().contiguous() for k, v in self.transformers_state_dict().items()}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if safe_serialization:
            atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        else:
            atomic_write(directory / "pytorch_model.bin", lambda tmp: torch.save(state, tmp))
        atomic_write_json(directory / CONFIG_NAME, config)

    # -- the transformers model interface ----------------------------------------------
    @property
    def encoder(self) -> nn.Module:
        return self.get_submodule(self.encoder_path)

    @property
    def base_model(self) -> nn.Module:
        return self.perceiver

    def get_input_embeddings(self) -> nn.Parameter:
        """The learned latents ``[N, D]``, as in ``transformers`` (its "input embeddings")."""
        return self.encoder.latents.pos_embs

    def set_input_embeddings(self, value: nn.Parameter) -> None:
        current = self.encoder.latents.pos_embs
        if not isinstance(value, nn.Parameter) or value.shape != current.shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"set_input_embeddings expects an nn.Parameter of shape {tuple(current.shape)}, got {got}")
        self.encoder.latents.pos_embs = value

    def get_output_embeddings(self) -> None:
        return None

    def num_parameters(self, only_trainable: bool = False) -> int:
        """Number of (trainable) parameters, shared ones once."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not only_trainable)

    # -- forward -----------------------------------------------------------------------
    def prepare_inputs(self, inputs: Any) -> Any:
        """``transformers`` inputs -> what our input adapter takes."""
        return inputs

    def points(self, subsampled_output_points: Any) -> Any:
        """``transformers``' ``subsampled_output_points`` -> our ``points``."""
        return None

    def loss(self, logits: Any, labels: Tensor) -> Tensor:
        raise NotImplementedError(f"{self.hf_class}: training with labels is not supported by transformers either")

    def run(self, inputs: Any, mask: Tensor | None, extra: dict[str, Any]) -> tuple[Any, Tensor]:
        """``(logits, latents)`` of the perceptio model."""
        out = self.perceiver(
            self.prepare_inputs(inputs), input_mask=mask, points=self.points(extra.get("subsampled_output_points"))
        )
        return out.logits, out.latents

    def make_output(self, logits: Any, latents: Tensor) -> TransformersOutput:
        return TransformersOutput(logits=logits, latents=latents)

    def forward(
        self,
        inputs: Any = None,
        attention_mask: Tensor | None = None,
        *,
        head_mask: Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        labels: Tensor | None = None,
        return_dict: bool | None = None,
        **extra: Any,
    ) -> TransformersOutput | tuple:
        """``transformers`` arguments (after ``attention_mask``: keyword only) -> outputs.
        ``attention_mask [B, M]``: 1 = attend, 0 = padding, over the encoder input rows.
        ``output_attentions`` / ``output_hidden_states`` / ``return_dict`` left None take
        the config's values, as in ``transformers``."""
        inputs = self._resolve_inputs(inputs, extra)
        if head_mask is not None:
            raise NotImplementedError("head_mask is not supported by the perceptio port")
        output_attentions = self._flag(output_attentions, "output_attentions", False)
        output_hidden_states = self._flag(output_hidden_states, "output_hidden_states", False)
        return_dict = self._flag(return_dict, "use_return_dict", True)
        mask = _mask_from_transformers(attention_mask)
        with (collect_attention(self) if output_attentions else nullcontext()) as maps, (
            collect_hidden_states(self.encoder.latent_blocks) if output_hidden_states else nullcontext()
        ) as states:
            logits, latents = self.run(inputs, mask, extra)
        result = self.make_output(logits, latents)
        if output_attentions:
            result.attentions = tuple(maps.under(f"{self.encoder_path}.latent_blocks"))
            result.cross_attentions = tuple(
                maps.under(f"{self.encoder_path}.cross_attends") + maps.under("perceiver.decoder")
            )
        if output_hidden_states:
            result.hidden_states = tuple(states)
        if labels is not None:
            result.loss = self.loss(result.logits, labels)
        return result if return_dict else result.transformers_tuple()

    def _flag(self, value: bool | None, name: str, default: bool) -> bool:
        return bool(getattr(self.config, name, default) if value is None else value)

    def _resolve_inputs(self, inputs: Any, extra: dict[str, Any]) -> Any:
        allowed = set(self.extra_kwargs) | ({self.input_alias} if self.input_alias else set())
        unknown = sorted(set(extra) - allowed)
        if unknown:
            raise TypeError(f"{self.hf_class}.forward got unexpected keyword arguments {unknown}")
        aliased = extra.get(self.input_alias) if self.input_alias else None
        if inputs is not None and aliased is not None:
            raise ValueError(f"You cannot use both `inputs` and `{self.input_alias}`")
        inputs = inputs if inputs is not None else aliased
        if inputs is None:
            raise ValueError(f"{self.hf_class} needs `inputs`")
        return inputs


WRAPPERS: dict[str, type[TransformersPerceiver]] = {}


def register(cls: type[TransformersPerceiver]) -> type[TransformersPerceiver]:
    """Register a wrapper under its class name, which is the ``transformers`` class name
    (code that dispatches on ``type(model).__name__``, as ``transformers``' own does, works)."""
    cls.hf_class = cls.__name__
    WRAPPERS[cls.hf_class] = cls
    return cls


# -- the bare encoder --------------------------------------------------------------------
@register
class PerceiverModel(TransformersPerceiver):
    """``PerceiverModel`` built without ``input_preprocessor``, ``decoder`` and
    ``output_postprocessor``: features ``[B, M, d_model]`` -> ``last_hidden_state`` (the
    latents, ``[B, num_latents, d_latents]``; ``logits`` is None). ``.perceiver`` is a
    :class:`~perceptio.encoder.PerceiverEncoder`. A ``PerceiverModel`` with any of those
    modules is refused: they are arbitrary user modules that have no perceptio config."""

    extra_kwargs = ("subsampled_output_points", "interpolate_pos_encoding")  # unused without a decoder
    encoder_path = "perceiver"

    @classmethod
    def build(cls, c: Any) -> nn.Module:
        return PerceiverEncoder(encoder_config_from_transformers(c), c.d_model)

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        return {k.removeprefix("perceiver."): v.removeprefix("encoder.") for k, v in encoder_names(c).items()}

    def run(self, inputs: Any, mask: Tensor | None, extra: dict[str, Any]) -> tuple[Any, Tensor]:
        d_model = self.config.d_model
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() != 3:
            got = (f"shape {tuple(inputs.shape)}, dtype {inputs.dtype}" if isinstance(inputs, Tensor)
                   else type(inputs).__name__)
            raise ValueError(f"PerceiverModel inputs must be float features [B, M, d_model={d_model}], got {got}")
        if inputs.shape[-1] != d_model:
            raise ValueError(
                f"Last dimension of the inputs: {inputs.shape[-1]} doesn't correspond to config.d_model: {d_model}"
            )
        if mask is not None and tuple(mask.shape) != tuple(inputs.shape[:2]):
            raise ValueError(
                f"attention_mask must have shape {tuple(inputs.shape[:2])} [B, M], got {tuple(mask.shape)}"
            )
        return None, self.perceiver(inputs, mask)

    def make_output(self, logits: Any, latents: Tensor) -> TransformersOutput:
        return TransformersOutput(last_hidden_state=latents, latents=latents)


# -- text --------------------------------------------------------------------------------
def _text_inputs(c: Any) -> TextAdapterConfig:
    """``PerceiverTextPreprocessor``: token embedding + learned positions ``[0, L)``."""
    return architectures.text_inputs(vocab_size=c.vocab_size, max_seq_len=c.max_position_embeddings, d_model=c.d_model)


_TEXT_NAMES = {
    "perceiver.input_preprocessor.embeddings.weight": "input_adapter.embedding.weight",
    "perceiver.input_preprocessor.position_embeddings.weight": "input_adapter.position.pos_embs",
}


@register
class PerceiverForMaskedLM(TransformersPerceiver):
    """``PerceiverForMaskedLM``: token ids ``[B, L]`` -> logits ``[B, max_position_embeddings,
    vocab_size]`` (``transformers`` decodes every position, whatever L)."""

    input_alias = "input_ids"

    @classmethod
    def perceiver_config(cls, c: Any) -> PerceiverConfig:
        # transformers hard-codes this decoder: 8 heads, qk 8 * 32, v d_model, no final projection.
        return architectures.masked_language_model(
            encoder=encoder_config_from_transformers(c), vocab_size=c.vocab_size,
            max_seq_len=c.max_position_embeddings, d_model=c.d_model,
            decoder_heads=8, decoder_qk_channels=8 * 32, decoder_v_channels=c.d_model,
            **decoder_keywords_from_transformers(c),
        )

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        return (
            _TEXT_NAMES | encoder_names(c) | decoder_names("perceiver.decoder", final_project=False)
            | {"embedding_decoder.bias": "output_adapter.bias"}
        )

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.view(-1))


class _Classifier(TransformersPerceiver):
    """A ``PerceiverClassificationDecoder``: one trainable query of ``d_latents`` channels,
    query residual, final projection to ``num_labels``."""

    @classmethod
    def classifier_config(cls, c: Any, inputs: InputAdapterConfig) -> PerceiverConfig:
        return architectures.classifier(
            encoder=encoder_config_from_transformers(c), inputs=inputs, num_classes=c.num_labels,
            **decoder_keywords_from_transformers(c),
        )

    @classmethod
    def classifier_names(cls, c: Any) -> dict[str, str]:
        return encoder_names(c) | decoder_names("perceiver.decoder.decoder", final_project=True)

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        c = self.config
        return classification_loss(logits, labels, c.num_labels, getattr(c, "problem_type", None))


@register
class PerceiverForSequenceClassification(_Classifier):
    """``PerceiverForSequenceClassification``: token ids ``[B, L]`` -> ``[B, num_labels]``."""

    input_alias = "input_ids"

    @classmethod
    def perceiver_config(cls, c: Any) -> PerceiverConfig:
        return cls.classifier_config(c, _text_inputs(c))

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        return _TEXT_NAMES | cls.classifier_names(c)


# -- images ------------------------------------------------------------------------------
def _channels_last(images: Any) -> Any:
    """``transformers`` ``[B, C, H, W]`` / ``[B, T, C, H, W]`` -> ours ``[B, (T,) H, W, C]``."""
    if not isinstance(images, Tensor):
        raise TypeError(f"images must be a tensor [B, C, H, W] (channels first), got {type(images).__name__}")
    if images.dim() not in (4, 5):
        raise ValueError(f"images must be [B, C, H, W] or videos [B, T, C, H, W], got shape {tuple(images.shape)}")
    return images.movedim(-3, -1)


class _ImageClassifier(_Classifier):
    """``pixel_values [B, 3, H, W]`` -> ``[B, num_labels]`` (``PerceiverImagePreprocessor``
    with 3 input channels, then the classification decoder)."""

    input_alias = "pixel_values"

    @classmethod
    def image_adapter(cls, c: Any) -> ImageAdapterConfig:
        raise NotImplementedError

    @classmethod
    def perceiver_config(cls, c: Any) -> PerceiverConfig:
        return cls.classifier_config(c, cls.image_adapter(c))

    def prepare_inputs(self, inputs: Any) -> Any:
        return _channels_last(inputs)


@register
class PerceiverForImageClassificationLearned(_ImageClassifier):
    """``PerceiverForImageClassificationLearned``: 1x1 convolution to 256 channels,
    concatenated with a learned ``image_size**2 x 256`` table projected by a linear layer.
    ``interpolate_pos_encoding`` is accepted and changes nothing, as in ``transformers``
    (its interpolation is to the table's own size)."""

    extra_kwargs = ("interpolate_pos_encoding",)

    @classmethod
    def image_adapter(cls, c: Any) -> ImageAdapterConfig:
        return architectures.learned_stem(c.image_size, num_channels=256, num_position_channels=256)

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        prep = "perceiver.input_preprocessor"
        return (
            linear_names(f"{prep}.convnet_1x1", "input_adapter.conv1x1")
            | {f"{prep}.position_embeddings.position_embeddings": "input_adapter.network_inputs.trainable.pos_embs"}
            | linear_names(f"{prep}.positions_projection", "input_adapter.network_inputs.projector")
            | cls.classifier_names(c)
        )


@register
class PerceiverForImageClassificationFourier(_ImageClassifier):
    """``PerceiverForImageClassificationFourier``: the pixels with 2-d Fourier features
    (64 bands, ``max_resolution`` fixed at 224 x 224 by ``transformers``)."""


    @classmethod
    def image_adapter(cls, c: Any) -> ImageAdapterConfig:
        return architectures.fourier_stem(c.image_size, num_bands=64, max_resolution=(224, 224))

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        return cls.classifier_names(c)


@register
class PerceiverForImageClassificationConvProcessing(_ImageClassifier):
    """``PerceiverForImageClassificationConvProcessing``: one 7x7/2 convolution (64
    channels, batch norm, ReLU) and 3x3/2 max-pool with the ``transformers`` padding, then
    2-d Fourier features (64 bands, ``max_resolution`` fixed at 56 x 56)."""


    @classmethod
    def image_adapter(cls, c: Any) -> ImageAdapterConfig:
        # transformers passes spatial_downsample=1 but its Conv2DDownsample always has one
        # layer, i.e. downsamples by 4, as the stem does.
        return architectures.conv_stem(
            c.image_size, num_channels=64, num_bands=64, conv_padding="symmetric", max_resolution=(56, 56)
        )

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        prep, ours = "perceiver.input_preprocessor.convnet", "input_adapter.conv"
        names = {f"{prep}.conv.weight": f"{ours}.convs.0.weight"}
        for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            names[f"{prep}.batchnorm.{p}"] = f"{ours}.norms.0.{p}"
        return names | cls.classifier_names(c)


# -- optical flow ------------------------------------------------------------------------
@register
class PerceiverForOpticalFlow(TransformersPerceiver):
    """``PerceiverForOpticalFlow``: the 3x3 patches of two frames, ``[B, 2, 27, H, W]`` with
    ``(H, W) = config.train_size`` -> flow ``[B, H, W, 2]``. The queries are the encoder
    inputs (with positions); the output is divided by 100."""


    @classmethod
    def perceiver_config(cls, c: Any) -> PerceiverConfig:
        return architectures.optical_flow(
            encoder=encoder_config_from_transformers(c), train_size=c.train_size, num_channels=64, num_bands=64,
            input_format="patches", **decoder_keywords_from_transformers(c),
        )

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        prep = "perceiver.input_preprocessor.conv_after_patches"
        dec = "perceiver.decoder.decoder"
        return (
            linear_names(prep, "input_adapter.image.patches_linear")
            | encoder_names(c)
            | layer_names(f"{dec}.decoding_cross_attention", "decoder.cross_attend", cross=True)
            | linear_names(f"{dec}.final_layer", "decoder.output")
        )

    def prepare_inputs(self, inputs: Any) -> Any:
        if isinstance(inputs, Tensor) and (inputs.dim() != 5 or inputs.shape[2] != 3 * PATCH_SIZE**2):
            raise ValueError(f"optical flow inputs must be patches [B, 2, 27, H, W], got shape {tuple(inputs.shape)}")
        return _channels_last(inputs)


# -- multimodal autoencoding -------------------------------------------------------------
@register
class PerceiverForMultimodalAutoencoding(TransformersPerceiver):
    """``PerceiverForMultimodalAutoencoding``: ``{"audio": [B, num_frames *
    audio_samples_per_frame, 1], "image": [B, num_frames, 3, H, W], "label": [B,
    num_labels]}`` -> ``{"audio": [B, n_a * samples_per_patch], "image": [B, n_i, 3],
    "label": [B, num_labels]}`` for the ``subsampled_output_points`` ``{"audio": [n_a],
    "image": [n_i]}`` (flat indices; ``"label"``, which ``transformers`` accepts only as
    None, is ignored: its one query is always decoded).

    As in ``transformers``, the label input is always replaced by the learned mask token
    (``mask_probs`` label 1.0). Without ``subsampled_output_points`` (where
    ``transformers`` fails) every output is decoded, with the same position formula."""

    extra_kwargs = ("subsampled_output_points",)

    @classmethod
    def perceiver_config(cls, c: Any) -> PerceiverConfig:
        return architectures.video_audio_label_autoencoder(
            encoder=encoder_config_from_transformers(c), num_frames=c.num_frames, image_size=c.image_size,
            image_patch_size=4, audio_samples_per_frame=c.audio_samples_per_frame,
            samples_per_patch=c.samples_per_patch, num_classes=c.num_labels, num_image_bands=32,
            num_audio_bands=192, label_query_channels=c._label_trainable_num_channels,
            decoder_channels=c.output_num_channels, image_query_shape=c.output_shape[1:4],
            image_resolution="pixels", **decoder_keywords_from_transformers(c),
        )

    @classmethod
    def param_names(cls, c: Any) -> dict[str, str]:
        prep, dec, post = "perceiver.input_preprocessor", "perceiver.decoder", "perceiver.output_postprocessor"
        names: dict[str, str] = {}
        for m in ("audio", "image", "label"):
            names[f"{prep}.padding.{m}"] = f"input_adapter.padding.{m}.pos_embs"
            names[f"{prep}.mask.{m}"] = f"input_adapter.mask_token.{m}.pos_embs"
            names[f"{dec}.padding.{m}"] = f"decoder.query_builder.padding.{m}.pos_embs"
        names[f"{dec}.modalities.label.decoder.output_position_encodings.position_embeddings"] = (
            "decoder.query_builder.builders.label.queries.pos_embs"
        )
        heads = {"audio": "output_adapter.heads.audio.linear", "image": "output_adapter.heads.image",
                 "label": "output_adapter.heads.label.projection"}
        for m, ours in heads.items():
            names |= linear_names(f"{post}.modalities.{m}.classifier", ours)
        return (
            names
            | encoder_names(c)
            | layer_names(f"{dec}.decoder.decoding_cross_attention", "decoder.cross_attend", cross=True)
            | linear_names(f"{dec}.decoder.final_layer", "decoder.output")
        )

    def prepare_inputs(self, inputs: Any) -> Any:
        if not isinstance(inputs, Mapping) or "image" not in inputs:
            return inputs  # the adapter reports what is wrong
        return {**inputs, "image": _channels_last(inputs["image"])}

    def points(self, subsampled_output_points: Any) -> Any:
        builder = self.perceiver.decoder.query_builder
        if subsampled_output_points is None:
            return builder.all_points(None, device=builder.padding["label"].pos_embs.device)
        if not isinstance(subsampled_output_points, Mapping):
            raise TypeError(
                "subsampled_output_points must be a dict {modality: flat output indices}, got "
                f"{type(subsampled_output_points).__name__}"
            )
        # The label has one trainable query, always decoded (transformers fails on label points).
        return {m: idx for m, idx in subsampled_output_points.items() if m != "label"}


# ---------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------
def from_transformers(model_or_directory: Any, map_location: str | torch.device = "cpu") -> TransformersPerceiver:
    """A ``transformers`` Perceiver model, or a directory it was saved to
    (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), -> the equivalent
    perceptio model wrapped to be called like the ``transformers`` model.

    ``map_location``: where a directory's weights are read to. The result is in eval mode,
    with the device and floating dtype of the weights. Raises ValueError for a model or
    config that is not one of the supported Perceiver classes (``WRAPPERS``) and for
    weights that do not fit it."""
    if isinstance(model_or_directory, (str, os.PathLike)):
        config, state = _read_directory(Path(model_or_directory), map_location)
        name = _architecture(config, str(model_or_directory))
        _check_against_transformers(name, config, state)
    elif isinstance(model_or_directory, nn.Module) and hasattr(model_or_directory, "config"):
        name = type(model_or_directory).__name__
        config, state = model_or_directory.config, model_or_directory.state_dict()
        if name in WRAPPERS:
            WRAPPERS[name].check_model(model_or_directory)
    else:
        raise TypeError(
            "from_transformers expects a transformers Perceiver model or a directory path, got "
            f"{type(model_or_directory).__name__}"
        )
    if name not in WRAPPERS or getattr(config, "model_type", None) != "perceiver":
        raise ValueError(
            f"{name} (model_type={getattr(config, 'model_type', None)!r}) is not a supported transformers "
            f"Perceiver model; supported: {sorted(WRAPPERS)}"
        )
    return WRAPPERS[name].convert(config, state)


def _read_directory(directory: Path, map_location: str | torch.device) -> tuple[Any, dict[str, Tensor]]:
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory / 'config.json'} not found: from_transformers reads a local directory written by "
            "save_pretrained (nothing is downloaded)"
        )
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading a transformers directory needs the `transformers` package: pip install 'perceptio[transformers]'"
        ) from e
    read_json(directory / "config.json")  # a damaged config.json is named here, not deep in transformers
    config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
    check_device(map_location)
    if (directory / "model.safetensors").is_file():
        state = read_safetensors(directory / "model.safetensors", map_location)
    elif (directory / "pytorch_model.bin").is_file():
        state = read_torch_file(directory / "pytorch_model.bin", map_location)
        if not (isinstance(state, dict) and all(isinstance(v, Tensor) for v in state.values())):
            raise DamagedFileError(f"{directory / 'pytorch_model.bin'}: expected a state dict of tensors, got "
                                   f"{type(state).__name__}")
    else:
        raise FileNotFoundError(
            f"{directory}: no model.safetensors or pytorch_model.bin (sharded checkpoints are not supported)"
        )
    return config, state


def _architecture(config: Any, where: str) -> str:
    names = getattr(config, "architectures", None) or []
    if len(names) != 1:
        raise ValueError(f"{where}: config.json must name exactly one architecture, got {names}")
    return names[0]


def _check_against_transformers(name: str, config: Any, state: dict[str, Tensor]) -> None:
    """Load ``state`` into the ``transformers`` class built (on the meta device, so
    nothing is allocated) from ``config``: a checkpoint that ``transformers`` itself would
    reject is reported with its names."""
    from transformers.models.perceiver import modeling_perceiver

    if name not in WRAPPERS:
        return  # reported by the caller
    with torch.device("meta"):
        model = getattr(modeling_perceiver, name)(config)
    try:
        result = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as e:  # wrongly shaped tensors
        raise ValueError(f"checkpoint does not fit transformers {name}: {e}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"checkpoint does not fit transformers {name}: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
