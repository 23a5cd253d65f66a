"""Kernel switches (perceptio/layers/kernels.py): every kernel path computes the same function,
at every size, under every torch transform, and each switch is decided once per process."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from perceptio import (
    ClassificationOutputConfig,
    CrossAttentionDecoderConfig,
    EncoderConfig,
    GridAdapterConfig,
    Perceiver,
    PerceiverConfig,
    PositionEncodingConfig,
    TrainableQueriesConfig,
)
from perceptio.layers import kernels
from perceptio.layers import linear as onednn
from perceptio.layers.attention import attend, query_groups
from perceptio.layers.blocks import CrossAttention

from helpers import randomize

needs_onednn = pytest.mark.skipif(not kernels.onednn_linear_works(), reason="no oneDNN linear in this torch build")


@pytest.fixture
def onednn_on():
    """The oneDNN path switched on (whatever this CPU's default), and every call to it counted."""
    kernels.set_onednn_linear(True)
    calls = []
    real = onednn.onednn_matmul
    onednn.onednn_matmul = lambda *a: calls.append(tuple(a[0].shape)) or real(*a)
    yield calls
    onednn.onednn_matmul = real
    kernels.set_onednn_linear(None)


@pytest.fixture
def split_threads():
    yield kernels.set_attention_split_threads
    kernels.set_attention_split_threads(None)


def wide_model() -> Perceiver:
    """A Perceiver whose latent and decoder layers are 256 channels wide: the latent linears
    (64 x 256 x 256 multiply-adds per example) are above MIN_MACS, the cross-attend's
    key/value linears over 16 inputs below it."""
    torch.manual_seed(0)
    cfg = PerceiverConfig(
        input_adapter=GridAdapterConfig(index_dims=[4, 4], num_input_channels=3,
                                        position=PositionEncodingConfig(num_bands=2)),
        encoder=EncoderConfig(num_latents=64, num_latent_channels=256, num_self_attends_per_block=2,
                              num_self_attend_heads=8, num_cross_attend_heads=1),
        decoder=CrossAttentionDecoderConfig(queries=TrainableQueriesConfig(num_queries=1, num_channels=256),
                                            output_channels=10),
        output_adapter=ClassificationOutputConfig(),
    )
    return randomize(Perceiver(cfg))


def assert_close(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_close(a[k], b[k])
        return
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# oneDNN linear == F.linear, on both sides of MIN_MACS
# ---------------------------------------------------------------------------------------
@needs_onednn
@pytest.mark.parametrize("batch_shape, in_f, out_f", [((3, 700), 96, 112), ((2100,), 96, 112), ((4, 5), 64, 48)])
def test_onednn_linear_matches_f_linear_forward_and_backward(onednn_on, batch_shape, in_f, out_f):
    layer = onednn.Linear(in_f, out_f)
    assert isinstance(layer, torch.nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(*batch_shape, in_f)
    above = x.numel() // in_f * in_f * out_f >= onednn.MIN_MACS
    grad_out = torch.randn(*batch_shape, out_f)

    def run(fn):
        xi = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        out = fn(xi)
        out.backward(grad_out)
        return out.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()

    ours = run(layer)
    assert len(onednn_on) == (3 if above else 0)  # forward, grad input, grad weight on oneDNN
    reference = run(lambda xi: F.linear(xi, layer.weight, layer.bias))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_onednn
def test_linear_falls_back_to_f_linear_when_switched_off_small_not_fp32_or_traced(onednn_on):
    layer = onednn.Linear(64, 64)
    layer(torch.randn(2, 64))  # far below MIN_MACS
    layer.double()(torch.randn(4096, 64, dtype=torch.float64))  # not fp32
    layer.float()
    traced = torch.jit.trace(layer, torch.randn(4096, 64), check_trace=False)  # the check reruns eagerly
    assert "mkldnn" not in str(traced.graph)
    assert onednn_on == []
    layer(torch.randn(4096, 64))
    assert len(onednn_on) == 1
    kernels.set_onednn_linear(False)
    layer(torch.randn(4096, 64))
    assert len(onednn_on) == 1


def test_switches_are_decided_once_with_an_environment_override(monkeypatch):
    monkeypatch.setenv(kernels.ONEDNN_LINEAR_ENV, "0")
    monkeypatch.setenv(kernels.ATTENTION_SPLIT_ENV, "3")
    kernels.set_onednn_linear(None)
    kernels.set_attention_split_threads(None)
    try:
        assert kernels.use_onednn_linear() is False
        assert kernels.attention_split_threads() == 3
        monkeypatch.setenv(kernels.ONEDNN_LINEAR_ENV, "1")  # read once: no effect any more
        monkeypatch.setenv(kernels.ATTENTION_SPLIT_ENV, "5")
        assert kernels.use_onednn_linear() is False
        assert kernels.attention_split_threads() == 3
        kernels.set_onednn_linear(None)
        kernels.set_attention_split_threads(None)
        monkeypatch.setenv(kernels.ONEDNN_LINEAR_ENV, "yes")
        with pytest.raises(ValueError, match="PERCEPTIO_ONEDNN_LINEAR must be 0 or 1, got 'yes'"):
            kernels.use_onednn_linear()
        monkeypatch.setenv(kernels.ATTENTION_SPLIT_ENV, "0")
        with pytest.raises(ValueError, match="PERCEPTIO_ATTENTION_SPLIT_THREADS must be a positive integer, got '0'"):
            kernels.attention_split_threads()
    finally:
        monkeypatch.undo()
        kernels.set_onednn_linear(None)
        kernels.set_attention_split_threads(None)


@needs_onednn
def test_first_decision_inside_a_transform_or_trace_is_the_same_as_outside(monkeypatch):
    monkeypatch.setenv(kernels.ONEDNN_LINEAR_ENV, "1")
    layer = onednn.Linear(256, 256)
    try:
        kernels.set_onednn_linear(None)
        torch.jit.trace(layer, torch.randn(64, 256), check_trace=False)  # no decision while tracing
        vmap(layer)(torch.randn(2, 64, 256))  # decided here, inside vmap
        assert kernels.use_onednn_linear() is True
    finally:
        kernels.set_onednn_linear(None)


@needs_onednn
def test_forward_mode_jvp_through_the_onednn_path(onednn_on):
    layer = onednn.Linear(256, 256)
    x, tangent = torch.randn(64, 256), torch.randn(64, 256)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    w_tangent = torch.randn(256, 256)

    def ours(x, w):
        return functional_call(layer, {**params, "weight": w}, (x,))

    def reference(x, w):
        return F.linear(x, w, params["bias"])

    primals, tangents = (x, params["weight"]), (tangent, w_tangent)
    got = torch.func.jvp(ours, primals, tangents)
    assert len(onednn_on) > 0
    for a, b in zip(got, torch.func.jvp(reference, primals, tangents)):  # (output, its directional derivative)
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------
# torch transforms over a whole Perceiver 256 channels wide, oneDNN path on
# ---------------------------------------------------------------------------------------
@needs_onednn
def test_vmap_over_a_wide_perceiver_equals_the_batched_forward(onednn_on):
    model = wide_model()
    x = torch.randn(4, 4, 4, 3)
    batched = model(x).logits
    n = len(onednn_on)
    assert n > 0  # the latent linears took the oneDNN path
    per_example = vmap(lambda xi: model(xi[None]).logits[0])(x)
    assert len(onednn_on) > n  # ... and do so under vmap too
    assert_close(per_example, batched)


@needs_onednn
def test_grad_and_per_example_grads_over_a_wide_perceiver_equal_autograd(onednn_on):
    model = wide_model()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x, y = torch.randn(3, 4, 4, 3), torch.tensor([1, 7, 3])

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(model, p, (xb,)).logits, yb)

    model.zero_grad()
    loss(dict(model.named_parameters()), x, y).backward()
    reference = {k: p.grad for k, p in model.named_parameters()}
    assert_close(grad(loss)(params, x, y), reference)

    per_example = vmap(grad(lambda p, xi, yi: loss(p, xi[None], yi[None])), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i : i + 1], y[i : i + 1]).backward()
        assert_close({k: g[i] for k, g in per_example.items()}, {k: p.grad for k, p in model.named_parameters()})


@needs_onednn
def test_jit_trace_of_a_wide_perceiver_equals_eager(onednn_on):
    model = wide_model()
    x = torch.randn(2, 4, 4, 3)
    class Logits(torch.nn.Module):  # jit.trace takes tensors out, not PerceiverOutput
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, xb: torch.Tensor) -> torch.Tensor:
            return self.model(xb).logits

    with pytest.warns(torch.jit.TracerWarning):  # the input checks are Python; the trace fixes them
        traced = torch.jit.trace(Logits(), x)
    assert "mkldnn" not in str(traced.graph)
    x2 = torch.randn(2, 4, 4, 3)
    assert_close(traced(x2), model(x2).logits)


def _gradient_penalty(model: Perceiver, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Gradients of ``|d logits.sum() / d x|^2`` w.r.t. the parameters: double backward."""
    x = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(model(x).logits.square().sum(), x, create_graph=True)
    params = [p for _, p in model.named_parameters()]
    grads = torch.autograd.grad(gx.square().sum(), params, allow_unused=True)
    return {k: g for (k, _), g in zip(model.named_parameters(), grads) if g is not None}


@needs_onednn
def test_double_backward_through_the_onednn_path_equals_f_linear(onednn_on):
    layer = onednn.Linear(256, 256)
    x = torch.randn(64, 256, requires_grad=True)

    def penalty(fn):  # d/dW |d sum(fn(x)^2) / dx|^2
        (gx,) = torch.autograd.grad(fn(x).square().sum(), x, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), layer.weight)[0]

    ours = penalty(layer)
    assert len(onednn_on) > 3  # forward, backward products, and the second-order products on oneDNN
    torch.testing.assert_close(ours, penalty(lambda xi: F.linear(xi, layer.weight, layer.bias)), rtol=1e-4, atol=1e-3)


@needs_onednn
def test_double_backward_through_a_wide_perceiver_equals_f_linear(onednn_on):
    model = wide_model()
    x = torch.randn(2, 4, 4, 3)
    # PyTorch's CPU flash attention has no double backward; its math kernel has.
    with sdpa_kernel(SDPBackend.MATH):
        ours = _gradient_penalty(model, x)
        assert len(onednn_on) > 0
        kernels.set_onednn_linear(False)
        reference = _gradient_penalty(model, x)
    assert ours.keys() == reference.keys() and "encoder.latent_blocks.0.layers.0.mlp.fc1.weight" in ours
    for k in ours:
        torch.testing.assert_close(ours[k], reference[k], rtol=1e-3, atol=1e-6)


# ---------------------------------------------------------------------------------------
# attend: the query split (decided once) does not change results beyond rounding
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("b, h", [(2, 1), (1, 2), (1, 1)])
def test_attend_query_split_equals_sdpa_for_every_thread_count(split_threads, b, h):
    q = torch.randn(b, h, 12, 8, requires_grad=True)
    k = torch.randn(b, h, 30, 8, requires_grad=True)
    v = torch.randn(b, h, 30, 6, requires_grad=True)
    mask = torch.rand(b, 1, 1, 30) > 0.3
    grad_out = torch.randn(b, h, 12, 6)

    def run(fn):
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v, attn_mask=mask)
        out.backward(grad_out)
        return out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()

    reference = run(F.scaled_dot_product_attention)
    for threads in (1, 2, 3, 8):
        split_threads(threads)
        assert (query_groups(q, k, v, 0.0, threads) > 1) == (threads // (b * h) > 1)  # split where planned
        for a, r in zip(run(attend), reference):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_query_split_does_not_follow_torch_thread_count_once_decided(split_threads):
    threads = torch.get_num_threads()
    split_threads(None)
    try:
        decided = kernels.attention_split_threads()
        torch.set_num_threads(threads + 3)
        assert kernels.attention_split_threads() == decided
    finally:
        torch.set_num_threads(threads)


def test_cross_attend_block_is_the_same_for_every_split_thread_count(split_threads):
    block = CrossAttention(32, 20, num_heads=1)
    latents, inputs = torch.randn(1, 16, 32), torch.randn(1, 50, 20, requires_grad=True)
    mask = torch.rand(1, 50) > 0.2

    def run():
        block.zero_grad()
        inputs.grad = None
        out = block(latents, inputs, key_mask=mask)
        out.square().sum().backward()
        return [out.detach(), inputs.grad.clone()] + [p.grad.clone() for p in block.parameters()]

    split_threads(1)
    reference = run()
    for threads in (2, 4, 16):
        split_threads(threads)
        for a, r in zip(run(), reference):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
