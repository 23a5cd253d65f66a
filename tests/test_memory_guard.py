"""Performance guard: attention never materialises the full attention matrix for large
inputs. (That the faster kernel paths compute what the plain ones do: tests/test_kernels.py.)

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



_STEP_PROBE = """
import json, torch
from perceptio.bench.compare import Contender, _forward_backward
from perceptio.bench.harness import configure_malloc, measure_interleaved
configure_malloc("memory")
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(4096, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 4096))
x = torch.randn(256, 4096)
step = _forward_backward(Contender(model, lambda: model(x)))
peaks = [measure_interleaved({"step": step}, repeats=0, warmup=1)["step"].peak for _ in range(3)]
print(json.dumps({"peaks": peaks}))
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_benchmark_step_peak_counts_the_gradients_it_allocates():
    """The benchmarks' forward+backward step of two 4096 x 4096 linears on 256 rows: 128
    MiB of gradients, allocated anew by every step (set to None before it, as
    optimizer.zero_grad() does), and 8 MiB of activations: every measured step shows at
    least the gradients. (Freed inside the measured step, the last step's gradients would
    hide the new ones: measured so, 3.8 MiB from the second step on.)"""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", _STEP_PROBE], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])["peaks"]
    assert all(128 < p < 200 for p in peaks), peaks
