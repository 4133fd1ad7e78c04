"""PNG plots of an experiment (`schedctl hpo plot`): the objective of each trial
with the best-so-far line, and each trial's intermediate values. matplotlib with
the Agg backend: files only, no display needed."""

from __future__ import annotations

from pathlib import Path

from schedulerd.api.v1 import experiments_pb2 as pb

_COLORS = {
    pb.TRIAL_COMPLETE: "tab:blue",
    pb.TRIAL_PRUNED: "tab:orange",
    pb.TRIAL_FAILED: "tab:red",
    pb.TRIAL_STOPPED: "tab:gray",
    pb.TRIAL_RUNNING: "tab:green",
    pb.TRIAL_WAITING: "tab:gray",
}


def write_plots(exp: pb.Experiment, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    metric = exp.spec.metric or "objective"
    maximize = exp.spec.direction == pb.DIRECTION_MAXIMIZE
    title = f"experiment {exp.id} {exp.spec.name}".strip()

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for state, color in _COLORS.items():
        points = [
            (t.number, t.value) for t in exp.trials if t.state == state and t.HasField("value")
        ]
        if points:
            label = pb.TrialState.Name(state).removeprefix("TRIAL_").lower()
            xs, ys = [p[0] for p in points], [p[1] for p in points]
            ax.scatter(xs, ys, color=color, label=label, s=24)
    best_x, best_y, best = [], [], None
    for t in exp.trials:
        better = best is None or (t.value > best if maximize else t.value < best)
        if t.state == pb.TRIAL_COMPLETE and t.HasField("value") and better:
            best = t.value
        if best is not None:
            best_x.append(t.number)
            best_y.append(best)
    if best_x:
        ax.step(best_x, best_y, where="post", color="black", label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title=f"{title}: {metric} per trial")
    ax.legend()
    objective = out / f"experiment-{exp.id}-objective.png"
    fig.savefig(objective, dpi=100, bbox_inches="tight")
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for t in exp.trials:
        if t.intermediate:
            steps = [v.step for v in t.intermediate]
            values = [v.value for v in t.intermediate]
            ax.plot(steps, values, color=_COLORS.get(t.state, "tab:gray"), alpha=0.7, lw=1)
    ax.set(xlabel="step", ylabel=metric, title=f"{title}: intermediate {metric} per trial")
    note = "blue: complete, orange: pruned"
    ax.text(0.99, 0.99, note, transform=ax.transAxes, ha="right", va="top", fontsize=8)
    intermediate = out / f"experiment-{exp.id}-intermediate.png"
    fig.savefig(intermediate, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return [objective, intermediate]
