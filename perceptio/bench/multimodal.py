"""(3) Reconstruct a whole video + audio + label with the multimodal autoencoder.

The reference colab (and the ``transformers`` docs) reconstruct a 16-frame 224x224 clip
in ``nchunks = 128`` calls of the whole model, each decoding 1/128 of the image pixels
and audio patches (``subsampled_output_points``): every call encodes the same inputs
again. perceptio encodes once and decodes the chunks from the same latents
(``Perceiver.encode`` + ``Perceiver.decode(points=chunk)``), each chunk postprocessed
as it comes, so the peak memory is set by the chunk, not by the 804,737 outputs.

The per-chunk re-encoding contenders are timed on ``measured_chunks`` evenly spaced
chunks (every chunk has the same number of queries, so the cost is the same) and
their total is that median x ``nchunks``; the encode-once contender runs in full.
Outputs of the measured chunks are checked against ``transformers`` first.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from .harness import PeakMemory, synchronize
from .models import MULTIMODAL, max_rel_diff, pair


def _inputs(sizes: dict[str, Any], g: torch.Generator) -> dict[str, torch.Tensor]:
    frames, side = sizes["num_frames"], sizes["image_size"]
    return {
        "image": torch.randn(1, frames, 3, side, side, generator=g),
        "audio": torch.randn(1, frames * sizes["audio_samples_per_frame"], 1, generator=g),
        "label": torch.zeros(1, sizes["num_labels"]),
    }


def chunk_points(sizes: dict[str, Any], nchunks: int, index: int) -> dict[str, torch.Tensor]:
    """The colab's chunk ``index`` of ``nchunks``: flat image pixels and audio patches."""
    pixels = sizes["output_shape"][1] * sizes["output_shape"][2] * sizes["output_shape"][3]
    patches = sizes["num_frames"] * sizes["audio_samples_per_frame"] // sizes["samples_per_patch"]
    ci, ca = pixels // nchunks, patches // nchunks
    return {"image": torch.arange(index * ci, (index + 1) * ci), "audio": torch.arange(index * ca, (index + 1) * ca)}


def reconstruct(settings, quick: bool) -> list[dict[str, Any]]:
    sizes = dict(MULTIMODAL)
    nchunks, measured = 128, settings.extra.get("multimodal_measured_chunks", 3)
    if quick:  # 2 frames of 64x64 and 128 latents: the same pipeline, ~1/50 of the work
        sizes.update(num_frames=2, image_size=64, output_shape=[1, 2, 64, 64], num_latents=128)
        nchunks, measured = 16, 2
    hf, ours = pair("PerceiverForMultimodalAutoencoding", sizes)
    device, dtype = settings.device, settings.dtype
    hf.to(device, dtype)
    ours.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    inputs = {k: v.to(device, dtype) for k, v in _inputs(sizes, g).items()}
    perceiver = ours.perceiver
    prepared = ours.prepare_inputs(inputs)
    pixels = sizes["output_shape"][1] * sizes["output_shape"][2] * sizes["output_shape"][3]
    patches = sizes["num_frames"] * sizes["audio_samples_per_frame"] // sizes["samples_per_patch"]
    total_points = pixels + patches + 1

    def hf_chunk(i):
        return hf(inputs=inputs, subsampled_output_points={k: v.to(device) for k, v in chunk_points(sizes, nchunks, i).items()}).logits

    def ours_chunk(i):
        return ours(inputs=inputs, subsampled_output_points={k: v.to(device) for k, v in chunk_points(sizes, nchunks, i).items()}).logits

    def ours_encode_once():
        latents, context = perceiver.encode(prepared)
        parts = [perceiver.decode(latents, context, points={k: v.to(device) for k, v in chunk_points(sizes, nchunks, i).items()})
                 for i in range(nchunks)]
        return {m: torch.cat([p[m] for p in parts], dim=1) if m != "label" else parts[0][m] for m in parts[0]}

    rows: list[dict[str, Any]] = []
    spaced = [round(i * (nchunks - 1) / max(measured - 1, 1)) for i in range(measured)]
    with torch.no_grad():
        if settings.timing:
            timing = _timing(hf_chunk, ours_chunk, ours_encode_once, perceiver, prepared, sizes, nchunks, spaced,
                             device, settings.tolerance)
        if settings.memory:  # peaks: one re-encoding call each, and encode once + the measured chunks
            hf_chunk(0)  # warm-up
            ours_chunk(0)
            with PeakMemory(device) as hf_peak:
                hf_chunk(0)
            with PeakMemory(device) as ours_peak:
                ours_chunk(0)
            with PeakMemory(device) as once_peak:
                latents, context = perceiver.encode(prepared)
                parts = [perceiver.decode(latents, context, points=chunk_points(sizes, nchunks, i)) for i in spaced]
                torch.cat([p["image"] for p in parts], dim=1)
                del latents, context, parts
            rows += _memory_vs_chunk(perceiver, prepared, sizes, device, quick)
    nan = float("nan")
    peaks = [p.mib for p in (hf_peak, ours_peak, once_peak)] if settings.memory else [nan] * 3
    hf_times, ours_times, once, worst = timing if settings.timing else ([nan], [nan], nan, {})
    case = (f"{sizes['num_frames']}x{sizes['image_size']}x{sizes['image_size']} video + audio + label: "
            f"{total_points:,} outputs, {nchunks} chunks")
    hf_total = statistics.median(hf_times) * nchunks
    common = dict(suite="multimodal", case=case, mode="forward", batch=1)
    rows.append(dict(common, contender="transformers, re-encode per chunk (colab)", median_s=hf_total,
                     peak_mib=peaks[0], rounds=len(hf_times), max_rel_diff=0.0, speedup_vs_transformers=1.0,
                     note=f"median of {len(hf_times)} measured chunks x {nchunks}"))
    rows.append(dict(common, contender="perceptio, re-encode per chunk", median_s=statistics.median(ours_times) * nchunks,
                     peak_mib=peaks[1], rounds=len(ours_times),
                     max_rel_diff=worst.get("perceptio, re-encode per chunk"),
                     speedup_vs_transformers=hf_total / (statistics.median(ours_times) * nchunks),
                     note=f"median of {len(ours_times)} measured chunks x {nchunks}"))
    rows.append(dict(common, contender="perceptio, encode once + chunked decode", median_s=once,
                     peak_mib=peaks[2], rounds=1,
                     max_rel_diff=worst.get("perceptio, encode once + chunked decode"),
                     speedup_vs_transformers=hf_total / once,
                     speedup_vs_reencode_perceptio=statistics.median(ours_times) * nchunks / once,
                     note=f"time: whole reconstruction, all chunks; peak: encode + {len(spaced)} chunks"))
    return rows


def _timing(hf_chunk, ours_chunk, ours_encode_once, perceiver, prepared, sizes, nchunks, spaced, device, tolerance):
    """The whole encode-once reconstruction (after a one-chunk warm-up), timed once; then
    the measured chunks of the re-encoding contenders, interleaved, and every contender's
    outputs on them checked against transformers."""
    latents, context = perceiver.encode(prepared)
    perceiver.decode(latents, context, points=chunk_points(sizes, nchunks, 0))
    del latents, context
    synchronize(device)
    t0 = time.perf_counter()
    full = ours_encode_once()
    synchronize(device)
    once = time.perf_counter() - t0
    worst = {"perceptio, re-encode per chunk": 0.0, "perceptio, encode once + chunked decode": 0.0}
    hf_times, ours_times = [], []
    hf_chunk(spaced[0])  # warm-up
    ours_chunk(spaced[0])
    for i in spaced:
        synchronize(device)
        t0 = time.perf_counter()
        ref = hf_chunk(i)
        synchronize(device)
        t1 = time.perf_counter()
        mine = ours_chunk(i)
        synchronize(device)
        t2 = time.perf_counter()
        hf_times.append(t1 - t0)
        ours_times.append(t2 - t1)
        pts = chunk_points(sizes, nchunks, i)
        ci, ca = len(pts["image"]), len(pts["audio"]) * sizes["samples_per_patch"]
        sliced = {"image": full["image"][:, i * ci:(i + 1) * ci], "audio": full["audio"][:, i * ca:(i + 1) * ca],
                  "label": full["label"]}
        worst["perceptio, re-encode per chunk"] = max(worst["perceptio, re-encode per chunk"], max_rel_diff(mine, ref))
        worst["perceptio, encode once + chunked decode"] = max(
            worst["perceptio, encode once + chunked decode"], max_rel_diff(sliced, ref))
    bad = {k: v for k, v in worst.items() if not v <= tolerance}
    if bad:
        raise AssertionError(f"multimodal: outputs differ from transformers: {bad}")
    return hf_times, ours_times, once, worst


def _memory_vs_chunk(perceiver, prepared, sizes, device, quick: bool) -> list[dict[str, Any]]:
    """Peak memory of decoding one chunk from fixed latents, for growing chunk sizes."""
    rows = []
    with torch.no_grad():
        latents, context = perceiver.encode(prepared)
        for nchunks in ((64, 16, 4) if quick else (512, 128, 32)):
            points = {k: v.to(device) for k, v in chunk_points(sizes, nchunks, 0).items()}
            perceiver.decode(latents, context, points=points)  # warm-up
            with PeakMemory(device) as peak:
                perceiver.decode(latents, context, points=points)
            queries = sum(len(v) for v in points.values()) + 1
            rows.append(dict(suite="multimodal", case="decode one chunk from fixed latents", mode="forward",
                             batch=1, contender="perceptio", chunk_queries=queries, peak_mib=peak.mib,
                             note=f"chunk = 1/{nchunks} of the outputs"))
    return rows
