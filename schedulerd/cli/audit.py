"""`schedctl whoami` (who the daemon takes you for) and `schedctl audit` (who did what)."""

from __future__ import annotations

import argparse

from schedulerd.api.v1 import admin_pb2
from schedulerd.cli import format as fmt
from schedulerd.client import Client


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    w = sub.add_parser("whoami", help="who the daemon takes you for, and how it knows")
    w.add_argument("--json", action="store_true", help="print the answer as JSON")
    a = sub.add_parser("audit", help="the audit trail, newest first: changes and refusals")
    a.add_argument("--limit", type=int, default=100, help="at most N records (default: 100)")
    a.add_argument("--identity", default="", help="only this identity's (e.g. alice, node:n1)")
    a.add_argument("--before", type=int, default=0, metavar="ID", help="records older than ID")
    a.add_argument("--json", action="store_true", help="print the records as JSON")


def whoami(client: Client, args: argparse.Namespace) -> int:
    me = client.whoami()
    print(fmt.as_json(me) if args.json else whoami_text(me))
    return 0


def audit(client: Client, args: argparse.Namespace) -> int:
    records = client.audit(args.limit, args.before, args.identity)
    print(fmt.as_json(records) if args.json else audit_table(records))
    return 0


def whoami_text(me: admin_pb2.WhoAmIResponse) -> str:
    admin = "the cluster" if me.cluster_admin else ", ".join(me.admin_of) or "nothing"
    return "\n".join(
        [
            f"identity:   {me.identity or '-'} ({me.kind})",
            f"proven by:  {me.credential or 'nothing'}",
            f"admin of:   {admin}",
            f"scopes:     {', '.join(me.scopes) or 'all'}",
            f"submits to: {_leaves(list(me.submit_to))}",
        ]
    )


def _leaves(leaves: list[str]) -> str:
    if len(leaves) > 8:
        return ", ".join(leaves[:8]) + f" and {len(leaves) - 8} more"
    return ", ".join(leaves) or "nothing"


def audit_table(records: list[admin_pb2.AuditRecord]) -> str:
    rows = [
        [
            r.id,
            fmt.timestamp(r.time.seconds),
            r.identity,
            r.credential,
            r.action,
            r.object,
            r.result,
            r.detail,
        ]
        for r in records
    ]
    headers = ["ID", "TIME", "IDENTITY", "CREDENTIAL", "ACTION", "OBJECT", "RESULT", "DETAIL"]
    return fmt.table(headers, rows)
