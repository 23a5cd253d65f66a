"""Performance guards: attention never materialises the full attention matrix for large
inputs, and the oneDNN linear path computes exactly what ``F.linear`` computes.

Peak memory is measured in a fresh interpreter with the benchmarks' method
(``perceptio.bench.harness.PeakMemory``: resident-set high-water mark, reset before the call,
glibc told to return freed blocks at once), so the figure is what the OS sees and is
not disturbed by what the test session allocated before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from perceptio.layers import linear as onednn

ROOT = Path(__file__).resolve().parents[1]

# A cross-attend of N latents over M input points, as in a Perceiver encoder.
N, M, HEADS, KV_CHANNELS, QK_CHANNELS = 256, 200_000, 8, 32, 64

_PROBE = """
import json, sys, torch
from perceptio.bench.harness import PeakMemory, configure_malloc
from perceptio.layers.blocks import CrossAttention
configure_malloc("memory")
torch.manual_seed(0)
torch.set_num_threads(2)
N, M, H, C, QK, backward = json.loads(sys.argv[1])
block = CrossAttention(QK, C, num_heads=H, qk_channels=QK)
latents = torch.randn(1, N, QK)
inputs = torch.randn(1, M, C, requires_grad=backward)
mask = torch.ones(1, M, dtype=torch.bool)
mask[:, -M // 10:] = False  # padded tail: the masked SDPA path
with PeakMemory() as peak, torch.set_grad_enabled(backward):
    out = block(latents, inputs, key_mask=mask)
    if backward:
        out.square().sum().backward()
print(json.dumps({"peak_mib": peak.mib, "finite": bool(torch.isfinite(out).all())}))
"""


def _peak_mib(backward: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    args = json.dumps([N, M, HEADS, KV_CHANNELS, QK_CHANNELS, backward])
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward_backward"])
def test_cross_attend_over_200k_points_does_not_materialise_attention(backward):
    result = _peak_mib(backward)
    assert result["finite"]
    mib = 2**20
    full_matrix = HEADS * N * M * 4 / mib  # [B, heads, N, M] fp32: 1562 MiB
    # Everything that is linear in M: inputs, their layer norm, keys, values and, for the
    # backward pass, one gradient of each; twice that for transient copies, + 64 MiB.
    per_point = (KV_CHANNELS * 2 + QK_CHANNELS * 2) * 4 / mib
    bound = 2 * (2 if backward else 1) * M * per_point + 64
    assert bound < full_matrix / 2  # the bound would catch a materialised matrix
    assert result["peak_mib"] < bound, (
        f"peak {result['peak_mib']:.0f} MiB exceeds the linear-memory bound {bound:.0f} MiB "
        f"(the full attention matrix alone is {full_matrix:.0f} MiB)"
    )


# ---------------------------------------------------------------------------------------
# oneDNN linear == F.linear
# ---------------------------------------------------------------------------------------
@pytest.mark.skipif(not onednn.onednn_available(), reason="oneDNN linear not available in this torch build")
@pytest.mark.parametrize("batch_shape", [(3, 700), (2100,)])
def test_onednn_linear_matches_f_linear_forward_and_backward(batch_shape):
    layer = onednn.Linear(96, 112)
    assert isinstance(layer, torch.nn.Linear) and list(layer.state_dict()) == ["weight", "bias"]
    x = torch.randn(*batch_shape, 96)
    assert x.numel() // 96 * 96 * 112 >= onednn.MIN_MACS  # the oneDNN path is taken
    grad = torch.randn(*batch_shape, 112)

    def run(fn):
        xi = x.clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        out = fn(xi)
        out.backward(grad)
        return out.detach(), xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()

    ours = run(layer)
    reference = run(lambda xi: F.linear(xi, layer.weight, layer.bias))
    for a, b in zip(ours, reference):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_linear_falls_back_to_f_linear_when_disabled_small_or_not_fp32(monkeypatch):
    calls = []
    monkeypatch.setattr(onednn, "_linear_pointwise", lambda *a: calls.append(1) or F.linear(*a))
    layer = onednn.Linear(64, 64)
    layer(torch.randn(2, 64))  # far below MIN_MACS
    layer.double()(torch.randn(4096, 64, dtype=torch.float64))  # not fp32
    layer.float()
    monkeypatch.setenv("PERCEPTIO_ONEDNN_LINEAR", "0")
    layer(torch.randn(4096, 64))
    assert calls == []


# ---------------------------------------------------------------------------------------
# attend: queries split across threads for the CPU flash-attention backward
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("b, h", [(2, 1), (1, 2), (1, 1)])
def test_attend_split_queries_equals_sdpa_with_gradients(b, h):
    from perceptio.layers.attention import _query_groups, attend

    q = torch.randn(b, h, 12, 8, requires_grad=True)
    k = torch.randn(b, h, 30, 8, requires_grad=True)
    v = torch.randn(b, h, 30, 6, requires_grad=True)
    mask = torch.rand(b, 1, 1, 30) > 0.3
    grad = torch.randn(b, h, 12, 6)
    assert _query_groups(q, k, v, 0.0, threads=8) > 1  # the split path is taken

    def run(fn):
        for t in (q, k, v):
            t.grad = None
        out = fn(q, k, v, attn_mask=mask)
        out.backward(grad)
        return out.detach(), q.grad.clone(), k.grad.clone(), v.grad.clone()

    ours = run(lambda *a, **kw: attend(*a, **kw, threads=8))
    reference = run(F.scaled_dot_product_attention)
    for a, r in zip(ours, reference):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)
