"""Markdown tables and the input-size sweep plot from benchmark rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _f(v: Any, digits: int = 2, suffix: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}{suffix}"
    return f"{v}{suffix}"


def machine_line(info: dict) -> str:
    return (f"{info.get('cpu')} ({info.get('cpus')} CPUs, {info.get('memory_gib')} GiB), "
            f"{info.get('threads')} torch threads, torch {info.get('torch')}, "
            f"transformers {info.get('transformers', '-')}, {info.get('device')} {info.get('dtype')}"
            + (f", GPU {info['gpu']}" if info.get("gpu") else "")
            + f"; load average at start {info.get('load_average')}")


def markdown(rows: list[dict], info: dict) -> str:
    out = [f"Machine: {machine_line(info)}", ""]
    models = [r for r in rows if r.get("suite") in ("image_fourier", "masked_lm") and "median_s" in r]
    if models:
        out += ["| suite | case | batch | contender | mode | median s | speedup vs transformers | "
                "peak MiB | memory vs transformers |", "|" + "---|" * 9]
        for r in models:
            out.append(f"| {r['suite']} | {r['case']} | {r['batch']} | {r['contender']} | {r['mode']} | "
                       f"{_f(r.get('median_s'))} | {_f(r.get('speedup_vs_transformers'), 2, 'x')} | "
                       f"{_f(r.get('peak_mib'), 0)} | {_f(r.get('memory_vs_transformers'), 2, 'x')} |")
        out.append("")
        kernels = [r for r in models if r.get("sdpa_kernels")]
        if kernels:
            out += ["| SDPA kernels run by perceptio | mode | kernels (calls) |", "|---|---|---|"]
            out += [f"| {r['suite']} {r['case']} batch {r['batch']} | {r['mode']} | {r['sdpa_kernels']} |" for r in kernels]
            out.append("")
        profiled = [r for r in models if r.get("profile")]
        if profiled:
            out += ["Profiles (one run each, `torch.profiler`): the top operators by self CPU time and their "
                    "share of the run", "", "| case | contender | mode | top operators: self ms (share) |", "|---|---|---|---|"]
            out += [f"| {r['suite']} {r['case']} batch {r['batch']} | {r['contender']} | {r['mode']} | "
                    + "; ".join(f"{name.removeprefix('aten::')} {ms:.0f} ({share:.0%})" for name, ms, share in r["profile"])
                    + " |" for r in profiled]
            out.append("")
    mm = [r for r in rows if r.get("suite") == "multimodal"]
    if mm:
        out += ["| multimodal reconstruction | contender | seconds | speedup vs transformers | peak MiB | note |",
                "|---|---|---|---|---|---|"]
        for r in mm:
            if "chunk_queries" in r:
                continue
            out.append(f"| {r['case']} | {r['contender']} | {_f(r.get('median_s'), 1)} | "
                       f"{_f(r.get('speedup_vs_transformers'), 1, 'x')} | {_f(r.get('peak_mib'), 0)} | {r.get('note', '')} |")
        chunks = [r for r in mm if "chunk_queries" in r]
        if chunks:
            out += ["", "| decode one chunk from fixed latents: queries | peak MiB |", "|---|---|"]
            out += [f"| {r['chunk_queries']:,} | {_f(r['peak_mib'], 0)} |" for r in chunks]
        out.append("")
    sweep = [r for r in rows if r.get("suite") == "sweep" and "points" in r]
    if sweep:
        names = list(dict.fromkeys(r["contender"] for r in sweep))
        for mode in ("forward", "forward+backward"):
            out += [f"Input-size sweep, {mode}: seconds / peak MiB", "",
                    "| M | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
            for m in sorted({r["points"] for r in sweep}):
                cells = []
                for n in names:
                    r = next((r for r in sweep if r["points"] == m and r["contender"] == n and r["mode"] == mode), None)
                    if r is None or r.get("rounds", 0) == 0:
                        cells.append("not run" if r is None else "not run (" + r.get("note", "").removeprefix("not run: ") + ")")
                    elif r.get("error"):
                        cells.append(f"failed: {r['error'][:60]}")
                    else:
                        cells.append(f"{_f(r['median_s'], 3)} s / {_f(r['peak_mib'], 0)} MiB")
                out.append(f"| {m:,} | " + " | ".join(cells) + " |")
            out.append("")
        rated = [r for r in sweep if r.get("fraction_of_roof") is not None and r["contender"] == "perceptio"]
        if rated:
            out += ["perceptio's cross-attend sublayer against the matmul roof (FLOPs of the sublayer as written, "
                    "which the folded path does not all compute)", "",
                    "| M | mode | GFLOP (as written) | GFLOP/s | fraction of roof |", "|---|---|---|---|---|"]
            out += [f"| {r['points']:,} | {r['mode']} | {_f(r['gflops'], 1)} | {_f(r['gflop_per_s'], 0)} | "
                    f"{_f(r['fraction_of_roof'], 2)} |" for r in rated]
            out.append("")
    roof = [r for r in rows if r.get("suite") in ("roofline", "training")]
    if roof:
        out += ["| FLOP/s | case | mode | batch | threads | GFLOP/s | fraction of roof (wall / CPU time) |",
                "|---|---|---|---|---|---|---|"]
        for r in roof:
            frac = (f"{_f(r.get('fraction_of_roof'), 2)} / {_f(r.get('fraction_of_roof_cpu_time'), 2)}"
                    if "fraction_of_roof" in r else "-")
            out.append(f"| {r['suite']} | {r['case']} | {r['mode']} | {r.get('batch', '-')} | "
                       f"{r.get('threads', '-')} | {_f(r.get('gflop_per_s'), 1)} | {frac} |")
            if r.get("sdpa_kernels"):
                out.append(f"| | SDPA kernels used | {r['sdpa_kernels']} | | | | |")
        out.append("")
    errors = [r for r in rows if r.get("error") and "points" not in r]
    out += [f"- {r.get('suite')} / {r.get('contender', '')}: {r['error']}" for r in errors]
    return "\n".join(out) + "\n"


def plot_sweep(rows: list[dict], path: Path, info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = [r for r in rows if r.get("suite") == "sweep" and r.get("rounds") and not r.get("error")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"forward": "-", "forward+backward": "--"}
    for name in dict.fromkeys(r["contender"] for r in sweep):
        for mode, style in styles.items():
            pts = sorted((r["points"], r["median_s"], r["peak_mib"]) for r in sweep
                         if r["contender"] == name and r["mode"] == mode
                         and r.get("median_s") is not None and r.get("peak_mib") is not None)
            if not pts:
                continue
            m, t, mem = zip(*pts)
            label = f"{name} ({mode})"
            axes[0].plot(m, t, style, marker="o", label=label)
            axes[1].plot(m, [max(x, 0.1) for x in mem], style, marker="o", label=label)
    for ax, title in zip(axes, ("median time (s)", "peak memory added (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("input points M")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"One attention layer over M points (256 latents): {info.get('cpu')}, "
                 f"{info.get('threads')} threads, torch {info.get('torch')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
