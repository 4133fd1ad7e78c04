"""`schedctl`: the schedulerd command line.

    schedctl submit --consumer /research/vision --gpus 2 -- python train.py
    schedctl submit --array 0-999 --consumer /a -- python task.py  (docs/arrays.md)
    schedctl jobs | show JOB | cancel JOB | logs JOB   (JOB: 123, or 123_7 in an array)
    schedctl consumers | nodes | drain NODE | undrain NODE | node forget NODE
    schedctl policy validate FILE | policy apply FILE [--dry-run [--at TIME]] | policy show
    schedctl hpo create FILE | hpo list | hpo show EXP [--watch] | hpo stop EXP | hpo plot EXP
    schedctl serve create FILE | serve update FILE | serve list | serve show NAME [--watch]
    schedctl serve scale NAME --min N --max N | serve delete NAME | serve logs NAME
    schedctl ca init DIR | ca issue-node --ca DIR NODE | ca issue-server --ca DIR --host H
    schedctl token create --user U --ttl 30d | token list | token revoke ID
    schedctl whoami | audit [--identity U]

The daemon address comes from --daemon or $SCHEDULERD_ADDRESS (default 127.0.0.1:50051).
Credentials (docs/security.md): a token from --token, --token-file, $SCHEDULERD_TOKEN or
$SCHEDULERD_TOKEN_FILE; TLS with the cluster CA's certificate from --ca or $SCHEDULERD_CA.
On the daemon's machine, with neither, you are your Unix user.

`schedctl submit`, `jobs`, `show`, `cancel`, ... are answered through a broker that
keeps the connection open between calls, so that a shell loop of submissions is fast;
SCHEDULERD_BROKER=off or --no-broker goes without (docs/cli-broker.md).
"""

from __future__ import annotations

# Only what every command needs is imported here: the policy reader, the core,
# cryptography and time zones are imported by the commands that use them (a
# `schedctl submit` start is mostly imports: `python -X importtime`).
import argparse
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from schedulerd import __version__
from schedulerd.arrays import ArrayError, compact, parse_indices, parse_job_ref
from schedulerd.auth.certerror import CertError
from schedulerd.cli import audit, ca, fast, hpo, serve, tokens
from schedulerd.cli import format as fmt
from schedulerd.client import (
    DEFAULT_ADDRESS,
    Client,
    ClientError,
    CredentialError,
    read_token_file,
    token_from_env,
)

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from schedulerd.api.v1 import admin_pb2

ACTIVE = ["PENDING", "PREEMPTED", "RUNNING"]
MAX_JOB_ID = 2**63 - 1  # job ids are SQLite integers (schedulerd/bounds.py MAX_ID)


@dataclass(frozen=True)
class Invocation:
    """Where a command was given: its environment, working directory, and the width of
    the terminal its output goes to (None: not a terminal). The in-process CLI's are
    this process's; the broker's are its caller's (schedulerd/cli/broker.py)."""

    env: Mapping[str, str]
    cwd: str
    columns: int | None

    @classmethod
    def here(cls) -> Invocation:
        columns = None
        if sys.stdout.isatty():
            import shutil

            columns = shutil.get_terminal_size().columns
        return cls(os.environ, fast.here(), columns)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="schedctl",
        description="Submit and watch GPU jobs; administer schedulerd.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_global_options(p, top=True)
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    s = sub.add_parser("submit", help="submit a job: schedctl submit --consumer /a -- CMD ...")
    s.add_argument(
        "--consumer",
        default=None,  # $SCHEDULERD_CONSUMER, else "": resolved after parsing
        help="the leaf consumer to run in, e.g. /team/project (default: $SCHEDULERD_CONSUMER, "
        "else the one leaf you may submit to, if there is exactly one)",
    )
    s.add_argument(
        "--gpus", default="1", help="N GPUs, or MIN:MAX for an elastic job (docs/elastic.md)"
    )
    s.add_argument("--name", default="", help="a name for people (shown by jobs and show)")
    s.add_argument(
        "--priority",
        type=int,
        default=0,
        help="order inside its consumer: higher runs first, and may preempt lower ones of "
        "the same consumer (default: 0; negative: after the others)",
    )
    s.add_argument(
        "--time",
        default="",
        metavar="DURATION",
        help="the most it runs (90s, 30m, 2h, 1d); it is stopped then. A job with one may "
        "start early on GPUs held for a larger job that it will not delay (backfill)",
    )
    s.add_argument(
        "--pool",
        default="",
        metavar="POOL",
        help="the pool or GPU type to run on (a100, h100; `schedctl nodes` lists them); "
        "default: any pool",
    )
    s.add_argument("--user", default="", help="default: you; another user: cluster admins")
    s.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an environment variable for the job (repeatable); it starts with a clean one",
    )
    s.add_argument(
        "--workdir",
        default=None,  # the caller's working directory: resolved after parsing
        help="working directory on the node (default: here, as with Slurm's sbatch)",
    )
    s.add_argument(
        "--array",
        default="",
        metavar="INDICES",
        help="a job array: one job per index, as Slurm's --array: 0-999, 0-999:10 (a "
        "step), 1,3,5-7 (a list); at most 10,000. Each has SCHEDULERD_ARRAY_INDEX and "
        "SCHEDULERD_ARRAY_JOB_ID in its environment (docs/arrays.md)",
    )
    s.add_argument("--wait", action="store_true", help="wait for the end; exit with its code")
    s.add_argument("--json", action="store_true", help="print the job as JSON")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its args")

    j = sub.add_parser("jobs", help="list jobs (waiting and running; --all for ended too)")
    j.add_argument("--consumer", default="", help="only this consumer's subtree")
    j.add_argument(
        "--state",
        action="append",
        default=[],
        choices=["pending", "preempted", "running", "succeeded", "failed", "cancelled", "timeout"],
        help="only jobs in this state (repeatable; default: pending, preempted, running)",
    )
    j.add_argument("--user", default="", help="only this user's jobs")
    j.add_argument("--all", action="store_true", help="include ended jobs")
    j.add_argument("--limit", type=int, default=0, help="only the newest N")
    j.add_argument("--json", action="store_true", help="print the jobs as JSON (no cut)")
    j.add_argument(
        "--expand",
        action="store_true",
        help="a line for every waiting element of a job array (default: one line per "
        "array, 123_[4-999], as squeue)",
    )

    sh = sub.add_parser("show", help="one job, with its pending reason and history; or a job array")
    sh.add_argument(
        "job", help="the job's id; an array's id (a summary of it), or ARRAY_INDEX (123_7)"
    )
    sh.add_argument("--json", action="store_true", help="print the job as JSON")

    c = sub.add_parser("cancel", help="cancel jobs")
    c.add_argument(
        "jobs",
        nargs="+",
        metavar="JOB",
        help="the jobs' ids; an array's id cancels the whole array, ARRAY_INDEX (123_7) "
        "one element",
    )

    lg = sub.add_parser("logs", help="a job's output; follows until the job ends")
    lg.add_argument("job", help="the job's id, or ARRAY_INDEX (123_7)")
    lg.add_argument("--no-follow", action="store_true", help="print what is there and stop")

    cs = sub.add_parser("consumers", help="the consumer tree: owned, share, entitlement, ...")
    cs.add_argument("--json", action="store_true", help="print the consumers as JSON")

    n = sub.add_parser("nodes", help="nodes, their GPUs and the jobs on them")
    n.add_argument("--json", action="store_true", help="print the nodes as JSON")
    d = sub.add_parser("drain", help="no new jobs on a node; running ones finish")
    d.add_argument("node", help="the node's name, as `schedctl nodes` shows it")
    d.add_argument("--reason", default="", help="why, for the others (shown with the node)")
    u = sub.add_parser("undrain", help="let a drained node take jobs again")
    u.add_argument("node", help="the node's name")
    nd = sub.add_parser("node", help="node administration: node forget NODE")
    ndsub = nd.add_subparsers(dest="node_cmd", required=True, metavar="ACTION")
    fg = ndsub.add_parser(
        "forget",
        help="declare a node powered off: requeue its jobs, free its fenced GPUs, drop it",
        description="Say this only when the node is powered off (or its agent and every "
        "job process on it are known dead): the scheduler then gives its GPUs' jobs to "
        "others. Refused while its agent is connected.",
    )
    fg.add_argument("node", help="the node's name")

    pol = sub.add_parser("policy", help="validate, apply or show the policy")
    psub = pol.add_subparsers(dest="policy_cmd", required=True, metavar="ACTION")
    v = psub.add_parser("validate", help="check a policy file locally (no daemon needed)")
    v.add_argument("file", type=Path, help="the policy file (YAML; docs/policy.md)")
    a = psub.add_parser("apply", help="apply a policy file (--dry-run: show entitlements only)")
    a.add_argument("file", type=Path, help="the policy file (YAML; docs/policy.md)")
    a.add_argument(
        "--dry-run",
        action="store_true",
        help="apply nothing: show the entitlements it would give now, and under full demand",
    )
    a.add_argument(
        "--at",
        metavar="TIME",
        help="with --dry-run: the plan as at TIME, with the time windows in force then: "
        "ISO 8601 (2026-12-01T10:00, in the policy's time zone, or with an offset: "
        "2026-12-01T10:00+01:00) or 'now'",
    )
    a.add_argument("--json", action="store_true", help="print the answer as JSON")
    psub.add_parser("show", help="print the policy in force")
    hpo.add_parser(sub)
    serve.add_parser(sub)
    ca.add_parser(sub)
    tokens.add_parser(sub)
    audit.add_parsers(sub)
    _globals_everywhere(p)
    return p


def _global_options() -> list[tuple[str, dict[str, Any]]]:
    return [
        (
            "--daemon",
            {
                "default": None,  # $SCHEDULERD_ADDRESS, else DEFAULT_ADDRESS: after parsing
                "metavar": "HOST:PORT",
                "help": "the daemon's address, or unix:PATH "
                f"(default: $SCHEDULERD_ADDRESS, else {DEFAULT_ADDRESS})",
            },
        ),
        (
            "--token",
            {"help": "a bearer token; prefer --token-file: a command line is seen by all users"},
        ),
        (
            "--token-file",
            {"type": Path, "metavar": "FILE", "help": "a file (mode 0600) holding the token"},
        ),
        (
            "--ca",
            {
                "type": Path,
                "metavar": "FILE",
                "help": "the cluster CA's certificate: talk TLS (default: $SCHEDULERD_CA)",
            },
        ),
        (
            "--no-broker",
            {
                "action": "store_true",
                "help": "no broker (docs/cli-broker.md): this process connects itself "
                "(as SCHEDULERD_BROKER=off)",
            },
        ),
    ]


def _add_global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """The connection options, on the top parser and (`top` False) on every command's,
    so that they may come anywhere, as kubectl's global flags: `schedctl jobs --daemon
    H:P`. A command's own option of the same name wins there (`ca issue-node --ca DIR`)."""
    group = parser.add_argument_group("connection (anywhere on the line)")
    for flag, kwargs in _global_options():
        if flag in parser._option_string_actions:
            continue
        if not top:  # given after the command, it overrides; absent, the top's value holds
            kwargs = {**kwargs, "default": argparse.SUPPRESS}
        elif flag == "--daemon":
            kwargs = {**kwargs, "default": None}
        group.add_argument(flag, **kwargs)


def _globals_everywhere(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _add_global_options(child, top=False)
                _globals_everywhere(child)


def _gpus(text: str) -> tuple[int, int]:
    """`N` (rigid) or `MIN:MAX` (elastic)."""
    low, sep, high = text.partition(":")
    if not low.isdigit() or (sep and not high.isdigit()):
        raise SystemExit(
            f"schedctl: --gpus {text!r}: give N, or MIN:MAX for an elastic job (e.g. 1:4)"
        )
    gmin = int(low)
    gmax = int(high) if sep else gmin
    if gmin < 1 or gmax < gmin:
        raise SystemExit(f"schedctl: --gpus {text!r}: need 1 <= MIN <= MAX")
    return gmin, gmax


def _env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"schedctl: --env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def resolve(args: argparse.Namespace, inv: Invocation) -> argparse.Namespace:
    """Fill in what depends on where the command was given (the defaults from the
    environment, the working directory, the terminal's width), so that one parser
    serves every caller of the broker."""
    if args.daemon is None:
        args.daemon = inv.env.get("SCHEDULERD_ADDRESS", DEFAULT_ADDRESS)
    if getattr(args, "consumer", "") is None:
        args.consumer = inv.env.get("SCHEDULERD_CONSUMER", "")
    if args.cmd == "submit" and args.workdir is None:
        args.workdir = _cwd(inv)
    args.width = inv.columns if inv.columns is not None else _columns(inv.env)
    return args


def _columns(env: Mapping[str, str]) -> int | None:
    """Not on a terminal: $COLUMNS if set, else None (no cut: a pipe or a file gets
    every word)."""
    try:
        return int(env["COLUMNS"]) or None
    except (KeyError, ValueError):
        return None


def run(
    args: argparse.Namespace,
    inv: Invocation | None = None,
    client_for: Callable[[Connection], Client] | None = None,
) -> int:
    """`client_for`: the broker's open connections (kept open); None: a new one."""
    inv = Invocation.here() if inv is None else inv
    if args.cmd == "policy" and args.policy_cmd == "validate":
        return _validate(args.file)
    if args.cmd == "ca":
        return ca.run(args)
    connection = connect(args, inv)
    if client_for is not None:
        return COMMANDS[args.cmd](client_for(connection), args)
    with connection.client() as client:
        return COMMANDS[args.cmd](client, args)


@dataclass(frozen=True)
class Connection:
    """What a Client is made of: the daemon's address and the credentials the caller's
    options and environment name, with paths made absolute from its working directory.
    The broker keeps one open connection per distinct `key`."""

    address: str
    token: str | None  # None: none named (Client then asks the agent to vouch, or none)
    ca: Path | None
    env: Mapping[str, str]

    @property
    def key(self) -> tuple[object, ...]:
        ca_stat: tuple[int, int] | None = None
        if self.ca is not None:
            try:
                st = self.ca.stat()
                ca_stat = (st.st_mtime_ns, st.st_size)  # a CA file replaced: a new channel
            except OSError:
                ca_stat = None
        return (self.address, self.token, self.ca, ca_stat, self.env.get("SCHEDULERD_AUTH_SOCKET"))

    def client(self) -> Client:
        return Client(self.address, token=self.token, ca=self.ca, env=self.env)


def connect(args: argparse.Namespace, inv: Invocation) -> Connection:
    """The options' credentials, else the environment's; a token file is read now (a
    token file that changes is read again by the next command)."""
    env = {k: v for k, v in inv.env.items() if k.startswith("SCHEDULERD_")}
    for key in ("SCHEDULERD_TOKEN_FILE", "SCHEDULERD_CA"):
        if env.get(key):
            env[key] = str(_here(inv, Path(env[key])))
    token = args.token
    if token is None and args.token_file is not None:
        token = read_token_file(_here(inv, args.token_file))
    if token is None:
        token = token_from_env(env)
    ca = _here(inv, args.ca) if args.ca is not None else None
    if ca is None and env.get("SCHEDULERD_CA"):
        ca = Path(env["SCHEDULERD_CA"])
    return Connection(args.daemon, token, ca, env)


def _here(inv: Invocation, path: Path) -> Path:
    return path if path.is_absolute() else Path(_cwd(inv)) / path


def _cwd(inv: Invocation) -> str:
    """The caller's working directory, which a submission or a relative path needs;
    "" (or not a path) when it was removed under the caller's shell: that is said,
    rather than a job sent to run in a directory that is not there, or a path taken
    from the broker's own directory."""
    if not os.path.isabs(inv.cwd):
        raise SystemExit(
            "schedctl: the working directory is gone (removed?): cd to one, or give "
            "--workdir and absolute paths"
        )
    return inv.cwd


def _validate(path: Path) -> int:
    from schedulerd.policy import PolicyError, load_policy

    try:
        policy = load_policy(path.read_text(), str(path))
    except OSError as e:
        print(f"schedctl: cannot read {path}: {e.strerror}", file=sys.stderr)
        return 2
    except PolicyError as e:
        print(e, file=sys.stderr)
        return 1
    leaves = policy.leaves()
    print(f"{path}: valid, {len(policy.consumers) - 1} consumers, {len(leaves)} leaves")
    return 0


def _submit(client: Client, args: argparse.Namespace) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("schedctl submit: give the command after --, e.g. -- python train.py")
    _all_text(args)
    gmin, gmax = _gpus(args.gpus)
    count = 0
    if args.array:
        try:
            count = len(parse_indices(args.array))
        except ArrayError as e:
            raise SystemExit(f"schedctl submit: --array {args.array!r}: {e}") from None
        if args.wait:
            raise SystemExit("schedctl submit: --wait waits for one job, not for an array")
    job = client.submit(
        args.consumer or _only_leaf(client),
        command,
        gmin,
        gpus_max=gmax,
        user=args.user,
        name=args.name,
        env=_env(args.env),
        working_dir=args.workdir,
        priority=args.priority,
        time_limit_s=_time_limit(args.time),
        pool=args.pool,
        array=args.array,
    )
    if args.json:
        print(fmt.as_json(job))
    elif args.array:
        indices = compact(parse_indices(args.array))
        print(
            f"submitted job array {job.id} ({count} jobs, {job.id}_[{indices}]) "
            f"to {job.spec.consumer}"
        )
    else:
        print(f"submitted job {job.id} to {job.spec.consumer}")
    if not args.wait:
        return 0
    for update in client.watch(ids=[job.id]):
        if update.state.ended:
            print(fmt.printable(f"job {job.id} {update.state}: {update.reason}"), file=sys.stderr)
            if not update.HasField("exit_code"):
                return 1
            code: int = update.exit_code
            return 128 - code if code < 0 else code  # killed by a signal: as a shell says
    return 1


def _all_text(args: argparse.Namespace) -> None:
    """Every word of a submission is UTF-8 text: the API's strings can hold nothing
    else (an argument of other bytes, which a shell passes, would fail in protobuf)."""
    for name, value in sorted(vars(args).items()):
        for word in value if isinstance(value, list) else [value]:
            if not isinstance(word, str):
                continue
            try:
                word.encode("utf-8")
            except UnicodeEncodeError:
                what = "the command" if name == "command" else f"--{name.replace('_', '-')}"
                shown = repr(os.fsencode(word))[:80]
                raise SystemExit(
                    f"schedctl submit: {what}: {shown} is not UTF-8 text (a job's command, "
                    "environment, name and directory are text)"
                ) from None


def _only_leaf(client: Client) -> str:
    """The consumer of a submission without --consumer: the one leaf the caller may
    submit to (WhoAmI says which), else a word on how to choose."""
    leaves: list[str] = list(client.whoami().submit_to)
    if len(leaves) == 1:
        return leaves[0]
    if not leaves:
        raise SystemExit("schedctl submit: you may submit to no consumer (schedctl whoami)")
    shown = ", ".join(leaves[:10]) + (f" and {len(leaves) - 10} more" if len(leaves) > 10 else "")
    raise SystemExit(
        f"schedctl submit: give --consumer (or set SCHEDULERD_CONSUMER): you may submit to "
        f"{len(leaves)} consumers: {shown}"
    )


def _time_limit(text: str) -> float:
    if not text:
        return 0
    from schedulerd.policy.fields import parse_duration

    seconds = parse_duration(text)
    if seconds is None or seconds < 1:
        raise SystemExit(
            f"schedctl submit: --time {text!r}: give a duration of at least 1s, like 90s, 30m, 2h"
        )
    return seconds


def _jobs(client: Client, args: argparse.Namespace) -> int:
    states = [s.upper() for s in args.state] or ([] if args.all else ACTIVE)
    jobs = client.list_jobs(args.consumer, states, args.user, args.limit)
    if args.json:
        print(fmt.as_json(jobs))
    else:
        print(fmt.jobs_table(jobs, args.width, expand=args.expand))
    return 0


def _ref(text: str, command: str) -> tuple[int, int | None]:
    try:
        job_id, index = parse_job_ref(text)
    except ArrayError as e:
        raise SystemExit(f"schedctl {command}: {e}") from None
    if not 1 <= job_id <= MAX_JOB_ID:  # (protobuf would raise ValueError: a traceback)
        raise SystemExit(f"schedctl {command}: {text!r}: no job has that id")
    return job_id, index


def _show(client: Client, args: argparse.Namespace) -> int:
    job_id, index = _ref(args.job, "show")
    job = client.get_job(job_id, index)
    if index is None and job.array_id == job.id:  # an array's id: the whole array
        elements = client.list_jobs(array_id=job.id)
        elements.sort(key=lambda e: e.array_index)
        print(fmt.as_json(elements) if args.json else fmt.array_summary(job, elements))
        return 0
    print(fmt.as_json(job) if args.json else fmt.job_detail(job))
    return 0


def _cancel(client: Client, args: argparse.Namespace) -> int:
    refs = [_ref(text, "cancel") for text in args.jobs]
    for job_id, index in refs:
        job = client.cancel(job_id, index, whole_array=index is None)
        if index is None and job.array_id == job.id:
            print(f"job array {job.id}: its waiting elements cancelled, running ones stopping")
            continue
        print(fmt.printable(f"job {fmt.job_label(job)}: {fmt.state_name(job)}: {job.reason}"))
    return 0


def _logs(client: Client, args: argparse.Namespace) -> int:
    """A job on one node: its log as it is. On several nodes: every line prefixed with
    its node and rank, `[n1 r0] `, as the parts' chunks arrive."""
    out = sys.stdout.buffer
    job = client.get_job(*_ref(args.job, "logs"))
    prefixer = fmt.LogPrefixer(multi=len({g.node for g in job.gpus}) > 1)
    for chunk in client.log_chunks(job.id, follow=not args.no_follow):
        out.write(prefixer.feed(chunk.node, chunk.node_rank, chunk.data))
        out.flush()
    out.write(prefixer.flush())
    out.flush()
    return 0


def _consumers(client: Client, args: argparse.Namespace) -> int:
    resp = client.consumers()
    print(fmt.as_json(list(resp.consumers)) if args.json else fmt.consumers_table(resp))
    return 0


def _nodes(client: Client, args: argparse.Namespace) -> int:
    nodes = client.nodes()
    print(fmt.as_json(nodes) if args.json else fmt.nodes_table(nodes))
    return 0


def _drain(client: Client, args: argparse.Namespace) -> int:
    node = client.drain(args.node, args.reason)
    print(f"node {node.name} drained: no new jobs land there; running ones finish")
    return 0


def _node(client: Client, args: argparse.Namespace) -> int:
    resp = client.forget_node(args.node)
    jobs = ", ".join(map(str, resp.requeued_job_ids)) or "none"
    print(
        f"node {args.node} forgotten: {resp.released_gpus} GPUs no longer held there; "
        f"jobs requeued: {jobs}"
    )
    return 0


def _undrain(client: Client, args: argparse.Namespace) -> int:
    node = client.undrain(args.node)
    print(f"node {node.name} takes jobs again")
    return 0


def _policy(client: Client, args: argparse.Namespace) -> int:

    if args.policy_cmd == "show":
        pol = client.get_policy()
        print(f"# version {pol.version} from {pol.source_name}\n{pol.text}", end="")
        return 0
    text = args.file.read_text()
    at = _at(args.at, text, str(args.file)) if args.at is not None else None
    if at is not None and not args.dry_run:
        raise SystemExit("schedctl policy apply: --at needs --dry-run (a policy is applied now)")
    resp = client.apply_policy(text, str(args.file), args.dry_run, at=at)
    if args.json:
        print(fmt.as_json(resp))
        return 0
    head = "dry run: nothing applied" if args.dry_run else f"applied as version {resp.version}"
    if at is not None and args.at != "now":
        head += f"; as at {_show_at(at, text, str(args.file))}"
    listing = _as_list(resp)
    full: dict[str, dict[str, float]] = {}
    warnings: list[str] = []
    if args.dry_run:
        cluster = client.consumers()
        listing.total_gpus = cluster.total_gpus
        full, warnings = _full_demand(text, str(args.file), at, cluster)
    table = fmt.consumers_table(listing, full).split("\n", 1)[1]
    print(f"{head}; entitlements under {args.file}:\n{table}")
    if full:
        print(
            f"FULL: what each would be entitled to if every leaf asked for all it may "
            f"(its limit, or the {cluster.total_gpus} GPUs there are now)"
        )
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _full_demand(
    text: str, source: str, at: float | None, cluster: admin_pb2.ListConsumersResponse
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Each consumer's entitlement under full demand (every leaf asks for its limit or the
    whole cluster), over all pools ("") and per pool, by the core's own divide(); and a
    warning where the GPUs owned are more than there are. Nothing for a policy that does
    not load (the daemon has said why)."""
    import time

    from schedulerd.core import ROOT, divide
    from schedulerd.core.windows import policy_at
    from schedulerd.policy import PolicyError, load_policy

    try:
        policy = policy_at(load_policy(text, source), time.time() if at is None else at)
    except (PolicyError, ValueError):
        return {}, []
    pool_gpus = {p.pool: p.gpus for c in cluster.consumers for p in c.pools}
    sizes = {"": cluster.total_gpus, **pool_gpus}
    full: dict[str, dict[str, float]] = {}
    warnings = []
    for pool, gpus in sizes.items():
        terms = policy.in_pool(pool) if pool else policy
        demand = {}
        for leaf in terms.leaves():
            limits = [terms.consumers[p].limit for p in terms.ancestors(leaf)]
            demand[leaf] = min([gpus, *(x for x in limits if x is not None)])
        division = divide(terms, gpus, demand)
        full[pool] = {str(p): e for p, e in division.entitlement.items()}
        owned = sum(terms.consumers[c].owned for c in terms.children(ROOT))
        if owned > gpus and (pool or not pool_gpus):
            where = f"pool {pool} has" if pool else "the cluster has"
            warnings.append(
                f"the consumers own {owned} GPUs and {where} {gpus} schedulable now: "
                "every guarantee shrinks in proportion (docs/policy.md)"
            )
    if pool_gpus:  # over all pools: the sum of each pool's (as ListConsumers sums them)
        full[""] = {path: sum(full[pool].get(path, 0.0) for pool in pool_gpus) for path in full[""]}
    return full, warnings


def _policy_zone(text: str, source: str) -> ZoneInfo:
    """The time zone of a policy's windows; UTC when it names none, or when it is not
    valid (the daemon then says what is wrong)."""
    from zoneinfo import ZoneInfo

    from schedulerd.policy import PolicyError, load_policy

    try:
        return ZoneInfo(load_policy(text, source).timezone)
    except (PolicyError, ValueError, OSError):
        return ZoneInfo("UTC")


def _at(text: str, policy_text: str, source: str) -> float:
    """--at TIME as unix time: "now", or ISO 8601; without an offset, in the policy's
    time zone (its windows are written in it)."""
    import time
    from datetime import datetime

    if text == "now":
        return time.time()
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SystemExit(
            f"schedctl: --at {text!r}: give 'now' or an ISO 8601 time like 2026-12-01T10:00 "
            "or 2026-12-01T10:00+01:00"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_policy_zone(policy_text, source))
    try:
        at = when.timestamp()
    except (OverflowError, ValueError, OSError):
        at = -1.0
    # The daemon takes 1970 to 9998 (a protobuf Timestamp holds years 1 to 9999 in UTC).
    if not 0 <= at < _YEAR_9999:
        raise SystemExit(f"schedctl: --at {text!r}: out of range (1970 to 9998)")
    return at


_YEAR_9999 = 253370764800.0  # 9999-01-01T00:00Z


def _show_at(at: float, policy_text: str, source: str) -> str:
    from datetime import datetime

    zone = _policy_zone(policy_text, source)
    return f"{datetime.fromtimestamp(at, zone):%a %Y-%m-%d %H:%M %Z}"


def _as_list(resp: admin_pb2.ApplyPolicyResponse) -> admin_pb2.ListConsumersResponse:
    from schedulerd.api.v1 import admin_pb2

    return admin_pb2.ListConsumersResponse(consumers=resp.consumers)


COMMANDS = {
    "submit": _submit,
    "jobs": _jobs,
    "show": _show,
    "cancel": _cancel,
    "logs": _logs,
    "consumers": _consumers,
    "nodes": _nodes,
    "drain": _drain,
    "undrain": _undrain,
    "node": _node,
    "policy": _policy,
    "hpo": hpo.run,
    "serve": serve.run,
    "token": tokens.run,
    "whoami": audit.whoami,
    "audit": audit.audit,
}


def _hint(e: ClientError, args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """A daemon that serves TLS closes a plaintext connection without a word: say what
    is likely missing rather than leave "Socket closed" alone."""
    if e.code.name != "UNAVAILABLE" or getattr(args, "ca", None):
        return ""
    if env.get("SCHEDULERD_CA"):
        return ""
    return (
        f" (is the daemon at {args.daemon} there? If it serves TLS, give its CA: "
        "--ca FILE or SCHEDULERD_CA)"
    )


def main(argv: list[str] | None = None) -> None:
    """The CLI in this process (`python -m schedulerd.cli`; `schedctl` tries its broker
    first: schedulerd/cli/fast.py)."""
    inv = Invocation.here()
    args = build_parser().parse_args(argv)
    sys.exit(invoke(args, inv))


def invoke(
    args: argparse.Namespace,
    inv: Invocation,
    client_for: Callable[[Connection], Client] | None = None,
) -> int:
    """Run a parsed command; its exit code. Errors are said on stderr, as a person
    reads them."""
    resolve(args, inv)
    try:
        code = run(args, inv, client_for)
    except ClientError as e:
        print(f"schedctl: {e.details}{_hint(e, args, inv.env)}", file=sys.stderr)
        code = 1
    except (CredentialError, CertError) as e:
        print(f"schedctl: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    return code


if __name__ == "__main__":
    main()
