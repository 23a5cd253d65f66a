"""Kernel switches: which linear and attention kernels the layers use, decided once per process.

In the spirit of timm's ``use_fused_attn()``: each switch is decided on first use, from an
environment variable if it is set, else from what this machine and PyTorch build offer,
and then cached; a ``set_*`` function changes it at run time (benchmarks, tests). What a
switch selects is a kernel, never a result: every path computes the same function, up to
fp32 summation order, and works under every torch transform (see :mod:`.linear`).

* :func:`use_onednn_linear` (``PERCEPTIO_ONEDNN_LINEAR=0|1``): large fp32 CPU linears on
  oneDNN instead of MKL. MKL runs only AVX2 kernels on x86 CPUs that are not Intel's
  while oneDNN runs AVX-512 there: ~2x the fp32 FLOP/s on the AMD Zen 5 of
  docs/performance.md. On Intel CPUs MKL uses AVX-512 itself and oneDNN was measured
  slower, so by default the switch is on only for non-Intel x86 CPUs with AVX-512.
* :func:`attention_split_threads` (``PERCEPTIO_ATTENTION_SPLIT_THREADS=N``): the thread
  count :func:`.attention.attend` splits queries for (1 = never split), by default
  ``torch.get_num_threads()`` when first asked, so the split does not follow later
  ``torch.set_num_threads`` calls unless :func:`set_attention_split_threads` says so.
* :func:`attention_kernel` (``PERCEPTIO_ATTENTION_KERNEL=auto|sdpa``): ``auto`` sends
  attention with more keys than queries (the cross-attend into the latents) on the CPU to
  :mod:`.chunked` (large products chunked over the keys), the rest to
  ``F.scaled_dot_product_attention``, and lets one-head attention fold its key and value
  projections where that saves work (:meth:`.attention.MultiHeadAttention.folds`); ``sdpa``
  computes every attention as written, on SDPA (benchmarks, checks).
* :func:`use_recompute` (``PERCEPTIO_RECOMPUTE=0|1``, default 1): the blocks' pre-norm
  MLPs and attention projections keep less for backward and recompute cheap tensors (a
  layer norm, an activation, the heads' merge) there (:mod:`.recompute`); 0 keeps what
  autograd keeps as written.
"""


from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

ONEDNN_LINEAR_ENV = "PERCEPTIO_ONEDNN_LINEAR"
ATTENTION_SPLIT_ENV = "PERCEPTIO_ATTENTION_SPLIT_THREADS"

ATTENTION_KERNEL_ENV = "PERCEPTIO_ATTENTION_KERNEL"
ATTENTION_KERNELS = ("auto", "sdpa")
RECOMPUTE_ENV = "PERCEPTIO_RECOMPUTE"

_onednn_linear: bool | None = None  # None: not decided yet
_split_threads: int | None = None
_attention_kernel: str | None = None
_recompute: bool | None = None


def onednn_matmul(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x [R, in] @ weight [out, in].T + bias`` on oneDNN's linear primitive (any strides).

    The raw kernel: no autograd, no batching rule. Layers use :func:`.linear.linear`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def onednn_linear_works() -> bool:
    """Whether this PyTorch build has the oneDNN linear op and it agrees with ``F.linear``
    (forward and a transposed, strided product like the weight gradient's)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    # Deterministic values, no RNG: the first call may come from inside torch.func.vmap.
    x, w, b = (torch.arange(math.prod(s), dtype=torch.float32).mul(0.37).sin().reshape(s)
               for s in ((64, 96), (80, 96), (80,)))
    try:
        with torch.no_grad():
            y = onednn_matmul(x, w, b)
            gw = onednn_matmul(y.t(), x.t(), None)
    except (RuntimeError, NotImplementedError):
        return False
    return torch.allclose(y, F.linear(x, w, b), rtol=1e-4, atol=1e-4) and torch.allclose(
        gw, y.t() @ x, rtol=1e-4, atol=1e-3
    )


def mkl_lacks_avx512() -> bool:
    """Whether this is an x86 CPU with AVX-512 that MKL runs with AVX2 kernels (not Intel's)."""
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):
        return False
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():  # not Linux: vendor unknown, keep MKL
        return False
    for line in cpuinfo.read_text(errors="replace").splitlines():
        if line.startswith("vendor_id"):
            return line.split(":", 1)[1].strip() != "GenuineIntel"
    return False


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, got {value!r}")
    return value == "1"


def use_onednn_linear() -> bool:
    """Whether :class:`.linear.Linear` sends large fp32 CPU products to oneDNN (decided once).

    Always False while ``torch.jit.trace`` records (a trace holds ``F.linear``), and the
    decision then waits for the first call outside a trace."""
    global _onednn_linear
    if torch.jit.is_tracing():
        return False
    if _onednn_linear is None:
        wanted = _env_flag(ONEDNN_LINEAR_ENV)
        if wanted is None:
            wanted = mkl_lacks_avx512()
        _onednn_linear = wanted and onednn_linear_works()
    return _onednn_linear


def set_onednn_linear(enabled: bool | None) -> None:
    """Switch the oneDNN linear path on or off for this process (``None``: decide again).

    Switching it on where the op is missing or wrong leaves it off."""
    global _onednn_linear
    _onednn_linear = None if enabled is None else bool(enabled) and onednn_linear_works()


def attention_split_threads() -> int:
    """The thread count :func:`.attention.attend` plans its query split for (decided once)."""
    global _split_threads
    if _split_threads is None:
        value = os.environ.get(ATTENTION_SPLIT_ENV, "")
        if value and not (value.isdigit() and int(value) > 0):
            raise ValueError(f"{ATTENTION_SPLIT_ENV} must be a positive integer, got {value!r}")
        _split_threads = int(value) if value else torch.get_num_threads()
    return _split_threads


def set_attention_split_threads(threads: int | None) -> None:
    """Plan the query split for ``threads`` threads (1: never split; ``None``: decide again)."""
    global _split_threads
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be a positive integer or None, got {threads}")
    _split_threads = threads


def attention_kernel() -> str:
    """``auto`` or ``sdpa``: which kernels :func:`.attention.attend` may use (decided once)."""
    global _attention_kernel
    if _attention_kernel is None:
        value = os.environ.get(ATTENTION_KERNEL_ENV, "") or "auto"
        if value not in ATTENTION_KERNELS:
            raise ValueError(f"{ATTENTION_KERNEL_ENV} must be one of {', '.join(ATTENTION_KERNELS)}, got {value!r}")
        _attention_kernel = value
    return _attention_kernel


def set_attention_kernel(kernel: str | None) -> None:
    """Set the attention kernel choice for this process (``None``: decide again from the environment)."""
    global _attention_kernel
    if kernel is not None and kernel not in ATTENTION_KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(ATTENTION_KERNELS)} or None, got {kernel!r}")
    _attention_kernel = kernel


def use_recompute() -> bool:
    """Whether the blocks keep less for backward and recompute cheap tensors there
    (:mod:`.recompute`; decided once: ``PERCEPTIO_RECOMPUTE``, default on)."""
    global _recompute
    if _recompute is None:
        wanted = _env_flag(RECOMPUTE_ENV)
        _recompute = True if wanted is None else wanted
    return _recompute


def set_recompute(enabled: bool | None) -> None:
    """Switch :mod:`.recompute` on or off for this process (``None``: decide again)."""
    global _recompute
    _recompute = None if enabled is None else bool(enabled)
