"""Throwaway Unix users for tests (FIELD-NOTES: root may useradd/userdel here): made
with a unique name, always removed with their home and group."""

from __future__ import annotations

import contextlib
import pwd
import secrets
import subprocess
from collections.abc import Iterator


@contextlib.contextmanager
def throwaway_user(prefix: str = "sdt") -> Iterator[pwd.struct_passwd]:
    name = f"{prefix}-{secrets.token_hex(3)}"
    subprocess.run(["useradd", "--create-home", "--user-group", name], check=True)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)
