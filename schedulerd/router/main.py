"""Placeholder until the router lands (docs/serve.md)."""


def main() -> None:
    raise SystemExit("schedulerd-router: not built yet")
