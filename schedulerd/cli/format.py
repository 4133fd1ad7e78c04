"""Plain-text tables and JSON for `schedctl`."""

from __future__ import annotations

import json
import re
import shlex
import time
from collections.abc import Mapping, Sequence

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from schedulerd.api.v1 import admin_pb2, jobs_pb2
from schedulerd.arrays import compact
from schedulerd.exits import describe_exit

# C0 and C1 control characters and DEL: in a job's name or command (another user's
# text), ESC and BEL would drive the reader's terminal (set its title, clear it, write
# its clipboard with OSC 52). They are shown escaped instead.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str, keep_newlines: bool = False) -> str:
    """`text` with control characters shown as escapes (\\x1b), so that printing it
    cannot drive the terminal; newlines kept when `keep_newlines`."""

    def escape(m: re.Match[str]) -> str:
        ch = m.group()
        return ch if keep_newlines and ch == "\n" else ch.encode("unicode_escape").decode()

    return _CONTROL.sub(escape, text)


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[printable(str(h)) for h in headers]] + [[printable(str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    return "\n".join(lines)


def as_json(messages: Message | Sequence[Message]) -> str:
    def one(m: Message) -> dict[str, object]:
        data: dict[str, object] = MessageToDict(m, preserving_proto_field_name=True)
        return data

    data = [one(m) for m in messages] if isinstance(messages, Sequence) else one(messages)
    return json.dumps(data, indent=2)


WAITING = (jobs_pb2.PENDING, jobs_pb2.PREEMPTED)


def state_name(job: jobs_pb2.Job) -> str:
    name: str = jobs_pb2.JobState.Name(job.state)
    return name


def gpus_text(job: jobs_pb2.Job) -> str:
    by_node: dict[str, list[str]] = {}
    for g in job.gpus:
        by_node.setdefault(g.node, []).append(str(g.index))
    return " ".join(f"{n}:{','.join(ix)}" for n, ix in by_node.items())


def _ago(ts_seconds: float) -> str:
    if not ts_seconds:
        return "-"
    s = max(0, int(time.time() - ts_seconds))
    return f"{s}s" if s < 120 else f"{s // 60}m" if s < 7200 else f"{s // 3600}h"


def gpus_count(j: jobs_pb2.Job) -> str:
    """What a job holds: `2`; an elastic one `4 (1:8)` (holds 4, may run on 1 to 8), or
    `1:8` while it waits."""
    low, high = j.spec.gpus.min, j.spec.gpus.max
    held = len(j.gpus)
    if high > low:
        return f"{held} ({low}:{high})" if held else f"{low}:{high}"
    return str(held or low)


# The end of a waiting job's reason: its place in its leaf's queue (core/reasons.py).
_QUEUE_PLACE = re.compile(r" \((\d+(?:st|nd|rd|th) of \d+) waiting in [^()]*\)$")
MIN_HEAD = 12  # room kept for the reason's first words before its queue place
MIN_WHY = 30  # a narrower WHY column says too little to be worth it
ELLIPSIS = "…"


def shorten(text: str, room: int | None) -> str:
    """`text` in at most `room` characters (None: all of it), cut between clauses
    ("; ") or else between words, never inside a number, the cut marked with "…". A
    reason's queue place at its end ("(3rd of 14 waiting in /a)") is kept, if need be
    as "(3rd of 14)"."""
    if room is None or len(text) <= room:
        return text
    room = max(room, MIN_WHY)
    tail = ""
    if m := _QUEUE_PLACE.search(text):
        # The place in full, or without its leaf (the CONSUMER column names it).
        fits = [t for t in (m.group(0), f" ({m.group(1)})") if len(t) <= room - MIN_HEAD]
        text, tail = text[: m.start()], (fits[0] if fits else "")
    budget = room - len(tail) - len(ELLIPSIS)
    clauses = text.split("; ")
    kept = clauses[0]
    if len(kept) > budget:
        kept = _words(kept, budget)
    else:
        for clause in clauses[1:]:
            if len(kept) + 2 + len(clause) > budget:
                break
            kept += "; " + clause
    if kept == text:
        return kept + tail
    return kept.rstrip(" ,;:") + ELLIPSIS + tail


def _words(text: str, budget: int) -> str:
    """The words of `text` that fit in `budget` characters (a first word longer than
    that is cut: there is nothing else to show)."""
    cut = text.rfind(" ", 0, budget + 1)
    return text[:cut] if cut > 0 else text[:budget]


def job_label(j: jobs_pb2.Job) -> str:
    """A job's name in tables: its id, or for an array's element ARRAY_INDEX (123_7)."""
    return f"{j.array_id}_{j.array_index}" if j.array_id else str(j.id)


def _collapsed(jobs: Sequence[jobs_pb2.Job]) -> list[tuple[jobs_pb2.Job, str]]:
    """Each job with its label, but the waiting elements of one array as one line,
    123_[4-999] (as squeue shows them), where the first of them comes in the list."""
    waiting: dict[int, list[jobs_pb2.Job]] = {}
    for j in jobs:
        if j.array_id and j.state == jobs_pb2.PENDING:
            waiting.setdefault(j.array_id, []).append(j)
    out: list[tuple[jobs_pb2.Job, str]] = []
    for j in jobs:
        group = waiting.get(j.array_id) if j.array_id and j.state == jobs_pb2.PENDING else None
        if group is None or len(group) == 1:
            out.append((j, job_label(j)))
        elif group[0] is j:
            out.append((j, f"{j.array_id}_[{compact(g.array_index for g in group)}]"))
    return out


def jobs_table(jobs: Sequence[jobs_pb2.Job], width: int | None = None, expand: bool = False) -> str:
    """`width`: the terminal's columns, the WHY column cut to fit them (None: no cut).
    The waiting elements of a job array make one line unless `expand`."""
    rows: list[list[object]] = []
    labelled = [(j, job_label(j)) for j in jobs] if expand else _collapsed(jobs)
    for j, label in labelled:
        rows.append(
            [
                label,
                state_name(j),
                j.spec.consumer,
                j.spec.user,
                gpus_count(j),
                _ago(j.submit_time.seconds),
                j.spec.name[:24],
                gpus_text(j) if j.gpus else (j.reason if j.state in WAITING else ""),
            ]
        )
    headers = ["ID", "STATE", "CONSUMER", "USER", "GPUS", "AGE", "NAME", "WHERE / WHY"]
    if width is not None and rows:
        cells: list[Sequence[object]] = [headers, *rows]
        used = sum(max(len(str(r[i])) for r in cells) + 2 for i in range(7))
        for r in rows:
            r[7] = shorten(str(r[7]), width - used)
    return table(headers, rows)


def command_text(command: Sequence[str]) -> str:
    """A command as a shell would take it back: `python -c 'import os; ...'`."""
    return shlex.join(command)


def exit_code_text(code: int) -> str:
    """`4`; `killed by SIGTERM (-15)`; `137 (128 + SIGKILL)`."""
    if code < 0:
        return f"{describe_exit(code)} ({code})"
    return describe_exit(code).removeprefix("exited with ")


def _range(j: jobs_pb2.Job) -> str:
    low, high = j.spec.gpus.min, j.spec.gpus.max
    text = f"{low}:{high}" if high > low else str(low)
    if high > low and j.gpus:
        text += f" (now {len(j.gpus)})"
    return text


def timestamp(seconds: float) -> str:
    """A moment in local time; 0 (a Timestamp left unset) is "-"."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds)) if seconds else "-"


def array_summary(first: jobs_pb2.Job, elements: Sequence[jobs_pb2.Job]) -> str:
    """A job array (`schedctl show 123`): what its elements run, and their states
    counted, with the indices in each."""
    command = "(hidden)" if first.redacted else command_text(first.spec.command)
    by_state: dict[str, list[int]] = {}
    for e in elements:
        by_state.setdefault(state_name(e), []).append(e.array_index)
    lines = [
        f"Job array {first.array_id}: {first.spec.name} ({len(elements)} elements)",
        f"  consumer:   {first.spec.consumer}   user: {first.spec.user}"
        f"   priority: {first.spec.priority}",
        f"  gpus:       {_range(first)} each",
        f"  command:    {command}",
        f"  submitted:  {timestamp(first.submit_time.seconds)}",
        "  elements:",
    ]
    for state, indices in sorted(by_state.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"    {state:<10} {len(indices):>6}  {first.array_id}_[{compact(indices)}]")
    lines.append(f"  one element: schedctl show {first.array_id}_INDEX")
    return "\n".join(printable(line) for line in lines)


def job_detail(j: jobs_pb2.Job) -> str:
    command = "(hidden)" if j.redacted else command_text(j.spec.command)
    title = f"Job {j.id}" + (f" (array element {job_label(j)})" if j.array_id else "")
    lines = [
        f"{title}: {j.spec.name}",
        f"  state:      {state_name(j)}" + (" (cancel requested)" if j.cancel_requested else ""),
        f"  consumer:   {j.spec.consumer}   user: {j.spec.user}   priority: {j.spec.priority}",
        f"  gpus:       {_range(j)}" + (f"  on {gpus_text(j)}" if j.gpus else ""),
        f"  command:    {command}",
        f"  submitted:  {timestamp(j.submit_time.seconds)}"
        f"   started: {timestamp(j.start_time.seconds)}"
        f"   ended: {timestamp(j.end_time.seconds)}",
    ]
    if j.attempt:
        lines.append(f"  restarts:   {j.attempt} (preempted and run again)")
    if j.HasField("exit_code"):
        lines.append(f"  exit code:  {exit_code_text(j.exit_code)}")
    waiting = j.state in (jobs_pb2.PENDING, jobs_pb2.PREEMPTED)
    lines.append(f"  {'why waiting' if waiting else 'reason'}: {j.reason}")
    if j.history:
        lines.append("  history:")
        for e in j.history:
            stamp = time.strftime("%H:%M:%S", time.localtime(e.time.seconds))
            lines.append(f"    {stamp}  {e.kind:<17} {e.message}")
    return "\n".join(printable(line) for line in lines)


def _one_decimal(x: float) -> str:
    return f"{x:.1f}"


def _tree_name(path: str) -> str:
    depth = 0 if path == "/" else path.count("/")
    return "/" if path == "/" else "  " * (depth - 1) + path.rsplit("/", 1)[1]


def consumers_table(
    resp: admin_pb2.ListConsumersResponse, full: Mapping[str, Mapping[str, float]] | None = None
) -> str:
    """`full`: entitlements under full demand per pool ("": all pools), a FULL column."""
    full = full or {}
    rows: list[list[object]] = []
    for c in resp.consumers:
        name = _tree_name(c.path)
        rows.append(
            [
                name,
                c.owned,
                f"{c.share:g}",
                c.limit if c.HasField("limit") else "-",
                c.demand,
                f"{c.entitlement:.1f}",
                c.allocation,
                c.pending_jobs,
                c.running_jobs,
                ("" if c.lend else "no-lend ") + ("" if c.borrow else "no-borrow"),
            ]
        )
        if any(x.window for x in resp.consumers):
            rows[-1].append(c.window or "-")
        if "" in full:
            rows[-1].append(_one_decimal(full[""].get(c.path, 0.0)))
    headers = [
        "CONSUMER",
        "OWNED",
        "SHARE",
        "LIMIT",
        "DEMAND",
        "ENTITLED",
        "ALLOC",
        "PENDING",
        "RUNNING",
        "FLAGS",
    ]
    if any(c.window for c in resp.consumers):
        headers.append("WINDOW")  # the time window in force (docs/policy.md)
    if "" in full:
        headers.append("FULL")  # entitled to under full demand (policy apply --dry-run)
    pools = sorted({p.pool for c in resp.consumers for p in c.pools})
    if not pools:
        return f"{resp.total_gpus} schedulable GPUs\n" + table(headers, rows)
    out = [f"{resp.total_gpus} schedulable GPUs in {len(pools)} pools; all pools:"]
    out.append(table(headers, rows))
    for pool in pools:
        prows = []
        gpus = 0
        for c in resp.consumers:
            for p in c.pools:
                if p.pool == pool:
                    gpus = p.gpus
                    limit = p.limit if p.HasField("limit") else "-"
                    ent = f"{p.entitlement:.1f}"
                    name = _tree_name(c.path)
                    prows.append(
                        [name, p.owned, f"{p.share:g}", limit, p.demand, ent, p.allocation]
                    )
                    if pool in full:
                        prows[-1].append(_one_decimal(full[pool].get(c.path, 0.0)))
        out.append(f"\npool {pool}: {gpus} schedulable GPUs")
        out.append(table(headers[:7] + (["FULL"] if pool in full else []), prows))
    return "\n".join(out)


class LogPrefixer:
    """Lines of a multi-node job's logs, prefixed `[NODE rRANK] ` once a second node
    speaks. Partial lines wait in a buffer per node, so that lines never mix."""

    def __init__(self, multi: bool = False) -> None:
        self._pending: dict[tuple[str, int], bytes] = {}
        self._multi = multi  # known to span nodes from the start
        self._first: tuple[str, int] | None = None

    def feed(self, node: str, rank: int, data: bytes) -> bytes:
        key = (node, rank)
        if self._first is None:
            self._first = key
        elif key != self._first:
            self._multi = True
        if not self._multi:
            return data  # one node so far: its bytes as they are
        text = self._pending.pop(key, b"") + data
        *lines, rest = text.split(b"\n")
        if rest:
            self._pending[key] = rest
        tag = f"[{node} r{rank}] ".encode()
        return b"".join(tag + line + b"\n" for line in lines)

    def flush(self) -> bytes:
        out = b"".join(
            f"[{node} r{rank}] ".encode() + rest + b"\n"
            for (node, rank), rest in sorted(self._pending.items())
        )
        self._pending.clear()
        return out


def nodes_table(nodes: Sequence[admin_pb2.Node]) -> str:
    rows = []
    for n in nodes:
        used = [g for g in n.gpus if g.job_id]
        jobs = sorted({g.job_id for g in used})
        fenced = [g for g in n.gpus if g.fenced_job_id]
        state = admin_pb2.NodeState.Name(n.state) + (" DRAINED" if n.drained else "")
        rows.append(
            [
                n.name,
                state,
                n.pool,
                n.gpu_type or "-",
                f"{len(used)}/{len(n.gpus)}",
                (n.gpus[0].model if n.gpus else "-") + (" (fake)" if n.fake_gpus else ""),
                ",".join(map(str, jobs)) or "-",
                ",".join(f"{g.index}:job {g.fenced_job_id}" for g in fenced) or "-",
            ]
        )
    headers = ["NODE", "STATE", "POOL", "TYPE", "GPUS USED", "MODEL", "JOBS", "FENCED"]
    return table(headers, rows)
