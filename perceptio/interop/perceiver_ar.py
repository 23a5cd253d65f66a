"""The official Perceiver AR code (google-research/perceiver-ar, JAX/Haiku): its constructor
arguments as a :class:`PerceiverARConfig`, and its parameter names as a state dict.

Haiku names modules of one class in creation order (``linear``, ``linear_1``, ...); a linear
layer's ``w`` is ``[in, out]`` (``y = x @ w + b``), so it is transposed for ``nn.Linear``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..perceiver_ar import PerceiverAR, PerceiverARConfig
from ..pretrained import load_state_dict_strict

ROOT = "perceiver_ar/~/"
# The reference's activation names (jax.nn) -> perceptio's; jax.nn.gelu is the tanh approximation.
ACTIVATIONS = {"sq_relu": "sq_relu", "gelu": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
# Reference arguments without an effect on the math of evaluation (chunking, dropout of latents).
IGNORED = {"name", "concat_pos", "mask_style", "latent_dropout_prob", "cross_attention_head_group_size",
           "chunked_cross_attention", "chunked_cross_query_size", "chunked_cross_key_size", "train_input_positions"}


def config_from_reference(kwargs: Mapping[str, Any]) -> PerceiverARConfig:
    """A :class:`PerceiverARConfig` from the reference's ``PerceiverAR(**kwargs)`` arguments
    (unknown arguments are an error; those in :data:`IGNORED` change nothing in evaluation)."""
    fields = {f.name for f in dataclasses.fields(PerceiverARConfig)}
    values: dict[str, Any] = {}
    for key, value in kwargs.items():
        if key in IGNORED:
            if key == "mask_style" and value != "final_block":
                raise ValueError(f"mask_style={value!r}: only 'final_block' exists")
            continue
        if key not in fields:
            raise ValueError(f"reference argument {key!r} has no PerceiverARConfig field")
        if key in ("activation_name", "initial_query_embed_activation_name"):
            if value not in ACTIVATIONS:
                raise ValueError(f"{key}={value!r}: known activations {sorted(ACTIVATIONS)}")
            value = ACTIVATIONS[value]
        if key == "additional_cross_attend_after_layers":
            value = list(value or [])
        values[key] = list(value) if isinstance(value, tuple) else value
    return PerceiverARConfig(**values)


def _linear(params: Mapping[str, np.ndarray], module: str, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.weight": torch.from_numpy(np.asarray(params[f"{module}::w"]).T.copy()),
            f"{prefix}.bias": torch.from_numpy(np.asarray(params[f"{module}::b"]).copy())}


def _norm(params: Mapping[str, np.ndarray], module: str, prefix: str) -> dict[str, Tensor]:
    return {f"{prefix}.weight": torch.from_numpy(np.asarray(params[f"{module}::scale"]).copy()),
            f"{prefix}.bias": torch.from_numpy(np.asarray(params[f"{module}::offset"]).copy())}


def _attention(params, module: str, prefix: str) -> dict[str, Tensor]:
    out = {}
    for i, name in enumerate(("q", "k", "v", "o")):
        out |= _linear(params, f"{module}/attention/linear" + (f"_{i}" if i else ""), f"{prefix}.attention.{name}")
    out |= _linear(params, f"{module}/dense/linear", f"{prefix}.mlp.fc1")
    out |= _linear(params, f"{module}/dense/linear_1", f"{prefix}.mlp.fc2")
    return out


def _numbered(name: str, i: int) -> str:
    return name if i == 0 else f"{name}_{i}"


def state_dict_from_reference(params: Mapping[str, np.ndarray], config: PerceiverARConfig) -> dict[str, Tensor]:
    """perceptio's state dict of :class:`~perceptio.perceiver_ar.PerceiverAR` from the reference's
    flat ``{"<haiku module>::<param>": array}``."""
    c = config
    get = lambda key: torch.from_numpy(np.asarray(params[key]).copy())  # noqa: E731
    state = {"token_embedding.weight": get(f"{ROOT}embed::embeddings")}
    if not c.rotary:
        for i in range(len(c.input_idx_size)):
            state[f"position_tables.{i}"] = get(f"{ROOT}embed_{i + 1}::embeddings")
    mlp_layers = c.initial_query_embed_num_layers if c.initial_query_embed_style == "mlp" else 0
    for i in range(mlp_layers):
        state |= _linear(params, ROOT + _numbered("linear", i), f"query_mlp.{i}")
    if c.initial_query_embed_style == "learned":
        state["q_embed_learned"] = get("perceiver_ar::q_embed_learned")
    else:
        state |= _linear(params, ROOT + _numbered("linear", mlp_layers), "z_linear")
    if c.num_latents_per_position > 1:
        state["z_pos_enc.pos_embs"] = get(f"{ROOT}z_pos_enc::pos_embs")
    for i in range(c.num_cross_attends):
        module, prefix = ROOT + _numbered("cross_attention", i), f"cross_attends.{i}"
        state |= _norm(params, f"{module}/layer_norm", f"{prefix}.q_norm")
        state |= _norm(params, f"{module}/layer_norm_1", f"{prefix}.kv_norm")
        state |= _norm(params, f"{module}/layer_norm_2", f"{prefix}.mlp_norm")
        state |= _attention(params, module, prefix)
    for i in range(c.num_transformers_per_block):
        module, prefix = ROOT + _numbered("self_attention", i), f"self_attends.{i}"
        state |= _norm(params, f"{module}/layer_norm", f"{prefix}.norm")
        state |= _norm(params, f"{module}/layer_norm_1", f"{prefix}.mlp_norm")
        state |= _attention(params, module, prefix)
    state |= _norm(params, "perceiver_ar/layer_norm", "final_norm")
    state |= _linear(params, f"{ROOT}logits", "logits")
    return state


def model_from_reference(kwargs: Mapping[str, Any], params: Mapping[str, np.ndarray]) -> PerceiverAR:
    """A :class:`~perceptio.perceiver_ar.PerceiverAR` in eval mode with the reference's parameters."""
    config = config_from_reference(kwargs)
    model = PerceiverAR(config).eval()
    load_state_dict_strict(model, state_dict_from_reference(params, config))
    return model
