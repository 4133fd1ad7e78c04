"""PNG plots of simulated runs (matplotlib, headless).

- allocation against entitlement over time, one panel per consumer (the busiest
  ones), one line pair per scheduler;
- the CDF of wait times, one curve per scheduler.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt

from schedulerd.sim.engine import Result

MAX_PANELS = 8


def allocation_plot(results: Sequence[Result], path: Path, hours: bool = True) -> Path:
    """Per consumer, GPUs allocated (solid) against entitled (dashed), averaged per
    time bin. Consumers are ranked by their entitlement-time in the first run."""
    first = results[0].recorder
    consumers = first.consumers
    series = first.series
    totals = [sum(row[i] for row in series.entitlement) for i in range(len(consumers))]
    ranked = sorted(range(len(consumers)), key=lambda i: -totals[i])[:MAX_PANELS]
    unit = 3600 if hours else 86400
    fig, axes = plt.subplots(
        len(ranked), 1, figsize=(11, 1.9 * len(ranked) + 1), sharex=True, squeeze=False
    )
    for ax, i in zip(axes[:, 0], ranked, strict=True):
        for k, result in enumerate(results):
            s = result.recorder.series
            xs = [(b + 0.5) * s.bin_s / unit for b in range(len(s.allocation))]
            # schedulerd (first) drawn thickest; baselines thinner, so both show.
            ax.plot(
                xs,
                [row[i] / s.bin_s for row in s.allocation],
                color=f"C{k}",
                lw=1.6 if k == 0 else 0.9,
                alpha=1.0 if k == 0 else 0.8,
                label=f"{result.scheduler}: allocated",
            )
            if k == 0:
                ax.plot(
                    xs,
                    [row[i] / s.bin_s for row in s.entitlement],
                    color="black",
                    lw=0.9,
                    ls="--",
                    zorder=5,
                    label="entitlement (schedulerd's rule)",
                )
        hidden = hidden_curves(
            [r.scheduler for r in results],
            [[row[i] for row in r.recorder.series.allocation] for r in results],
            scale=max(1.0, max(row[i] for row in series.entitlement)),
        )
        if hidden:
            ax.text(
                0.995,
                0.96,
                "; ".join(f"{a} allocated hidden under {b}'s (the same here)" for a, b in hidden),
                transform=ax.transAxes,
                ha="right",
                va="top",
                fontsize=7,
                color="dimgray",
            )
        ax.set_ylabel(f"{consumers[i]}\nGPUs", fontsize=8)
        ax.tick_params(labelsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        fontsize=8,
        loc="upper center",
        ncol=len(results) + 1,
        bbox_to_anchor=(0.5, 0.97),
    )
    axes[-1, 0].set_xlabel("hours" if hours else "days")
    fig.suptitle(f"Allocation against entitlement: {results[0].workload}", fontsize=10, y=0.995)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def hidden_curves(
    names: Sequence[str], curves: Sequence[Sequence[float]], scale: float = 1.0
) -> list[tuple[str, str]]:
    """(hidden, over) for each curve drawn after one it (nearly) equals: at every point
    within 1% of `scale`, so that it cannot be told apart on the plot. Each hidden
    curve is named once, with the first curve it equals."""
    out = []
    for k in range(1, len(curves)):
        for j in range(k):
            a, b = curves[k], curves[j]
            same = len(a) == len(b) > 0
            if same and all(abs(x - y) <= 0.01 * scale for x, y in zip(a, b, strict=True)):
                out.append((names[k], names[j]))
                break
    return out


def _cdf_points(result: Result, points: int = 200) -> list[float]:
    """The wait at evenly spaced fractions of the jobs (to compare two CDFs)."""
    waits = sorted(
        max(o.first_start - o.spec.submit_s, 1.0)
        for o in result.outcomes
        if o.first_start is not None
    )
    if not waits:
        return []
    return [math.log10(waits[min(len(waits) - 1, n * len(waits) // points)]) for n in range(points)]


def wait_cdf_plot(results: Sequence[Result], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    # A curve equal to one drawn before it hides under it: its label says so.
    hidden = dict(hidden_curves([r.scheduler for r in results], [_cdf_points(r) for r in results]))
    for k, result in enumerate(results):
        waits = sorted(
            max(o.first_start - o.spec.submit_s, 1.0)
            for o in result.outcomes
            if o.first_start is not None
        )
        if not waits:
            continue
        ys = [(n + 1) / len(waits) for n in range(len(waits))]
        label = result.scheduler
        if result.scheduler in hidden:
            label += f" (hidden under {hidden[result.scheduler]}: the same waits)"
        ax.plot(waits, ys, color=f"C{k}", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("wait until first start, seconds (log; under 1 s shown as 1 s)")
    ax.set_ylabel("fraction of jobs")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"CDF of wait: {results[0].workload}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
