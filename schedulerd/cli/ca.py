"""`schedctl ca`: the cluster CA and its certificates (docs/certificates.md). Offline:
no daemon is involved, only files.

schedctl ca init DIR [--force]                            a new CA: DIR/ca.crt, DIR/ca.key
schedctl ca issue-node --ca DIR NODE [--out D] [--days N]   D/NODE.crt, D/NODE.key
schedctl ca issue-server --ca DIR --host H... [--out D]     D/server.crt, D/server.key
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from schedulerd.cli import format as fmt

if TYPE_CHECKING:
    from schedulerd.auth.ca import Issued


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    c = sub.add_parser("ca", help="the cluster CA: make it, issue node and server certificates")
    csub = c.add_subparsers(dest="ca_cmd", required=True, metavar="ACTION")
    i = csub.add_parser("init", help="make a new CA: DIR/ca.crt and DIR/ca.key (secret)")
    i.add_argument("dir", type=Path, help="a new directory for the CA's files")
    i.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (every certificate it issued stops working)",
    )
    n = csub.add_parser("issue-node", help="an agent's certificate: OUT/NODE.crt and OUT/NODE.key")
    n.add_argument("--ca", dest="ca_dir", type=Path, required=True, help="the CA's directory")
    n.add_argument("node", help="the node's name, as its agent registers")
    n.add_argument("--out", type=Path, default=Path(), help="default: here")
    n.add_argument("--days", type=int, default=365, help="validity (default: 365)")
    s = csub.add_parser(
        "issue-server", help="the daemon's certificate: OUT/server.crt and OUT/server.key"
    )
    s.add_argument("--ca", dest="ca_dir", type=Path, required=True, help="the CA's directory")
    s.add_argument(
        "--host",
        action="append",
        required=True,
        help="a name or IP address clients use to reach the daemon (repeat for each)",
    )
    s.add_argument("--out", type=Path, default=Path(), help="default: here")
    s.add_argument("--days", type=int, default=365, help="validity (default: 365)")


def run(args: argparse.Namespace) -> int:
    # Imported here: `cryptography` is about 40 ms of every other command's start.
    from schedulerd.auth.ca import init_ca, issue_node, issue_server, load_ca

    if args.ca_cmd == "init":
        ca = init_ca(args.dir, force=args.force)
        print(
            f"made {ca.cert.subject.rfc4514_string()} in {args.dir}:\n"
            f"  {args.dir / 'ca.crt'}  public: give it to the daemon, every agent and user\n"
            f"  {args.dir / 'ca.key'}  secret: whoever has it can make any node's certificate"
        )
        return 0
    if args.days < 1:
        raise SystemExit(f"schedctl ca {args.ca_cmd}: --days must be at least 1")
    ca = load_ca(args.ca_dir)
    if args.ca_cmd == "issue-node":
        issued = issue_node(ca, args.node, args.out, days=args.days)
        _wrote(issued, f"node {args.node}; copy both to the node with the CA's ca.crt")
    else:
        issued = issue_server(ca, args.host, args.out, days=args.days)
        _wrote(issued, f"the daemon at {', '.join(args.host)}")
    return 0


def _wrote(issued: Issued, what: str) -> None:
    until = fmt.timestamp(issued.not_after.timestamp())
    print(
        f"wrote {issued.cert_path} and {issued.key_path} (secret, mode 0600), "
        f"valid until {until}, for {what}"
    )
