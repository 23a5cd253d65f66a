"""Importing published checkpoints.

Three kinds of source are recognised by :func:`detect_source`:

* ``deepmind``: a released DeepMind checkpoint (``.pickle`` / ``.pystate``), a pickled
  ``{module: {param: array}}`` mapping (or ``{"params": ..., "state": ...}``), read with
  the restricted unpickler of :mod:`perceptio.interop.deepmind`; the architecture comes
  from a preset (named, or recognised from the parameter names) or an explicit config;
* ``transformers``: a Hugging Face directory (``config.json`` with ``model_type`` and
  ``model.safetensors`` or ``pytorch_model.bin``), converted by
  :mod:`perceptio.interop.transformers`;
* ``perceptio``: a directory written by ``Perceiver.save_pretrained``.

A Hugging Face Hub id (``deepmind/language-perceiver``) is resolved to its directory in
the local cache first (:mod:`perceptio.hub`), then converted like any Hugging Face
directory. :func:`read_foreign_source` is registered with ``Perceiver.from_pretrained``,
so that it takes all of these too.

Untrusted files are only read with the restricted unpickler, ``safetensors`` or
``torch.load(weights_only=True)`` (the latter two in :mod:`perceptio.interop.transformers`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from .hub import hub_directory, is_hub_id
from .interop.deepmind import Arrays, load_reference_file, load_reference_params
from .model import Perceiver, PerceiverConfig, register_pretrained_reader
from .presets import get_preset
from .pretrained import CONFIG_NAME, WEIGHTS_NAME, is_model_dir, read_json, read_labels, save_model_dir

Source = Literal["deepmind", "transformers", "perceptio"]


def detect_source(path: str | os.PathLike) -> Source:
    """Which kind of checkpoint ``path`` is; raises naming what was expected otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] == b"\x80":  # pickle protocol 2+
            return "deepmind"
        raise ValueError(f"{path}: not a pickle; expected a DeepMind checkpoint (.pickle/.pystate) or a model directory")
    if is_model_dir(path):
        return "perceptio"
    config_file = path / CONFIG_NAME
    if not config_file.is_file():
        raise ValueError(f"{path}: directory without {CONFIG_NAME}; expected a Hugging Face or perceptio model directory")
    config = read_json(config_file)
    if "input_adapter" in config:  # a perceptio config without its weights
        raise FileNotFoundError(f"{path / WEIGHTS_NAME} not found: not a complete perceptio model directory")
    if "model_type" in config or "architectures" in config:
        return "transformers"
    raise ValueError(f"{config_file}: neither a perceptio config (input_adapter, encoder, ...) "
                     "nor a Hugging Face one (model_type, architectures)")


# ---------------------------------------------------------------------------------------
# DeepMind
# ---------------------------------------------------------------------------------------
def detect_deepmind_preset(params: Arrays) -> str:
    """The preset whose released checkpoint has these Haiku parameter names."""
    modules = {name.split("::")[0] for name in params}

    def has(prefix: str) -> bool:
        return any(m.startswith(prefix) for m in modules)

    if has("embedding_decoder"):
        return "language-perceiver"
    if has("flow_decoder"):
        return "optical-flow-perceiver"
    if has("multimodal_decoder"):
        return "multimodal-perceiver"
    if has("classification_decoder"):
        if has("image_preprocessor/~/conv2_d_downsample"):
            return "vision-perceiver-conv"
        if has("image_preprocessor/~_build_network_inputs/trainable_position_encoding"):
            return "vision-perceiver-learned"
        return "vision-perceiver-fourier"
    raise ValueError(f"cannot tell which published model these parameters belong to (modules: {sorted(modules)[:8]} "
                     "...); name the preset")


# Encoder module names of the released checkpoints: the video autoencoding colab names
# its encoder "encoder"; the other colabs keep Haiku's default "perceiver_encoder".
ENCODER_MODULE, ENCODER_ALIASES = "perceiver_encoder/", ("encoder/",)


def canonical_module_names(params: Arrays) -> Arrays:
    """Rename an aliased encoder scope (``encoder/~/...``) to ``perceiver_encoder/~/...``."""
    if any(k.startswith(ENCODER_MODULE) for k in params):
        return params
    for alias in ENCODER_ALIASES:
        if any(k.startswith(alias + "~") for k in params):
            return {ENCODER_MODULE + k[len(alias):] if k.startswith(alias) else k: v for k, v in params.items()}
    return params


def load_deepmind_checkpoint(
    path: str | os.PathLike, preset: str | PerceiverConfig | None = None, **overrides: Any
) -> Perceiver:
    """A model with the weights of a released DeepMind checkpoint.

    ``preset``: a preset name (with ``overrides`` as for :func:`~perceptio.presets.create_model`),
    an explicit config, or None to recognise the preset from the parameter names. Raises
    ValueError naming every unused reference parameter and every missing or misshapen one."""
    params, state = load_reference_file(str(path))
    params = canonical_module_names(params)
    if isinstance(preset, PerceiverConfig):
        if overrides:
            raise TypeError("overrides apply to a preset name, not to an explicit config")
        config = preset
    elif preset is None:
        try:
            name = detect_deepmind_preset(params)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        config = get_preset(name).config(**overrides)
    else:
        config = get_preset(preset).config(**overrides)
    model = Perceiver(config)
    try:
        load_reference_params(model, params, state)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return model.eval()


# ---------------------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------------------
def read_transformers_labels(directory: str | os.PathLike) -> list[str] | None:
    """Class names from a Hugging Face ``config.json`` (``id2label``), if it has real ones."""
    config = read_json(Path(directory) / CONFIG_NAME)
    id2label = config.get("id2label") or {}
    labels = [id2label[k] for k in sorted(id2label, key=int)] if id2label else []
    if len(labels) < 2 or all(label == f"LABEL_{i}" for i, label in enumerate(labels)):
        return None
    return labels


def load_transformers_checkpoint(directory: str | os.PathLike) -> Perceiver:
    """A model converted from a Hugging Face Perceiver directory by
    ``perceptio.interop.transformers.from_transformers`` (which reproduces the
    ``transformers`` port, including where it differs from the DeepMind reference)."""
    # Imported here: `import perceptio` does not load the transformers interop.
    from .interop.transformers import from_transformers

    converted = from_transformers(directory)
    return converted.perceiver.eval()  # the perceptio model inside the drop-in wrapper


# ---------------------------------------------------------------------------------------
# Any source
# ---------------------------------------------------------------------------------------
def load_checkpoint(
    source: str | os.PathLike, preset: str | PerceiverConfig | None = None, **overrides: Any
) -> tuple[Perceiver, list[str] | None]:
    """(model, class names or None) from any recognised ``source`` (or Hub id)."""
    if is_hub_id(source):
        source = hub_directory(str(source))
    kind = detect_source(source)
    if kind != "deepmind" and (preset is not None or overrides):
        raise ValueError(f"{source} is a {kind} directory that describes its own architecture; "
                         "a preset or overrides apply to DeepMind checkpoints only")
    if kind == "deepmind":
        return load_deepmind_checkpoint(source, preset, **overrides), None
    if kind == "transformers":
        return load_transformers_checkpoint(source), read_transformers_labels(source)
    return Perceiver.from_pretrained(source), read_labels(source)


@register_pretrained_reader
def read_foreign_source(source: str | os.PathLike, map_location: str = "cpu") -> Perceiver | None:
    """``Perceiver.from_pretrained`` of a Hub id, a Hugging Face directory or a DeepMind
    checkpoint file; None for anything else (a perceptio directory, or a path that is no
    model at all, which the strict perceptio loader then reports)."""
    path = Path(source)
    if not is_hub_id(source):
        try:
            if detect_source(path) == "perceptio":
                return None
        except (OSError, ValueError):
            return None
    model, _ = load_checkpoint(source)
    return model.to(map_location)


def convert(
    source: str | os.PathLike, out_dir: str | os.PathLike, preset: str | PerceiverConfig | None = None,
    **overrides: Any,
) -> Perceiver:
    """Convert ``source`` to a perceptio model directory (``config.json``, ``model.safetensors``
    and, when the source names its classes, ``labels.txt``)."""
    model, labels = load_checkpoint(source, preset, **overrides)
    save_model_dir(out_dir, model.state_dict(), model.config, labels)
    return model


__all__ = [
    "convert", "detect_deepmind_preset", "detect_source",
    "load_checkpoint", "load_deepmind_checkpoint", "load_transformers_checkpoint",
    "read_foreign_source", "read_transformers_labels",
]
