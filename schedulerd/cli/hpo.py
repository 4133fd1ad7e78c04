"""`schedctl hpo`: hyperparameter searches (docs/hpo.md).

schedctl hpo create FILE          start the experiment a YAML file describes
schedctl hpo list                 experiments, their progress and best value
schedctl hpo show EXP [--watch]   trials, progress bar, best so far
schedctl hpo stop EXP             stop its running trials, start no more
schedctl hpo plot EXP --out DIR   PNGs: objective per trial, intermediate values, params
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schedulerd.api.v1 import experiments_pb2 as pb
from schedulerd.cli import format as fmt
from schedulerd.client import Client


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    h = sub.add_parser("hpo", help="hyperparameter search: create, list, show, stop, plot")
    hsub = h.add_subparsers(dest="hpo_cmd", required=True, metavar="ACTION")
    c = hsub.add_parser("create", help="start an experiment from a YAML file")
    c.add_argument("file", type=Path, help="the experiment file (YAML; docs/hpo.md)")
    c.add_argument(
        "--user",
        default=None,
        help="default: the file's user, else you (another user: cluster admins only)",
    )
    c.add_argument("--json", action="store_true", help="print the experiment as JSON")
    ls = hsub.add_parser("list", help="experiments with their progress and best value")
    ls.add_argument("--consumer", default="", help="only this consumer's subtree")
    ls.add_argument("--json", action="store_true", help="print the experiments as JSON")
    s = hsub.add_parser("show", help="an experiment's trials, progress and best value")
    s.add_argument("experiment", type=int, help="the experiment's id")
    s.add_argument("--watch", action="store_true", help="follow it live until it ends")
    s.add_argument("--json", action="store_true", help="print the experiment as JSON")
    st = hsub.add_parser("stop", help="stop an experiment: its running trials are cancelled")
    st.add_argument("experiment", type=int, help="the experiment's id")
    p = hsub.add_parser(
        "plot", help="PNG plots: objective per trial, intermediate values, each parameter"
    )
    p.add_argument("experiment", type=int, help="the experiment's id")
    p.add_argument("--out", type=Path, required=True, help="folder for the PNG files")


def run(client: Client, args: argparse.Namespace) -> int:
    return int(ACTIONS[args.hpo_cmd](client, args))


def _create(client: Client, args: argparse.Namespace) -> int:
    # Imported here: YAML, the policy reader and Optuna's spaces are no other command's.
    from schedulerd.hpo.codec import spec_to_pb
    from schedulerd.hpo.file import ExperimentFileError, load_experiment_file

    try:
        spec = load_experiment_file(args.file, user=args.user)
    except ExperimentFileError as e:
        print(e, file=sys.stderr)
        return 1
    exp = client.create_experiment(spec_to_pb(spec))
    if args.json:
        print(fmt.as_json(exp))
    else:
        print(
            f"created experiment {exp.id} ({exp.spec.name or 'unnamed'}) on {exp.spec.consumer}: "
            f"{exp.trials_total} trials, at most {exp.spec.max_parallel} at once"
        )
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    exps = client.list_experiments(args.consumer)
    if args.json:
        print(fmt.as_json(exps))
        return 0
    rows = [
        [
            e.id,
            e.spec.name,
            e.spec.consumer,
            state_name(e),
            f"{e.trials_finished}/{e.trials_total}",
            e.trials_running,
            e.trials_waiting,
            _num(e.best.value) if e.HasField("best") else "-",
        ]
        for e in exps
    ]
    headers = ["ID", "NAME", "CONSUMER", "STATE", "DONE", "RUNNING", "WAITING", "BEST"]
    print(fmt.table(headers, rows))
    return 0


def _show(client: Client, args: argparse.Namespace) -> int:
    if not args.watch:
        exp = client.get_experiment(args.experiment)
        print(fmt.as_json(exp) if args.json else experiment_detail(exp))
        return 0
    clear = sys.stdout.isatty()
    for exp in client.watch_experiment(args.experiment):
        if args.json:
            print(fmt.as_json(exp), flush=True)
            continue
        if clear:
            print("\033[H\033[J", end="")
        print(experiment_detail(exp), flush=True)
        if not clear:
            print()
    return 0


def _stop(client: Client, args: argparse.Namespace) -> int:
    exp = client.stop_experiment(args.experiment)
    print(f"experiment {exp.id} {state_name(exp)}: {exp.reason}")
    return 0


def _plot(client: Client, args: argparse.Namespace) -> int:
    from schedulerd.cli.hpo_plot import write_plots  # matplotlib: only when plotting

    exp = client.get_experiment(args.experiment, include_intermediate=True)
    try:
        paths = write_plots(exp, args.out)
    except ImportError:
        print("schedctl hpo plot needs matplotlib: pip install 'schedulerd[hpo]'", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    return 0


ACTIONS = {"create": _create, "list": _list, "show": _show, "stop": _stop, "plot": _plot}


# -- text ---------------------------------------------------------------------


def state_name(exp: pb.Experiment) -> str:
    return str(pb.ExperimentState.Name(exp.state)).removeprefix("EXPERIMENT_")


def trial_state_name(t: pb.Trial) -> str:
    return str(pb.TrialState.Name(t.state)).removeprefix("TRIAL_")


def progress_bar(done: int, total: int, width: int = 30) -> str:
    share = done / total if total else 1.0
    filled = round(share * width)
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total} ({share:.0%})"


def params_text(params: object) -> str:
    items = sorted(params.items())  # type: ignore[attr-defined]
    from schedulerd.hpo.codec import value_from_pb

    return " ".join(f"{k}={_num(value_from_pb(v))}" for k, v in items)


def experiment_detail(exp: pb.Experiment) -> str:
    spec = exp.spec
    direction = pb.Direction.Name(spec.direction).removeprefix("DIRECTION_").lower()
    lines = [
        f"experiment {exp.id} {spec.name} on {spec.consumer}: {state_name(exp)}"
        + (f" ({exp.reason})" if exp.reason else ""),
        f"  {progress_bar(exp.trials_finished, exp.trials_total)}  running {exp.trials_running}"
        f", waiting {exp.trials_waiting}, at most {spec.max_parallel} at once",
        f"  objective: {direction.replace('unspecified', 'minimize')} {spec.metric}",
    ]
    if exp.HasField("best"):
        b = exp.best
        lines.append(f"  best: {_num(b.value)} (trial {b.number}: {params_text(b.params)})")
    else:
        lines.append("  best: none yet")
    rows = [
        [
            t.number,
            trial_state_name(t),
            t.job_id,
            _num(t.value) if t.HasField("value") else "-",
            t.last_step if t.HasField("last_step") else "-",
            _num(t.last_value) if t.HasField("last_value") else "-",
            params_text(t.params),
        ]
        for t in exp.trials
    ]
    headers = ["TRIAL", "STATE", "JOB", "VALUE", "STEP", "LAST", "PARAMS"]
    lines += ["", fmt.table(headers, rows)]
    return "\n".join(lines)


def _num(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
