"""Measurement primitives shared by every benchmark suite.

Timing: contenders are built in one process and run *interleaved* (A B A B ..., the
order alternating each round) so that load from other processes hits all of them
alike; we report the median wall time, the median process CPU time, and the median of
the per-round ratios (a paired estimate that is robust to slow drifts in load).

Peak memory on CPU: the kernel's high-water mark of this process's resident set
(``VmHWM``), reset right before the measured call by writing ``5`` to
``/proc/self/clear_refs``; the figure is ``VmHWM - VmRSS`` at the start of the call,
i.e. what the call adds on top of weights and inputs (activations, gradients,
workspaces, including memory that is not allocated through torch, e.g. oneDNN
scratch). So that freed memory really leaves the resident set, glibc is told to serve
every block of 128 KiB or more with ``mmap`` (fixed ``M_MMAP_THRESHOLD``) and to trim
eagerly; otherwise an earlier contender's freed arena pages would hide (or inflate) the
next one's peak. That setting costs page faults, so peaks are measured in a separate
process from the timings (``configure_malloc``). On CUDA: ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus the allocation at the start.

A contender's ``fn.prepare()``, where it has one, runs before each call, outside the
timing and the peak. Forward+backward contenders set their gradients to None there, as
``optimizer.zero_grad()`` does in a training loop, so a step allocates its gradients
anew (the same size for contenders with the same weights): its time and peak are those
of a training step, gradients, activations, workspaces and temporaries. (Set to None
inside the measured call, as before, the old gradients' freed pages took the step's
activations unseen and the peak read low by up to the size of the gradients: the
26-layer masked LM's step read 72 MiB so, against 840 MiB measured this way.)
"""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MALLOC_CONFIGURED = False


def configure_malloc(mode: str = "memory") -> bool:
    """Set glibc malloc for this process: ``"memory"`` serves every block >= 128 KiB with
    ``mmap`` and trims eagerly, so the resident set follows live memory (for
    ``PeakMemory``); ``"timing"`` keeps glibc's defaults (freed memory is reused without
    page faults once warmed up, as in a real training loop). The page faults of the memory
    setting slow some passes severalfold, so timings and peaks come from separate
    processes (``perceptio bench`` runs each suite twice)."""
    global _MALLOC_CONFIGURED
    if mode == "timing":
        return True
    if mode != "memory":
        raise ValueError(f"mode must be 'memory' or 'timing', got {mode!r}")
    if _MALLOC_CONFIGURED:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        threshold = 128 * 1024
        ok = libc.mallopt(_M_MMAP_THRESHOLD, threshold) and libc.mallopt(_M_TRIM_THRESHOLD, threshold)
    except OSError:
        return False
    _MALLOC_CONFIGURED = bool(ok)
    return _MALLOC_CONFIGURED


def _status_kib(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def rss_mib() -> float:
    return _status_kib("VmRSS:") / 1024


def peak_rss_mib() -> float:
    """The peak resident memory of this process so far (``VmHWM``), in MiB."""
    return _status_kib("VmHWM:") / 1024


class PeakMemory:
    """Context manager: ``.mib`` = peak memory added by the body (see module doc)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.mib = float("nan")

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self._base = _status_kib("VmRSS:")
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.mib = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
        else:
            self.mib = (_status_kib("VmHWM:") - self._base) / 1024


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Measurement:
    wall_s: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    error: str | None = None

    @property
    def median_s(self) -> float:
        return statistics.median(self.wall_s) if self.wall_s else float("nan")

    @property
    def median_cpu_s(self) -> float:
        return statistics.median(self.cpu_s) if self.cpu_s else float("nan")

    @property
    def peak(self) -> float:
        return max(self.peak_mib) if self.peak_mib else float("nan")


def measure_interleaved(
    contenders: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    device: torch.device | str = "cpu",
    memory: bool = True,
) -> dict[str, Measurement]:
    """Run each contender ``warmup`` times; with ``memory``, once more each with its peak
    memory measured; then ``repeats`` timed rounds, interleaved.

    A contender that raises (e.g. out of memory) is recorded with its error and dropped."""
    results = {name: Measurement() for name in contenders}
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            _run_once(name, contenders[name], results[name], device, memory=False, record=False)
    if memory:
        for name in names:
            _run_once(name, contenders[name], results[name], device, memory=True, record=False)
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            _run_once(name, contenders[name], results[name], device, memory=False, record=True)
    return results


def _run_once(name, fn, result: Measurement, device, memory: bool, record: bool) -> None:
    if result.error is not None:
        return
    try:
        prepare = getattr(fn, "prepare", None)
        if prepare is not None:
            prepare()
        peak = PeakMemory(device) if memory else None
        if peak is not None:
            peak.__enter__()
        synchronize(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        synchronize(device)
        t1, c1 = time.perf_counter(), time.process_time()
        del out
        if peak is not None:
            peak.__exit__(None, None, None)
    except (RuntimeError, MemoryError) as e:  # out of memory and friends: report, go on
        result.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        gc.collect()
        return
    if record:
        result.wall_s.append(t1 - t0)
        result.cpu_s.append(c1 - c0)
    if peak is not None:
        result.peak_mib.append(peak.mib)


def paired_ratio(a: Measurement, b: Measurement) -> float:
    """Median over rounds of ``time(a) / time(b)`` (> 1: b is faster)."""
    pairs = [x / y for x, y in zip(a.wall_s, b.wall_s)]
    return statistics.median(pairs) if pairs else float("nan")


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = {}
        for line in lscpu.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
        info["cpu"] = fields.get("Model name", platform.processor())
        info["cpus"] = fields.get("CPU(s)")
        flags = fields.get("Flags", "").split()
        info["cpu_flags_simd"] = " ".join(f for f in flags if f.startswith(("avx", "amx", "fma")))
    except (OSError, subprocess.SubprocessError):
        info["cpu"] = platform.processor()
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info
