"""The blocks' MLPs recompute their layer norm and activation in backward
(perceptio.layers.recompute): the same outputs and gradients as written, less kept."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from perceptio.layers import kernels
from perceptio.layers.blocks import MLP, CrossAttention, SelfAttention, get_activation, layer_norm
from perceptio.layers import recompute
from perceptio.layers.recompute import norm_mlp, recomputes


@pytest.fixture
def recompute_switch(monkeypatch):
    """``kernels.set_recompute``, with the size threshold off: these tests' tensors are small."""
    monkeypatch.setattr(recompute, "MIN_ELEMENTS", 0)
    yield kernels.set_recompute
    kernels.set_recompute(None)


def outputs_and_grads(block, inputs, switch, on):
    switch(on)
    block.zero_grad(set_to_none=True)
    for x in inputs:
        x.grad = None
    out = block(*inputs)
    out.square().sum().backward()
    return [out.detach()] + [x.grad for x in inputs] + [p.grad for p in block.parameters()]


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu", "relu", "silu", "sq_relu"])
def test_self_attention_block_is_bitwise_the_same_with_and_without_recompute(activation, recompute_switch):
    torch.manual_seed(0)
    block = SelfAttention(32, 4, widening_factor=2, activation=activation)
    x = torch.randn(2, 9, 32, requires_grad=True)
    fused = outputs_and_grads(block, [x], recompute_switch, True)
    written = outputs_and_grads(block, [x], recompute_switch, False)
    assert all(torch.equal(a, b) for a, b in zip(fused, written))


def test_cross_attention_block_with_frozen_inputs_is_the_same(recompute_switch):
    torch.manual_seed(0)
    block = CrossAttention(16, 8, num_heads=2, widening_factor=3)
    q, kv = torch.randn(2, 5, 16, requires_grad=True), torch.randn(2, 11, 8)
    fused = outputs_and_grads(block, [q, kv], recompute_switch, True)
    written = outputs_and_grads(block, [q, kv], recompute_switch, False)
    assert fused[2] is None and written[2] is None  # kv needs no gradient
    assert all(torch.equal(a, b) for a, b in zip(fused[:2] + fused[3:], written[:2] + written[3:]))


def saved_bytes(fn, *modules) -> int:
    """Bytes of the distinct storages, other than ``modules``' parameters, that autograd
    keeps for backward while ``fn()`` runs."""
    storages = {}
    params = {p.untyped_storage().data_ptr() for m in modules for p in m.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def test_mlp_keeps_two_fewer_row_tensors_for_backward(recompute_switch):
    rows, channels, widening = 512, 64, 2
    mlp, norm = MLP(channels, widening), layer_norm(channels)
    x = torch.randn(rows, channels, requires_grad=True)
    recompute_switch(False)
    written = saved_bytes(lambda: mlp(x, norm), mlp, norm)
    recompute_switch(True)
    fused = saved_bytes(lambda: mlp(x, norm), mlp, norm)
    # as written: x, norm(x), fc1(...) and act(...) (the last two `widening` wide); fused: x, fc1(...), 2 stats
    assert written == rows * channels * 4 * (2 + 2 * widening) + 2 * rows * 4
    assert fused == rows * channels * 4 * (1 + widening) + 2 * rows * 4


def test_double_backward_and_gradcheck(recompute_switch):
    recompute_switch(True)
    torch.manual_seed(0)
    norm, mlp = layer_norm(5).double(), MLP(5, 2).double()
    x = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    assert recomputes(x, norm, mlp.fc1, mlp.fc2)
    fn = lambda x: norm_mlp(x, norm, mlp.fc1, mlp.fc2, get_activation("gelu_tanh"))  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_torch_func_grad_and_vmap_take_the_mlp_as_written(recompute_switch):
    recompute_switch(True)
    torch.manual_seed(0)
    block = SelfAttention(16, 2)
    params = dict(block.named_parameters())
    x = torch.randn(3, 4, 16)

    def loss(p, x):
        return functional_call(block, p, (x,)).square().sum()

    per_example = vmap(grad(loss), in_dims=(None, 0))(params, x[:, None])
    for i in range(3):
        block.zero_grad(set_to_none=True)
        loss(params, x[i:i + 1]).backward()
        for name, p in block.named_parameters():
            torch.testing.assert_close(per_example[name][i], p.grad, rtol=1e-5, atol=1e-6)


def test_hooks_replaced_linears_no_grad_and_the_switch_take_the_mlp_as_written(recompute_switch):
    recompute_switch(True)
    norm, mlp = layer_norm(8), MLP(8)
    x = torch.randn(4, 8)
    assert recomputes(x, norm, mlp.fc1, mlp.fc2)
    with torch.no_grad():
        assert not recomputes(x, norm, mlp.fc1, mlp.fc2)
    handle = norm.register_forward_hook(lambda *_: None)
    assert not recomputes(x, norm, mlp.fc1, mlp.fc2)
    handle.remove()

    class Scaled(torch.nn.Linear):
        def forward(self, x):
            return 2 * F.linear(x, self.weight, self.bias)

    assert not recomputes(x, norm, Scaled(8, 8), mlp.fc2)
    recompute_switch(False)
    assert not recomputes(x, norm, mlp.fc1, mlp.fc2)


def test_small_inputs_take_the_mlp_as_written(monkeypatch, recompute_switch):
    recompute_switch(True)
    monkeypatch.setattr(recompute, "MIN_ELEMENTS", 1 << 18)
    norm, mlp = layer_norm(64), MLP(64)
    assert not recomputes(torch.randn(64 * 32, 64, requires_grad=True), norm, mlp.fc1, mlp.fc2)
    assert recomputes(torch.randn(64 * 64, 64, requires_grad=True), norm, mlp.fc1, mlp.fc2)


def test_the_switch_reads_its_environment_variable(monkeypatch, recompute_switch):
    monkeypatch.setenv("PERCEPTIO_RECOMPUTE", "0")
    recompute_switch(None)
    assert not kernels.use_recompute()
    monkeypatch.setenv("PERCEPTIO_RECOMPUTE", "yes")
    recompute_switch(None)
    with pytest.raises(ValueError, match="PERCEPTIO_RECOMPUTE must be 0 or 1, got 'yes'"):
        kernels.use_recompute()


def test_output_projection_keeps_the_kernels_output_not_a_merged_copy(recompute_switch):
    """A cross-attend (more keys than queries: the chunked kernel, which keeps its output):
    the output projection keeps that output instead of its [B, T, H * Dv] copy."""
    torch.manual_seed(0)
    block = CrossAttention(32, 16, num_heads=4, qk_channels=32, v_channels=64)
    q, kv = torch.randn(2, 24, 32, requires_grad=True), torch.randn(2, 300, 16)
    attention = block.attention  # given normalised inputs: only the projections' own savings
    recompute_switch(False)
    written = saved_bytes(lambda: attention(q, kv), block)
    recompute_switch(True)
    fused = saved_bytes(lambda: attention(q, kv), block)
    assert written - fused == 2 * 24 * 64 * 4  # the merged values [B, Tq, v_channels]
    assert torch.equal(attention(q, kv), (recompute_switch(False), attention(q, kv))[1])


@pytest.mark.parametrize("heads, queries, qk, v, folds", [
    (4, 12, None, None, (False, False)), (1, 12, None, None, (True, True)), (1, 12, 64, 4, (True, False)),
    (1, 12, 4, 64, (False, True)), (1, 200, None, None, (False, False))])
def test_cross_attend_norms_are_applied_once_inside_the_projections(heads, queries, qk, v, folds, recompute_switch):
    """q_norm / kv_norm go into the projections (NormLinears), keeping the block's inputs,
    not their normalised copies; where projections fold (one head), the block keeps its
    folded path. Outputs and gradients: bit for bit as written."""
    torch.manual_seed(0)
    block = CrossAttention(32, 16, num_heads=heads, qk_channels=qk, v_channels=v)
    q, kv = torch.randn(2, queries, 32, requires_grad=True), torch.randn(2, 150, 16, requires_grad=True)
    assert block.attention.folds(queries, 150) == folds
    fused = outputs_and_grads(block, [q, kv], recompute_switch, True)
    written = outputs_and_grads(block, [q, kv], recompute_switch, False)
    assert all(torch.equal(a, b) for a, b in zip(fused, written))


def test_self_attention_normalises_once_for_q_k_v_and_keeps_its_input_only(recompute_switch):
    rows, channels = 64, 32
    block = SelfAttention(channels, 4)
    x = torch.randn(1, rows, channels, requires_grad=True)
    recompute_switch(False)
    written = saved_bytes(lambda: block(x), block)
    recompute_switch(True)
    fused = saved_bytes(lambda: block(x), block)
    # the attention's norm(x) and the MLP's norm(x) and act(h) (widening 1): three [rows, C] tensors
    assert written - fused == 3 * rows * channels * 4


def test_norm_linears_double_backward_and_unused_outputs(recompute_switch):
    from perceptio.layers.linear import Linear
    from perceptio.layers.recompute import norm_linears

    recompute_switch(True)
    torch.manual_seed(0)
    norm, a, b = layer_norm(5).double(), Linear(5, 3).double(), Linear(5, 4, bias=False).double()
    x = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: norm_linears(x, norm, (a, b)), (x,))
    assert torch.autograd.gradgradcheck(lambda x: norm_linears(x, norm, (a, b)), (x,))
    only_first = lambda x: norm_linears(x, norm, (a, b))[0]  # noqa: E731  (the second output unused)
    assert torch.autograd.gradcheck(only_first, (x,))
    assert torch.autograd.gradgradcheck(only_first, (x,))
