"""`schedctl token`: bearer tokens for programs and remote users (docs/security.md).

schedctl token create --user U --ttl 30d [--scope S]... [--node]
schedctl token list [--user U] [--all]
schedctl token revoke ID

`create` writes the secret alone to stdout and the rest to stderr, so that
`(umask 077; schedctl token create ... > FILE)` makes a token file.
"""

from __future__ import annotations

import argparse
import re
import sys

from schedulerd.api.v1 import admin_pb2
from schedulerd.cli import format as fmt
from schedulerd.client import Client

# The daemon's scopes (schedulerd.auth.identity.Scope); it refuses any other name.
SCOPES = ("submit", "read", "admin", "experiments")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> float:
    """`45s`, `10m`, `1h`, `30d` → seconds."""
    match = re.fullmatch(r"([0-9]+)([smhd])", text.strip())
    if not match or int(match[1]) == 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a positive whole number and a unit: 45s, 10m, 1h or 30d"
        )
    return float(int(match[1]) * _UNITS[match[2]])


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    t = sub.add_parser("token", help="bearer tokens: create, list, revoke")
    tsub = t.add_subparsers(dest="token_cmd", required=True, metavar="ACTION")
    c = tsub.add_parser(
        "create",
        help="a new token; the secret goes to stdout, once",
        description="Make a token. Its secret is printed once, alone on stdout (the rest "
        "goes to stderr): `(umask 077; schedctl token create ... > FILE)` keeps it in a file "
        "for --token-file or SCHEDULERD_TOKEN_FILE.",
    )
    c.add_argument("--user", required=True, help="whose token (a node's name with --node)")
    c.add_argument("--ttl", type=parse_ttl, required=True, help="lifetime: 45s, 10m, 1h, 30d")
    c.add_argument(
        "--scope",
        action="append",
        default=[],
        choices=SCOPES,
        help="narrow it to what it is for (repeat); none: all the user's rights",
    )
    c.add_argument("--node", action="store_true", help="a node's token: an agent's credential")
    ls = tsub.add_parser("list", help="tokens and who holds them (never their secrets)")
    ls.add_argument("--user", default="", help="only this user's (default: all you may see)")
    ls.add_argument("--all", action="store_true", help="revoked tokens too")
    ls.add_argument("--json", action="store_true", help="print the tokens as JSON")
    r = tsub.add_parser("revoke", help="stop a token from working, now")
    r.add_argument("id", help="the token's id, as `token list` shows it")


def run(client: Client, args: argparse.Namespace) -> int:
    if args.token_cmd == "create":
        resp = client.create_token(args.user, args.ttl, args.scope, args.node)
        tok = resp.token
        print(
            f"token {tok.id} for {_holder(tok)}, scopes: {_scopes(tok)}, "
            f"expires {fmt.timestamp(tok.expires_at.seconds)}; its secret, shown only now:",
            file=sys.stderr,
        )
        print(resp.secret, flush=True)
    elif args.token_cmd == "list":
        tokens = client.list_tokens(args.user, include_revoked=args.all)
        print(fmt.as_json(tokens) if args.json else tokens_table(tokens))
    else:
        tok = client.revoke_token(args.id)
        print(f"token {tok.id} of {_holder(tok)} revoked")
    return 0


def tokens_table(tokens: list[admin_pb2.Token]) -> str:
    rows = [
        [
            t.id,
            _holder(t),
            _scopes(t),
            fmt.timestamp(t.created_at.seconds),
            t.created_by,
            fmt.timestamp(t.expires_at.seconds),
            fmt.timestamp(t.revoked_at.seconds) if t.HasField("revoked_at") else "-",
        ]
        for t in tokens
    ]
    headers = ["ID", "HOLDER", "SCOPES", "CREATED", "BY", "EXPIRES", "REVOKED"]
    return fmt.table(headers, rows)


def _holder(t: admin_pb2.Token) -> str:
    return f"node:{t.user}" if t.node else t.user


def _scopes(t: admin_pb2.Token) -> str:
    return ",".join(t.scopes) or "all"
