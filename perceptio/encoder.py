"""The Perceiver encoder: inputs ``[B, M, C]`` -> latents ``[B, N, D]``.

Perceiver IO (``num_cross_attends=1``): one cross-attend from the learned latent array
to the inputs, then ``num_blocks`` applications of one block of
``num_self_attends_per_block`` self-attention layers (the block's weights are shared
across its applications).

The original Perceiver (``num_cross_attends > 1``): cross-attend and latent block
alternate ``num_cross_attends`` times. As in the paper, the first cross-attend and the
first latent block have their own weights and all later ones share one set
(``share_cross_attend_weights`` / ``share_latent_block_weights`` turn this off).

Adaptive computation (``ponder``, PonderNet, Banino et al. 2021): the weight-shared
recurrence decides per example how many steps to take. A *step* is one iteration of the
recurrence: one application of the latent block (Perceiver IO; the cross-attend comes
before the first) or one cross-attend + latent block (the original Perceiver). After
step n a halting unit gives ``lambda_n = sigmoid(w . mean(z_n) + b)``; the probability of
halting at n is ``p_n = lambda_n prod_{j<n} (1 - lambda_j)``, the last step taking the
remainder. :meth:`PerceiverEncoder.ponder` runs all steps (training: the loss weighs the
output of every step by ``p_n``) or halts each example and drops it from the batch
(inference: easy inputs cost less).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from .config import Config, ConfigError, check_divisible, check_positive
from .layers.attention import checkpoint_block
from .layers.blocks import Activation, CrossAttention, SelfAttention
from .layers.position import TrainablePositionEncoding


@dataclass(kw_only=True)
class PonderConfig(Config):
    """PonderNet halting of the encoder's recurrence (``encoder.ponder``).

    ``max_steps``: the most steps, the depth made adaptive: it must equal ``num_blocks``
    (Perceiver IO) or ``num_cross_attends`` (the original Perceiver), so the same config
    without ``ponder`` is the fixed-depth model at ``max_steps``. ``lambda_p``: the prior's
    halting probability per step (KL to a Geometric(lambda_p) truncated at max_steps; the
    halting unit starts there). ``beta``: the KL weight. ``halting``: at inference stop when
    the cumulative halting probability reaches ``threshold`` (deterministic), or when a
    Bernoulli(lambda_n) draw says stop (``sample``, PonderNet's own rule)."""

    max_steps: int = 8
    lambda_p: float = 0.2
    beta: float = 0.01
    threshold: float = 0.5
    halting: Literal["threshold", "sample"] = "threshold"

    def validate(self) -> None:
        if self.max_steps < 1:
            raise ConfigError(f"encoder.ponder.max_steps must be >= 1 (the most recurrent steps), got {self.max_steps}")
        if not 0.0 < self.lambda_p <= 1.0:
            raise ConfigError(f"encoder.ponder.lambda_p must be in (0, 1] (the prior's halting probability per "
                              f"step; 1/lambda_p is its mean number of steps), got {self.lambda_p}")
        if self.beta < 0:
            raise ConfigError(f"encoder.ponder.beta must be >= 0 (the weight of the KL term), got {self.beta}")
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"encoder.ponder.threshold must be in (0, 1] (halt when the cumulative halting "
                              f"probability reaches it), got {self.threshold}")


@dataclass(kw_only=True)
class EncoderConfig(Config):
    num_latents: int = 256
    num_latent_channels: int = 1280
    num_blocks: int = 1
    num_self_attends_per_block: int = 26
    num_self_attend_heads: int = 8
    num_cross_attend_heads: int = 8
    qk_channels: int | None = None
    v_channels: int | None = None
    cross_attend_widening_factor: int = 1
    self_attend_widening_factor: int = 1
    use_query_residual: bool = True
    cross_attention_shape_for_attn: Literal["kv", "q"] = "kv"
    dropout: float = 0.0
    attention_dropout: float = 0.0
    latent_init_scale: float = 0.02
    num_cross_attends: int = 1
    share_cross_attend_weights: bool = True
    share_latent_block_weights: bool = True
    activation: Activation = "gelu_tanh"
    activation_checkpointing: bool = False
    ponder: PonderConfig | None = None  # adaptive depth (PonderNet); None: always the full depth

    @property
    def depth(self) -> int:
        """Steps of the recurrence: latent-block applications (Perceiver IO) or
        cross-attend + block iterations (the original Perceiver)."""
        return self.num_blocks if self.num_cross_attends == 1 else self.num_cross_attends

    def validate(self) -> None:
        check_positive(
            self, "num_latents", "num_latent_channels", "num_blocks", "num_self_attends_per_block",
            "num_self_attend_heads", "num_cross_attend_heads", "qk_channels", "v_channels",
            "cross_attend_widening_factor", "self_attend_widening_factor", "num_cross_attends",
        )
        check_divisible(self, "num_latent_channels", "num_self_attend_heads")
        check_divisible(self, "qk_channels", "num_self_attend_heads")
        check_divisible(self, "v_channels", "num_self_attend_heads")
        check_divisible(self, "qk_channels", "num_cross_attend_heads")
        check_divisible(self, "v_channels", "num_cross_attend_heads")
        for name in ("dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"EncoderConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.ponder is not None:
            self._check_ponder(self.ponder)

    def _check_ponder(self, ponder: PonderConfig) -> None:
        if self.num_cross_attends > 1 and not (self.share_cross_attend_weights and self.share_latent_block_weights):
            raise ConfigError(
                "encoder.ponder needs a weight-shared recurrence, but share_cross_attend_weights="
                f"{self.share_cross_attend_weights} and share_latent_block_weights={self.share_latent_block_weights}: "
                "set both to true (the original Perceiver's sharing), or remove encoder.ponder"
            )
        depth = "num_blocks" if self.num_cross_attends == 1 else "num_cross_attends"
        if ponder.max_steps != self.depth:
            raise ConfigError(
                f"encoder.ponder.max_steps={ponder.max_steps} must equal encoder.{depth}={self.depth}, the depth "
                f"it makes adaptive (a step is one {'latent block' if depth == 'num_blocks' else 'cross-attend + latent block'}); "
                f"set both to the same value"
            )

    def build(self, input_channels: int) -> PerceiverEncoder:
        return PerceiverEncoder(self, input_channels)


    def weight_sets(self) -> tuple[int, int]:
        """Number of distinct (cross-attends, latent blocks) with their own weights: the
        first of each and one shared set for all later ones, unless sharing is off."""
        n = self.num_cross_attends
        return (min(n, 2) if self.share_cross_attend_weights else n,
                min(n, 2) if self.share_latent_block_weights else n)

    def num_layers(self) -> int:
        """Attention layers with their own weights (cross-attends and self-attends)."""
        num_ca, num_lb = self.weight_sets()
        return num_ca + num_lb * self.num_self_attends_per_block


class LatentBlock(nn.Module):
    """``num_self_attends_per_block`` self-attention layers: ``[B, N, D] -> [B, N, D]``."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SelfAttention(
                config.num_latent_channels,
                config.num_self_attend_heads,
                config.qk_channels,
                config.v_channels,
                config.self_attend_widening_factor,
                config.dropout,
                config.attention_dropout,
                config.activation,
            )
            for _ in range(config.num_self_attends_per_block)
        )

    def forward(self, z: Tensor) -> Tensor:
        for layer in self.layers:
            z = layer(z)
        return z


class PerceiverEncoder(nn.Module):
    """Encodes ``inputs [B, M, input_channels]`` (mask ``[B, M]``, True = valid) to ``[B, N, D]``."""

    def __init__(self, config: EncoderConfig, input_channels: int) -> None:
        super().__init__()
        self.config = config
        self.latents = TrainablePositionEncoding(
            config.num_latents, config.num_latent_channels, config.latent_init_scale
        )

        def cross_attend() -> CrossAttention:
            return CrossAttention(
                config.num_latent_channels,
                input_channels,
                config.num_cross_attend_heads,
                config.qk_channels,
                config.v_channels,
                config.cross_attend_widening_factor,
                config.use_query_residual,
                config.cross_attention_shape_for_attn,
                config.dropout,
                config.attention_dropout,
                config.activation,
            )

        n = config.num_cross_attends
        # Module lists hold the distinct weight sets; `_*_index` maps each step to one.
        num_ca, num_lb = config.weight_sets()
        self.cross_attends = nn.ModuleList(cross_attend() for _ in range(num_ca))
        self.latent_blocks = nn.ModuleList(LatentBlock(config) for _ in range(num_lb))
        self._ca_index = [min(i, num_ca - 1) for i in range(n)]
        self._lb_index = [min(i, num_lb - 1) for i in range(n)]
        self.halting = HaltingUnit(config.num_latent_channels, config.ponder.lambda_p) if config.ponder else None

    def step(self, n: int, z: Tensor, inputs: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """Step ``n`` (0-based, of ``config.depth``) of the recurrence: ``z [B, N, D]`` -> ``[B, N, D]``."""
        config = self.config
        use_checkpoint = config.activation_checkpointing and self.training and torch.is_grad_enabled()
        if config.num_cross_attends == 1:  # Perceiver IO: one cross-attend, then the block repeats
            if n == 0:
                z = self.cross_attends[0](z, inputs, key_mask=input_mask)
            repeats, block = 1, self.latent_blocks[0]
        else:
            z = self.cross_attends[self._ca_index[n]](z, inputs, key_mask=input_mask)
            repeats, block = config.num_blocks, self.latent_blocks[self._lb_index[n]]
        for _ in range(repeats):
            z = checkpoint_block(block, z) if use_checkpoint else block(z)
        return z

    def forward(self, inputs: Tensor, input_mask: Tensor | None = None) -> Tensor:
        """Returns latents ``[B, N, D]`` (with ``ponder``: at each example's halting step).
        Attention maps: :func:`.layers.attention.collect_attention`."""
        if self.halting is not None:
            return self.ponder(inputs, input_mask).latents
        z = self.latents(inputs.shape[0])
        for n in range(self.config.depth):
            z = self.step(n, z, inputs, input_mask)
        return z

    def ponder(self, inputs: Tensor, input_mask: Tensor | None = None, all_steps: bool = False) -> PonderOutput:
        """The pondering recurrence on ``inputs [B, M, C]``.

        ``all_steps``: run every step for every example and return the latents of each
        and the halting distribution (training). Otherwise each example halts by
        ``config.ponder.halting`` and leaves the batch, so later steps run on the examples
        still thinking only."""
        if self.halting is None:
            raise ValueError("ponder() needs encoder.ponder in the config; this encoder has a fixed depth")
        if all_steps:
            return self._all_steps(inputs, input_mask)
        ponder, batch = self.config.ponder, inputs.shape[0]
        z, x, mask = self.latents(batch), inputs, input_mask
        active = torch.arange(batch, device=inputs.device)
        remaining = torch.ones(batch, device=inputs.device)  # prod_{j<=n} (1 - lambda_j)
        done_z, done_index, steps = [], [], torch.empty(batch, dtype=torch.long, device=inputs.device)
        for n in range(ponder.max_steps):
            z = self.step(n, z, x, mask)
            if n == ponder.max_steps - 1:
                halt = torch.ones(z.shape[0], dtype=torch.bool, device=z.device)
            else:
                lam = self.halting(z)
                if ponder.halting == "sample":
                    halt = torch.bernoulli(lam).bool()
                else:
                    remaining = remaining * (1 - lam)
                    halt = 1 - remaining >= ponder.threshold
            if not halt.any():  # nobody leaves: no compaction copies
                continue
            done_z.append(z[halt])
            done_index.append(active[halt])
            steps[active[halt]] = n + 1
            keep = ~halt
            if not keep.any():
                break
            active, z, remaining = active[keep], z[keep], remaining[keep]
            if self.config.num_cross_attends > 1:  # only the original Perceiver reads the inputs again
                x, mask = x[keep], mask[keep] if mask is not None else None
        order = torch.cat(done_index).argsort()
        return PonderOutput(torch.cat(done_z)[order], steps)

    def _all_steps(self, inputs: Tensor, input_mask: Tensor | None) -> PonderOutput:
        ponder = self.config.ponder
        z = self.latents(inputs.shape[0])
        step_latents, lambdas = [], []
        for n in range(ponder.max_steps):
            z = self.step(n, z, inputs, input_mask)
            step_latents.append(z)
            last = n == ponder.max_steps - 1
            lambdas.append(torch.ones(z.shape[0], device=z.device) if last else self.halting(z))
        lam = torch.stack(lambdas, 1)  # [B, S], lambda_S = 1: the last step takes the remainder
        # prod_{j<n} (1 - lambda_j), a running product so that it matches the halting loop's
        before = torch.cumprod(torch.cat([torch.ones_like(lam[:, :1]), 1 - lam[:, :-1]], 1), 1)
        p = lam * before
        if ponder.halting == "sample":
            steps = torch.multinomial(p, 1).squeeze(1) + 1
        else:  # the first step whose cumulative halting probability reaches the threshold
            reached = 1 - before * (1 - lam) >= ponder.threshold
            reached[:, -1] = True
            steps = reached.float().argmax(1) + 1
        latents = torch.stack(step_latents)[steps - 1, torch.arange(inputs.shape[0], device=inputs.device)]
        return PonderOutput(latents, steps, step_latents, p)


@dataclass
class PonderOutput:
    """What the pondering recurrence gives: ``latents [B, N, D]`` at each example's halting
    step, ``steps [B]`` (1-based steps taken); with ``all_steps`` also ``step_latents``
    (``max_steps`` tensors ``[B, N, D]``) and ``halting [B, max_steps]``, the halting
    distribution ``p`` (rows sum to 1)."""

    latents: Tensor
    steps: Tensor
    step_latents: list[Tensor] | None = None
    halting: Tensor | None = None


class HaltingUnit(nn.Module):
    """``lambda_n = sigmoid(w . mean_N(z_n) + b)``: ``z [B, N, D]`` -> ``[B]`` (float32).
    Starts at the prior, ``w = 0`` and ``b = logit(lambda_p)``, so training starts from KL = 0."""

    def __init__(self, channels: int, lambda_p: float) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, 1)
        nn.init.zeros_(self.linear.weight)
        p = min(max(lambda_p, 1e-4), 1 - 1e-4)  # lambda_p = 1: halt at once, with a finite bias
        nn.init.constant_(self.linear.bias, math.log(p / (1 - p)))

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.linear(z.mean(1)).float()).squeeze(-1)


def geometric_prior(lambda_p: float, max_steps: int, device: torch.device | None = None) -> Tensor:
    """The Geometric(lambda_p) halting distribution truncated at ``max_steps`` the way the
    model's own is, the last step taking the remainder: ``[max_steps]``, summing to 1."""
    n = torch.arange(max_steps, dtype=torch.float32, device=device)
    prior = lambda_p * (1 - lambda_p) ** n
    prior[-1] = (1 - lambda_p) ** (max_steps - 1)
    return prior


def ponder_kl(halting: Tensor, lambda_p: float) -> Tensor:
    """``KL(p || Geometric(lambda_p))`` of ``halting [B, S]``, averaged over the batch (a scalar).
    Probabilities are floored at 1e-30 inside the logarithms: a prior with zeros
    (``lambda_p = 1``) gives a large KL, not infinity, and a halting probability that
    underflowed to 0 a finite gradient, not NaN."""
    prior = geometric_prior(lambda_p, halting.shape[1], halting.device)
    kl = halting * (halting.clamp_min(1e-30).log() - prior.clamp_min(1e-30).log())
    return kl.sum(1).mean()
