"""The whole model: input adapter -> encoder -> decoder -> output adapter.

    inputs --input adapter--> x [B, M, C] --encoder--> latents [B, N, D]
    queries [B, O, Cq] --decoder(latents)--> [B, O, E] --output adapter--> outputs

``Perceiver.encode`` and ``Perceiver.decode`` are public so that the latents can be
computed once and decoded for any set of output points, in chunks of bounded memory
(``decode_chunked``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .adapters.base import AdapterOutput, InputAdapterConfig, OutputAdapterConfig
from .config import Config
from .decoder import CrossAttentionDecoderConfig, DecoderConfig
from .encoder import EncoderConfig, PerceiverEncoder
from .generation import generate
from .layers.attention import collect_attention
from .pretrained import DEFAULT_ARCHITECTURE, load_weights, read_config_dict, register_architecture, save_model_dir


@dataclass(kw_only=True)
class PerceiverConfig(Config):
    input_adapter: InputAdapterConfig
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=CrossAttentionDecoderConfig)
    output_adapter: OutputAdapterConfig | None = None


@dataclass
class PerceiverOutput:
    """``logits``: the task output; ``latents``: ``[B, N, D]``; ``attentions``: on request,
    ``{"cross": [...], "self": [...], "decoder": [...]}`` of ``[B, heads, Tq, Tk]``."""

    logits: Any
    latents: Tensor
    attentions: dict[str, list[Tensor]] | None = None


class Perceiver(nn.Module):
    """A Perceiver / Perceiver IO model built from a :class:`PerceiverConfig`."""

    def __init__(self, config: PerceiverConfig) -> None:
        super().__init__()
        self.config = config
        self.input_adapter = config.input_adapter.build()
        in_channels = self.input_adapter.num_channels
        without_pos = self.input_adapter.num_channels_without_pos
        self.encoder = PerceiverEncoder(config.encoder, in_channels)
        self.decoder = config.decoder.build(config.encoder.num_latent_channels, in_channels, without_pos)
        self.output_adapter = (
            config.output_adapter.build(self.decoder.output_channels, self.input_adapter)
            if config.output_adapter is not None
            else None
        )

    # -- the three stages -------------------------------------------------------------
    def encode(self, inputs: Any, input_mask: Tensor | None = None) -> tuple[Tensor, AdapterOutput]:
        """Raw inputs -> (latents ``[B, N, D]``, adapter output for the query builders)."""
        _check_mask(input_mask, self.input_adapter.check(inputs), "input_mask")
        context = self.input_adapter(inputs)
        return self.encoder(context.inputs, input_mask), context

    def decode(
        self,
        latents: Tensor,
        context: AdapterOutput | None = None,
        points: Any = None,
        query_mask: Tensor | None = None,
        rows: Any = None,
        postprocess: bool = True,
    ) -> Any:
        """Latents -> outputs for all queries, the reference-subsampled ``points``, or the
        exact ``rows`` of the full query array."""
        queries = self.decoder.queries(latents.shape[0], context, points=points, rows=rows)
        if queries is not None:
            _check_mask(query_mask, queries.shape[:2], "query_mask")
        out = self.decoder.split(self.decoder(latents, queries, query_mask), context, points, rows)
        return self.postprocess(out, context) if postprocess else out

    def postprocess(self, decoded: Any, context: AdapterOutput | None = None) -> Any:
        if self.output_adapter is None:
            return decoded
        return self.output_adapter(decoded)

    @torch.no_grad()
    def decode_chunked(
        self, latents: Tensor, context: AdapterOutput | None = None, chunk_size: int = 4096, points: Any = None
    ) -> Any:
        """Decode all queries (or the reference-subsampled ``points``, a dict per modality for
        multimodal models) ``chunk_size`` queries at a time; equals ``decode(latents, context,
        points)``. Queries are built per chunk, so peak memory is bounded by the chunk, not by
        the number of outputs; the latents are computed once, by the caller."""
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        parts = [
            self.decode(latents, context, postprocess=False, **selection)
            for selection in self.decoder.chunks(context, chunk_size, points, device=latents.device)
        ]
        if not parts:  # nothing to decode (empty points)
            return self.decode(latents, context, points=points)
        return self.postprocess(self.decoder.merge(parts), context)

    def forward(
        self,
        inputs: Any,
        input_mask: Tensor | None = None,
        query_mask: Tensor | None = None,
        points: Any = None,
        return_attention: bool = False,
    ) -> PerceiverOutput:
        """``inputs`` as the input adapter takes them; masks ``[B, M]`` / ``[B, O]`` of bools
        (True = valid); ``points``: flat output indices to decode (all when None).

        ``return_attention``: also the attention maps, ``attentions = {"cross": [...],
        "self": [...], "decoder": [...]}`` of ``[B, heads, Tq, Tk]`` in call order (encoder
        cross-attends, latent self-attention layer applications, decoder cross-attend),
        recorded by :func:`perceptio.layers.attention.collect_attention`; they are part of
        the autograd graph."""
        if return_attention:
            with collect_attention(self) as maps:
                out = self.forward(inputs, input_mask, query_mask, points)
            out.attentions = {
                "cross": maps.under("encoder.cross_attends"),
                "self": maps.under("encoder.latent_blocks"),
                "decoder": maps.under("decoder"),
            }
            return out
        latents, context = self.encode(inputs, input_mask)
        return PerceiverOutput(self.decode(latents, context, points, query_mask), latents)

    def generate(self, prompt_ids: Any, max_new_tokens: int, **options: Any) -> list[list[int]]:
        """Raises ``TypeError``: a Perceiver (IO) is not causal; generation needs a ``PerceiverAR``."""
        return generate(self, prompt_ids, max_new_tokens, **options)

    # -- persistence ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` to ``directory`` (atomically;
        the format is :mod:`perceptio.pretrained`)."""
        save_model_dir(directory, self.state_dict(), self.config)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, map_location: str = "cpu") -> Perceiver:
        """The model saved in ``directory`` by :meth:`save_pretrained` (strict: every
        parameter must be there with its shape)."""
        model = cls(PerceiverConfig.from_dict(read_config_dict(directory)))
        load_weights(model, directory, map_location)
        return model


register_architecture(DEFAULT_ARCHITECTURE, Perceiver)


def _check_mask(mask: Tensor | None, shape: torch.Size, name: str) -> None:
    if mask is None:
        return
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name} must have dtype torch.bool (True = valid), got {mask.dtype}")
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)} to match its array, got {tuple(mask.shape)}")
