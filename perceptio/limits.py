"""The sizes perceptio refuses to allocate, and how to raise them: each limit is one
environment variable, read when it is checked (so it can be set for one run).

* ``PERCEPTIO_MAX_MODEL_GB`` (default 4): parameters and buffers of a model, counted
  on the ``meta`` device before anything is allocated (``Perceiver(config, max_gb=...)``
  overrides it for one model). The largest published model takes 0.80 GB.
* ``PERCEPTIO_MAX_LAYERS`` (default 1024): attention layers with their own weights
  (a model of 10^6 layers would take minutes just to build on the meta device).
* ``PERCEPTIO_MAX_ATTENTION_GB`` (default 2): attention maps recorded by
  ``return_attention=True`` / ``collect_attention`` (each map, and all of them together).
* ``PERCEPTIO_MAX_FEATURES_GB`` (default 4): Fourier position features computed at run
  time (an output grid of ``index_dims=[100000, 100000]``, or ``num_bands=10**6``), before
  they are computed; ``decode_chunked`` or ``points`` decode a large grid in bounded pieces.

A limit set to ``inf`` is off. Every refusal names what would be allocated, its size,
the limit, and the variable that raises it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Limit:
    env: str
    default: float
    unit: str  # "GB" (10^9 bytes) or "" (a count)

    def value(self) -> float:
        """The limit in force (bytes for a GB limit), from the environment or the default."""
        text = os.environ.get(self.env)
        if text is None or not text.strip():
            number = self.default
        else:
            try:
                number = float(text)
            except ValueError:
                raise ValueError(f"{self.env}={text!r}: expected a number (or inf for no limit)") from None
            if math.isnan(number) or number <= 0:
                raise ValueError(f"{self.env}={text!r}: expected a positive number (or inf for no limit)")
        return number * 1e9 if self.unit == "GB" else number

    def describe(self, value: float | None = None) -> str:
        """``"the limit of 4 GB (PERCEPTIO_MAX_MODEL_GB)"``."""
        value = self.value() if value is None else value
        shown = format_bytes(value) if self.unit == "GB" else f"{value:,.0f}"
        return f"the limit of {shown} ({self.env})"


MODEL_SIZE = Limit("PERCEPTIO_MAX_MODEL_GB", 4.0, "GB")
LAYERS = Limit("PERCEPTIO_MAX_LAYERS", 1024, "")
ATTENTION_SIZE = Limit("PERCEPTIO_MAX_ATTENTION_GB", 2.0, "GB")
FEATURES_SIZE = Limit("PERCEPTIO_MAX_FEATURES_GB", 4.0, "GB")


def format_bytes(n: float) -> str:
    """``307_200_000_000`` -> ``"307.2 GB"`` (decimal units, as disks and the limits use)."""
    if math.isinf(n):
        return "no limit"
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}" if n / scale < 100 else f"{n / scale:,.0f} {unit}"
    return f"{n:.0f} B"
