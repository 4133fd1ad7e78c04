"""Containment: where a job's processes live, so that none escapes its stop or its end.

A process group does not hold a job: a process that calls `setsid` (or a daemon that double-
forks) leaves it, outlives `killpg`, and keeps its GPU after the agent said the job ended. A
cgroup holds every descendant whatever it does, so the agent puts each worker of a part in a
cgroup of its own: `<base>/job-<id>.<attempt>/w<worker id>`, base being
`<cgroup mount>/<the agent's own cgroup>/schedulerd-<node>`. A worker has ended only when
its cgroup is empty, and killing it kills the whole cgroup.

Three implementations of one small interface, chosen by `choose_containment`:
- cgroup v2 (`cgroup.kill`, `cgroup.events: populated`), the normal case;
- the cgroup v1 freezer where v2 is not writable (freeze, SIGKILL every member, thaw: frozen
  processes cannot fork, so nothing slips out between reading the list and the kill);
- process groups where neither is writable: nothing here, the shim's process group is all
  there is, and a job that calls setsid escapes (logged loudly at start).

The mount point is read from /proc/self/mounts, never assumed: v2 is at /sys/fs/cgroup on
most clusters and at /sys/fs/cgroup/unified on hybrid machines (FIELD-NOTES). We enable no
controllers, so creating children of a cgroup that holds processes (a systemd service's own
cgroup) is allowed: the no-internal-processes rule only applies to controllers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

KINDS = ("auto", "cgroup2", "cgroup1", "pgroup")  # what --containment accepts
FREEZE_TIMEOUT_S = 5.0  # a task in uninterruptible sleep can hold FREEZING; kill anyway
ESCAPE_WARNING = "no writable cgroup: jobs that call setsid can escape"


class ContainmentUnavailable(RuntimeError):
    """The containment asked for cannot be used on this machine; the message says why."""


class Containment(Protocol):
    kind: str  # "cgroup2", "cgroup1" or "pgroup": recorded with each part
    base: str  # the agent's cgroup folder ("" for pgroup)

    def create(self, part: str, worker_id: int) -> str:
        """Make a worker's cgroup; its path ("" when processes are not contained)."""
        ...

    def procs_file(self, cgroup: str) -> str:
        """The file a process writes "0" to in order to join `cgroup` ("" for none)."""
        ...

    def populated(self, cgroup: str) -> bool:
        """Does any process live in `cgroup`? False for "" or a cgroup that is gone."""
        ...

    def kill(self, cgroup: str) -> None:
        """SIGKILL every process in `cgroup` (returns before they are all gone)."""
        ...

    def events_file(self, cgroup: str) -> str:
        """A file whose POLLPRI says `populated` changed (agent/wakeups); "" when this
        containment has none, and whoever waits for the cgroup to empty must look again."""
        ...

    def remove(self, cgroups: list[str]) -> None:
        """rmdir these worker cgroups, their part cgroups and the base, where empty."""
        ...

    def leftovers(self, known: set[str]) -> list[str]:
        """Cgroups under the base that are not in `known` nor above one of them, deepest first."""
        ...


class ProcessGroups:
    """No cgroup: the shim's process group is all the agent holds (see the module docstring)."""

    kind = "pgroup"
    base = ""

    def create(self, part: str, worker_id: int) -> str:
        return ""

    def procs_file(self, cgroup: str) -> str:
        return ""

    def populated(self, cgroup: str) -> bool:
        return False

    def kill(self, cgroup: str) -> None:
        return None

    def events_file(self, cgroup: str) -> str:
        return ""

    def remove(self, cgroups: list[str]) -> None:
        return None

    def leftovers(self, known: set[str]) -> list[str]:
        return []


class _Cgroups:
    """What v1 and v2 share: a folder tree under `base`."""

    kind = ""

    def __init__(self, base: Path) -> None:
        self.base = str(base)

    def create(self, part: str, worker_id: int) -> str:
        path = Path(self.base) / part / f"w{worker_id}"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def procs_file(self, cgroup: str) -> str:
        return f"{cgroup}/cgroup.procs" if cgroup else ""

    def remove(self, cgroups: list[str]) -> None:
        # EBUSY while a process lives there; it is tried again at the next end or ack.
        mine = [c for c in cgroups if c and _under(c, self.base)]
        parents = sorted({str(Path(c).parent) for c in mine} - {self.base})
        # Bottom up, and what is below a worker's cgroup too: a job running as root may
        # have made cgroups of its own in it.
        for path in [*(sub for c in mine for sub in _tree(c)[::-1]), *parents, self.base]:
            with contextlib.suppress(OSError):
                os.rmdir(path)

    def leftovers(self, known: set[str]) -> list[str]:
        keep = set(known) | {str(Path(k).parent) for k in known}
        found = []
        with contextlib.suppress(FileNotFoundError):
            for part in os.scandir(self.base):
                if not part.is_dir(follow_symlinks=False):
                    continue
                found += [
                    w.path
                    for w in os.scandir(part.path)
                    if w.is_dir(follow_symlinks=False) and w.path not in keep
                ]
                if part.path not in keep:
                    found.append(part.path)
        return found  # workers before their part: the order rmdir needs


class Cgroup2(_Cgroups):
    kind = "cgroup2"

    def populated(self, cgroup: str) -> bool:
        try:
            events = Path(cgroup, "cgroup.events").read_text()
        except (FileNotFoundError, NotADirectoryError):
            return False
        return "populated 1" in events.splitlines()

    def kill(self, cgroup: str) -> None:
        if cgroup:
            with contextlib.suppress(FileNotFoundError):
                Path(cgroup, "cgroup.kill").write_text("1")

    def events_file(self, cgroup: str) -> str:
        return f"{cgroup}/cgroup.events" if cgroup else ""


class Cgroup1Freezer(_Cgroups):
    kind = "cgroup1"

    def events_file(self, cgroup: str) -> str:
        return ""  # v1 has release agents, not events: an emptying cgroup is looked at

    def populated(self, cgroup: str) -> bool:
        return bool(_pids(cgroup))

    def kill(self, cgroup: str) -> None:
        if not cgroup or not _pids(cgroup):
            return
        state = Path(cgroup, "freezer.state")
        try:
            state.write_text("FROZEN")
            deadline = time.monotonic() + FREEZE_TIMEOUT_S
            while state.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.005)
            for pid in _pids(cgroup):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        except FileNotFoundError:
            return  # it was emptied and removed meanwhile
        finally:
            # A SIGKILLed frozen task dies only once thawed.
            with contextlib.suppress(FileNotFoundError):
                state.write_text("THAWED")


def choose_containment(
    kind: str, node: str, *, mounts: str | None = None, proc_cgroup: str | None = None
) -> Containment:
    """The containment of kind ("auto": the best this machine allows; see KINDS).

    Raises ContainmentUnavailable when a kind that was asked for cannot be used. `mounts` and
    `proc_cgroup` stand for /proc/self/mounts and /proc/self/cgroup (tests)."""
    if kind not in KINDS:
        raise ContainmentUnavailable(f"unknown containment {kind!r}; use one of {KINDS}")
    if mounts is None:
        mounts = Path("/proc/self/mounts").read_text()
    if proc_cgroup is None:
        proc_cgroup = Path("/proc/self/cgroup").read_text()
    tried = []
    for candidate in ("cgroup2", "cgroup1") if kind == "auto" else (kind,):
        if candidate == "pgroup":
            break
        try:
            chosen = _make(candidate, node, mounts, proc_cgroup)
        except ContainmentUnavailable as e:
            if kind != "auto":
                raise
            tried.append(str(e))
            continue
        log.info("containment: %s, cgroups under %s", chosen.kind, chosen.base)
        return chosen
    log.warning("%s%s", ESCAPE_WARNING, f" ({'; '.join(tried)})" if tried else "")
    return ProcessGroups()


def _make(kind: str, node: str, mounts: str, own: str) -> Cgroup2 | Cgroup1Freezer:
    fstype, controller = ("cgroup2", "") if kind == "cgroup2" else ("cgroup", "freezer")
    mount = find_mount(mounts, fstype, controller)
    if mount is None:
        raise ContainmentUnavailable(f"{kind}: no {controller or fstype} mount")
    base = Path(mount) / own_cgroup(own, controller).lstrip("/") / f"schedulerd-{node}"
    needed = "cgroup.kill" if kind == "cgroup2" else "freezer.state"
    created = False
    try:
        # Tried for real: a read-only mount or a cgroup not delegated to us fails here.
        created = not base.exists()
        base.mkdir(exist_ok=True)
        if not (base / needed).exists():  # cgroup.kill came with Linux 5.14
            raise ContainmentUnavailable(f"{kind}: {base} has no {needed}")
        if not os.access(base / "cgroup.procs", os.W_OK):
            raise ContainmentUnavailable(f"{kind}: {base}/cgroup.procs is not writable")
    except OSError as e:
        raise ContainmentUnavailable(f"{kind}: cannot use {base}: {e}") from e
    finally:
        if created:  # made again with the first part; an agent with no jobs leaves nothing
            with contextlib.suppress(OSError):
                base.rmdir()
    return Cgroup2(base) if kind == "cgroup2" else Cgroup1Freezer(base)


SEARCH_DEPTH = 8  # how deep below a cgroup mount another agent's base is looked for


def bases_of(node: str) -> list[Containment]:
    """Every cgroup base of this node's agents on this machine, wherever it sits in either
    hierarchy (an earlier agent may have run in another cgroup, e.g. a shell before a
    systemd unit, or with another --containment). Adoption sweeps them all for orphans:
    a part record may be lost (a wiped state dir) while its processes live on."""
    mounts = Path("/proc/self/mounts").read_text()
    name = f"schedulerd-{node}"
    found: list[Containment] = []
    for fstype, controller, kind in (
        ("cgroup2", "", Cgroup2),
        ("cgroup", "freezer", Cgroup1Freezer),
    ):
        mount = find_mount(mounts, fstype, controller)
        if mount is None:
            continue
        top = len(Path(mount).parts)
        for root, dirs, _ in os.walk(mount):
            if len(Path(root).parts) - top >= SEARCH_DEPTH:
                dirs[:] = []
                continue
            if name in dirs:
                found.append(kind(Path(root) / name))
            # Never below a base (its jobs' own cgroups), nor into another agent's.
            dirs[:] = [d for d in dirs if not d.startswith("schedulerd-")]
    return found


def purge(node: str, timeout_s: float = 10.0) -> None:
    """Kill every process in this node's cgroups, wherever they sit, and remove them all:
    what tests and benchmarks do after agents they SIGKILLed, and an operator after
    retiring a node. Raises OSError if one is still busy after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    for box in bases_of(node):
        base = Path(box.base)
        for cgroup in box.leftovers(set()):
            box.kill(cgroup)
        dirs = sorted((d for d in base.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
        for d in [*dirs, base]:
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.02)


def find_mount(mounts: str, fstype: str, controller: str = "") -> str | None:
    """The mount point of a cgroup filesystem in /proc/self/mounts text, or None."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4 or fields[2] != fstype:
            continue
        if controller and controller not in fields[3].split(","):
            continue
        # Spaces and the like are octal escapes in mounts (a space is \040).
        return fields[1].encode().decode("unicode_escape").encode("latin-1").decode()
    return None


def own_cgroup(proc_cgroup: str, controller: str = "") -> str:
    """This process's cgroup from /proc/self/cgroup text: the "0::" line for v2, the line
    that lists `controller` for v1. "/" when not found."""
    for line in proc_cgroup.splitlines():
        hid, controllers, path = line.split(":", 2)
        if (not controller and hid == "0" and not controllers) or (
            controller and controller in controllers.split(",")
        ):
            return path or "/"
    return "/"


def _pids(cgroup: str) -> list[int]:
    """The processes of a v1 cgroup and of the cgroups below it (a job running as root may
    make its own): v1's cgroup.procs lists only the cgroup's own."""
    pids = []
    for path in _tree(cgroup):
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            pids += [int(p) for p in Path(path, "cgroup.procs").read_text().split()]
    return pids


def _tree(cgroup: str) -> list[str]:
    """`cgroup` and the cgroups below it, parents first ([] when it is gone)."""
    if not cgroup or not os.path.isdir(cgroup):
        return []
    return [top for top, _, _ in os.walk(cgroup)]


def _under(path: str, base: str) -> bool:
    return path.startswith(base.rstrip("/") + "/")
