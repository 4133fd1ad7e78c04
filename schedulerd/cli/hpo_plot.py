"""PNG plots of an experiment (`schedctl hpo plot`): the objective of each trial
with the best-so-far line, each trial's intermediate values, and each parameter
against the objective. matplotlib with the Agg backend: files only, no display
needed.

A pruned trial has no objective: its value is the last intermediate one it
reported, often early and worse. It is drawn apart (hollow markers, its own
label) and never counts towards the best so far."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from schedulerd.api.v1 import experiments_pb2 as pb

_COLORS: dict[int, str] = {
    pb.TRIAL_COMPLETE: "tab:blue",
    pb.TRIAL_PRUNED: "tab:orange",
    pb.TRIAL_FAILED: "tab:red",
    pb.TRIAL_STOPPED: "tab:gray",
    pb.TRIAL_RUNNING: "tab:green",
    pb.TRIAL_WAITING: "tab:gray",
}
_LABELS: dict[int, str] = {
    pb.TRIAL_COMPLETE: "complete: objective",
    pb.TRIAL_PRUNED: "pruned: last value reported (not an objective)",
}
MAX_PARAM_PANELS = 6


def _label(state: int) -> str:
    name: str = pb.TrialState.Name(state)
    return _LABELS.get(state, name.removeprefix("TRIAL_").lower())


def _scatter(ax: Any, state: int, xs: list[Any], ys: list[float]) -> None:
    """Completed objectives as filled dots; every other state hollow, apart from them."""
    color = _COLORS.get(state, "tab:gray")
    if state == pb.TRIAL_COMPLETE:
        ax.scatter(xs, ys, color=color, label=_label(state), s=26, zorder=3)
    else:
        marker = "v" if state == pb.TRIAL_PRUNED else "o"
        ax.scatter(
            xs, ys, facecolors="none", edgecolors=color, marker=marker, label=_label(state), s=30
        )


def _log_scale(param: pb.Param) -> bool:
    kind = param.WhichOneof("kind")
    if kind == "float_range":
        return param.float_range.log
    return kind == "int_range" and param.int_range.log


def param_value(v: pb.ParamValue) -> float | int | str | None:
    kind = v.WhichOneof("kind")
    if kind is None:
        return None
    got = getattr(v, kind)
    if kind in ("string_value", "bool_value"):
        return str(got)
    return int(got) if kind == "int_value" else float(got)


def write_plots(exp: pb.Experiment, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out.mkdir(parents=True, exist_ok=True)
    metric = exp.spec.metric or "objective"
    maximize = exp.spec.direction == pb.DIRECTION_MAXIMIZE
    title = f"experiment {exp.id} {exp.spec.name}".strip()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for state in _COLORS:
        points = [
            (t.number, t.value) for t in exp.trials if t.state == state and t.HasField("value")
        ]
        if points:
            _scatter(ax, state, [p[0] for p in points], [p[1] for p in points])
    best_x, best_y, best = [], [], None
    for t in exp.trials:
        better = best is None or (t.value > best if maximize else t.value < best)
        if t.state == pb.TRIAL_COMPLETE and t.HasField("value") and better:
            best = t.value
        if best is not None:
            best_x.append(t.number)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="black", label="best so far (complete)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are numbered: 0, 1, 2
    ax.set(xlabel="trial", ylabel=metric, title=f"{title}: {metric} per trial")
    ax.legend(fontsize=8)
    objective = out / f"experiment-{exp.id}-objective.png"
    fig.savefig(objective, dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t in exp.trials:
        if t.intermediate:
            steps = [v.step for v in t.intermediate]
            values = [v.value for v in t.intermediate]
            ls = "--" if t.state == pb.TRIAL_PRUNED else "-"
            color = _COLORS.get(t.state, "tab:gray")
            ax.plot(steps, values, color=color, ls=ls, alpha=0.7, lw=1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel=metric, title=f"{title}: intermediate {metric} per trial")
    note = "blue solid: complete, orange dashed: pruned"
    ax.text(0.99, 0.99, note, transform=ax.transAxes, ha="right", va="top", fontsize=8)
    intermediate = out / f"experiment-{exp.id}-intermediate.png"
    fig.savefig(intermediate, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [objective, intermediate, _params_plot(exp, out, metric, title)]


def _params_plot(exp: pb.Experiment, out: Path, metric: str, title: str) -> Path:
    """One panel per parameter (the first MAX_PARAM_PANELS): its value against the
    objective, completed trials filled, pruned ones hollow; a log axis for a
    log-scale parameter, categories in the order the file gives them."""
    import matplotlib.pyplot as plt

    params = list(exp.spec.params)[:MAX_PARAM_PANELS] or [pb.Param(name="(no parameters)")]
    cols = min(3, len(params))
    rows = math.ceil(len(params) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False, sharey=True
    )
    for ax, param in zip(axes.flat, params, strict=False):
        kind = param.WhichOneof("kind")
        categories = (
            [param_value(c) for c in param.categorical.choices] if kind == "categorical" else []
        )
        for state in (pb.TRIAL_COMPLETE, pb.TRIAL_PRUNED):
            xs: list[Any] = []
            ys: list[float] = []
            for t in exp.trials:
                if t.state != state or not t.HasField("value") or param.name not in t.params:
                    continue
                x = param_value(t.params[param.name])
                if x is None:
                    continue
                xs.append(categories.index(x) if x in categories else x)
                ys.append(t.value)
            if xs:
                _scatter(ax, state, xs, ys)
        if categories:
            ax.set_xticks(range(len(categories)), [str(c) for c in categories])
        elif _log_scale(param):
            ax.set_xscale("log")
        ax.set_xlabel(param.name, fontsize=9)
        ax.tick_params(labelsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel(metric)
    for ax in list(axes.flat)[len(params) :]:
        ax.set_visible(False)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=2)
    fig.suptitle(f"{title}: {metric} against each parameter", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.97))
    path = out / f"experiment-{exp.id}-params.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
