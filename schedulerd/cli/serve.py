"""`schedctl serve`: inference services (docs/serve.md).

schedctl serve create FILE                     deploy the service a YAML file describes
schedctl serve update FILE                     the file is the new spec (a new command rolls over)
schedctl serve list [--consumer C] [--all]     services, replicas, load, latency
schedctl serve show NAME [--watch]             spec, replicas, load and history
schedctl serve scale NAME [--min N] [--max N] [--target X]
schedctl serve delete NAME                     drain and stop its replicas
schedctl serve logs NAME [--replica N] [--follow]
"""

from __future__ import annotations

import argparse
import queue
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from schedulerd.api.v1 import serving_pb2 as pb
from schedulerd.cli import format as fmt
from schedulerd.client import Client, ClientError


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    s = sub.add_parser(
        "serve", help="inference services: create, update, list, show, scale, delete, logs"
    )
    ssub = s.add_subparsers(dest="serve_cmd", required=True, metavar="ACTION")
    c = ssub.add_parser("create", help="deploy a service from a YAML file (docs/serve.md)")
    c.add_argument("file", type=Path, help="the service file, e.g. examples/serve/service.yaml")
    c.add_argument("--json", action="store_true", help="print the service as JSON")
    u = ssub.add_parser(
        "update",
        help="replace a service's spec with a file's (the service the file names)",
        description="The whole file is the new spec. A change of command, env, workdir, gpus, "
        "readiness_path or priority rolls the replicas over one by one; name, consumer "
        "and user never change.",
    )
    u.add_argument("file", type=Path, help="the service file")
    u.add_argument("--json", action="store_true", help="print the service as JSON")
    ls = ssub.add_parser("list", help="services with their replicas, load and latency")
    ls.add_argument("--consumer", default="", help="only this consumer's subtree")
    ls.add_argument("--all", action="store_true", help="include deleted services")
    ls.add_argument("--json", action="store_true", help="print the services as JSON")
    sh = ssub.add_parser("show", help="a service's spec, replicas, load and history")
    sh.add_argument("name", help="the service's name")
    sh.add_argument(
        "--watch", action="store_true", help="reprint at every change until it is deleted"
    )
    sh.add_argument("--json", action="store_true", help="print the service as JSON")
    sc = ssub.add_parser(
        "scale",
        help="change a service's replica bounds or its autoscaling target",
        description="Only the options given change (an update with a field mask of them).",
    )
    sc.add_argument("name", help="the service's name")
    sc.add_argument("--min", type=_count, help="replicas kept while it has traffic (0..1000)")
    sc.add_argument("--max", type=_count, help="replicas at most (1..1000)")
    sc.add_argument(
        "--target", type=_target, help="requests in flight per replica to aim at (above 0)"
    )
    d = ssub.add_parser("delete", help="delete a service: its replicas drain and stop")
    d.add_argument("name", help="the service's name")
    lg = ssub.add_parser(
        "logs",
        help="the output of a service's replicas, each line prefixed with its replica",
        description="The replicas that are not ended when it starts; a replica that starts "
        "later is not followed (run it again).",
    )
    lg.add_argument("name", help="the service's name")
    lg.add_argument("--replica", type=int, help="only this replica (its number, from 0)")
    lg.add_argument("--follow", action="store_true", help="keep printing until they end")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is below 0")
    return n


def _target(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < x < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be above 0")
    return x


def run(client: Client, args: argparse.Namespace) -> int:
    return int(ACTIONS[args.serve_cmd](client, args))


def _load(path: Path) -> pb.ServiceSpec | None:
    # Imported here: the service file's reader is no other command's.
    from schedulerd.serve.codec import spec_to_pb
    from schedulerd.serve.file import ServiceFileError, load_service_file

    try:
        return spec_to_pb(load_service_file(path))
    except ServiceFileError as e:
        print(e, file=sys.stderr)
        return None


def _create(client: Client, args: argparse.Namespace) -> int:
    spec = _load(args.file)
    if spec is None:
        return 1
    svc = client.create_service(spec)
    if args.json:
        print(fmt.as_json(svc))
    else:
        s = svc.spec
        print(
            f"created service {s.name} on {s.consumer}: {s.min_replicas} to {s.max_replicas} "
            f"replicas, served at {svc.path or '/services/' + s.name + '/'}"
        )
    return 0


def _update(client: Client, args: argparse.Namespace) -> int:
    spec = _load(args.file)
    if spec is None:
        return 1
    before = client.get_service(spec.name)
    svc = client.update_service(spec.name, spec)  # no mask: every field that may change
    if args.json:
        print(fmt.as_json(svc))
        return 0
    how = (
        f"rolling the replicas over to generation {svc.generation}"
        if svc.generation != before.generation
        else "no replica needs replacing"
    )
    print(f"updated service {svc.spec.name}: {how}")
    return 0


def scale_request(args: argparse.Namespace) -> tuple[pb.ServiceSpec, list[str]]:
    """The spec and field mask of `serve scale`: only the options given."""
    spec = pb.ServiceSpec()
    fields = []
    if args.min is not None:
        spec.min_replicas = args.min
        fields.append("min_replicas")
    if args.max is not None:
        spec.max_replicas = args.max
        fields.append("max_replicas")
    if args.target is not None:
        spec.target_in_flight = args.target
        fields.append("target_in_flight")
    if not fields:
        raise SystemExit("schedctl serve scale: give --min, --max or --target")
    if args.min is not None and args.max is not None and args.min > args.max:
        raise SystemExit(f"schedctl serve scale: --min {args.min} is above --max {args.max}")
    return spec, fields


def _scale(client: Client, args: argparse.Namespace) -> int:
    spec, fields = scale_request(args)
    svc = client.update_service(args.name, spec, fields)
    s = svc.spec
    print(
        f"service {s.name}: {s.min_replicas} to {s.max_replicas} replicas, target "
        f"{s.target_in_flight:g} in flight each; wants {svc.desired_replicas} now"
    )
    return 0


def _delete(client: Client, args: argparse.Namespace) -> int:
    svc = client.delete_service(args.name)
    print(f"service {svc.spec.name} {state_name(svc)}: {len(svc.replicas)} replicas draining")
    return 0


def _list(client: Client, args: argparse.Namespace) -> int:
    services = client.list_services(args.consumer, include_deleted=args.all)
    print(fmt.as_json(services) if args.json else services_table(services))
    return 0


def _show(client: Client, args: argparse.Namespace) -> int:
    if not args.watch:
        svc = client.get_service(args.name)
        print(fmt.as_json(svc) if args.json else service_detail(svc))
        return 0
    clear = sys.stdout.isatty()
    for svc in client.watch_service(args.name):
        if args.json:
            print(fmt.as_json(svc), flush=True)
            continue
        if clear:
            print("\033[H\033[J", end="")
        print(service_detail(svc), flush=True)
        if not clear:
            print()
    return 0


# -- logs ---------------------------------------------------------------------


def _logs(client: Client, args: argparse.Namespace) -> int:
    svc = client.get_service(args.name)
    replicas = [r for r in svc.replicas if r.job_id]
    if args.replica is not None:
        replicas = [r for r in replicas if r.number == args.replica]
        if not replicas:
            have = ", ".join(str(r.number) for r in svc.replicas) or "none"
            print(
                f"schedctl: service {args.name} has no replica {args.replica} (replicas: {have})",
                file=sys.stderr,
            )
            return 1
    if not replicas:
        print(f"schedctl: service {args.name} has no replica with a job", file=sys.stderr)
        return 1
    out = sys.stdout.buffer
    prefixer = LinePrefixer(multi=len(replicas) > 1)
    if not args.follow:  # one after the other: what is there now
        for r in replicas:
            for data in client.logs(r.job_id, follow=False):
                _write(out, prefixer.feed(r.number, data))
            _write(out, prefixer.flush())
        return 0
    return _follow(client, replicas, prefixer, out)


def _follow(
    client: Client, replicas: Sequence[pb.Replica], prefixer: LinePrefixer, out: BinaryIO
) -> int:
    """Every replica's log at once, one thread a stream, lines merged as they come."""
    chunks: queue.Queue[tuple[int, bytes | ClientError | None]] = queue.Queue(maxsize=256)

    def pump(number: int, job_id: int) -> None:
        try:
            for data in client.logs(job_id, follow=True):
                chunks.put((number, data))
            chunks.put((number, None))
        except ClientError as e:
            chunks.put((number, e))

    for r in replicas:
        threading.Thread(target=pump, args=(r.number, r.job_id), daemon=True).start()
    live, failed = len(replicas), 0
    while live:
        number, item = chunks.get()
        if isinstance(item, bytes):
            _write(out, prefixer.feed(number, item))
            continue
        live -= 1
        if isinstance(item, ClientError):
            failed += 1
            print(f"schedctl: replica {number}: {item.details}", file=sys.stderr)
    _write(out, prefixer.flush())
    return 1 if failed else 0


def _write(out: BinaryIO, data: bytes) -> None:
    if data:
        out.write(data)
        out.flush()


class LinePrefixer:
    """Lines of several replicas' logs, each prefixed `[rN] `; partial lines wait in a
    buffer per replica so that lines never mix. One replica: its bytes as they are."""

    def __init__(self, multi: bool) -> None:
        self._multi = multi
        self._pending: dict[int, bytes] = {}

    def feed(self, replica: int, data: bytes) -> bytes:
        if not self._multi:
            return data
        *lines, rest = (self._pending.pop(replica, b"") + data).split(b"\n")
        if rest:
            self._pending[replica] = rest
        tag = f"[r{replica}] ".encode()
        return b"".join(tag + line + b"\n" for line in lines)

    def flush(self) -> bytes:
        pending = sorted(self._pending.items())
        out = b"".join(f"[r{replica}] ".encode() + rest + b"\n" for replica, rest in pending)
        self._pending.clear()
        return out


ACTIONS = {
    "create": _create,
    "update": _update,
    "list": _list,
    "show": _show,
    "scale": _scale,
    "delete": _delete,
    "logs": _logs,
}


# -- text ---------------------------------------------------------------------


def state_name(svc: pb.Service) -> str:
    return str(pb.ServiceState.Name(svc.state)).removeprefix("SERVICE_")


def replica_state_name(r: pb.Replica) -> str:
    return str(pb.ReplicaState.Name(r.state)).removeprefix("REPLICA_")


def replicas_text(svc: pb.Service) -> str:
    """ready/desired (min–max)."""
    s = svc.spec
    return f"{svc.ready_replicas}/{svc.desired_replicas} ({s.min_replicas}–{s.max_replicas})"


def load_text(load: pb.ServiceLoad) -> str:
    """in-flight/queued, averaged over the window."""
    return f"{_num(load.in_flight)}/{_num(load.queued)}"


def ms(x: float, reported: bool = True) -> str:
    if not reported:
        return "-"
    return f"{x:.0f}ms" if x >= 10 else f"{x:.1f}ms"


def _reported(svc: pb.Service) -> bool:
    return bool(svc.HasField("load") and svc.load.HasField("reported"))


def _measured(svc: pb.Service) -> bool:
    """Latencies mean something once the router has answered a request."""
    return _reported(svc) and svc.load.requests_total > 0


def services_table(services: Sequence[pb.Service]) -> str:
    rows = [
        [
            svc.spec.name,
            svc.spec.consumer,
            replicas_text(svc),
            load_text(svc.load) if _reported(svc) else "-",
            ms(svc.load.p50_ms, _measured(svc)),
            ms(svc.load.p99_ms, _measured(svc)),
            state_name(svc),
        ]
        for svc in services
    ]
    headers = ["NAME", "CONSUMER", "REPLICAS", "LOAD", "P50", "P99", "STATE"]
    return fmt.table(headers, rows)


def _seconds(x: float) -> str:
    """A duration as the service file writes it: 45s, 5m, 1h30m."""
    whole = round(x)
    if abs(x - whole) > 1e-9 or whole < 60:
        return f"{x:g}s"
    h, rest = divmod(whole, 3600)
    m, s = divmod(rest, 60)
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v)


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def service_detail(svc: pb.Service) -> str:
    s = svc.spec
    command = " ".join(s.command) or "(hidden)"
    lines = [
        f"service {s.name} on {s.consumer}: {state_name(svc)}"
        + (f" ({svc.reason})" if svc.reason else ""),
        f"  path:      {svc.path or '/services/' + s.name + '/'}   public: {_yes(s.public)}"
        f"   user: {s.user or '-'}",
        f"  command:   {command}   (generation {svc.generation})",
        f"  replicas:  {svc.ready_replicas} ready, {svc.desired_replicas} desired, "
        f"{s.min_replicas} to {s.max_replicas}; scale to zero: {_yes(s.scale_to_zero)}; "
        f"{s.gpus_per_replica or 1} GPU{'s' if s.gpus_per_replica > 1 else ''} each",
        f"  autoscale: target {s.target_in_flight:g} in flight a replica, "
        f"window {_seconds(s.window_s)}, scale-down delay {_seconds(s.scale_down_delay_s)}",
        f"  requests:  readiness {s.readiness_path or '/'}, timeout "
        f"{_seconds(s.request_timeout_s)}; queue at most {s.max_queue} for "
        f"{_seconds(s.queue_timeout_s)}",
        f"  load:      {load_detail(svc)}",
        "",
    ]
    rows = [
        [
            r.number,
            r.job_id or "-",
            replica_state_name(r),
            r.generation,
            r.node or "-",
            r.address or "-",
            r.in_flight,
            r.reason,
        ]
        for r in svc.replicas
    ]
    headers = ["NUMBER", "JOB", "STATE", "GEN", "NODE", "ADDRESS", "IN-FLIGHT", "REASON"]
    lines.append(fmt.table(headers, rows) if rows else "no replicas")
    lines += ["", "history:" if svc.history else "history: none yet"]
    lines += [f"  {line}" for line in history_lines(svc.history)]
    return "\n".join(lines)


def load_detail(svc: pb.Service) -> str:
    if not _reported(svc):
        return "no report from a router yet"
    load = svc.load
    return (
        f"{_num(load.in_flight)} in flight, {_num(load.queued)} queued, "
        f"{load.requests_per_s:.1f} req/s, p50 {ms(load.p50_ms, _measured(svc))}, "
        f"p99 {ms(load.p99_ms, _measured(svc))}; "
        f"{load.requests_total:,} requests, {load.failed_total:,} failed "
        f"(reported {_clock(load.reported.seconds)})"
    )


def history_lines(events: Sequence[pb.ServiceEvent]) -> Iterator[str]:
    width = max((len(e.kind) for e in events), default=0)
    for e in events:
        change = f"{e.from_replicas}→{e.to_replicas}" if e.from_replicas != e.to_replicas else ""
        yield f"{_clock(e.time.seconds)}  {e.kind:<{width}}  {change:<5}  {e.message}".rstrip()


def _clock(seconds: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(seconds)) if seconds else "-"


def _num(x: float) -> str:
    return f"{x:.1f}".removesuffix(".0")
