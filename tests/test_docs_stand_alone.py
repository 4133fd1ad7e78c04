"""The project's docs stand alone: every document that code or docs cite is in the
repository (issue 14, item 5; docs/design/README.md).

Checked over the tracked files (git ls-files), as they are in the working tree:
- no reference to the design documents outside the repository (`shared/design`, or the
  old file names of the pages now in docs/design/);
- no `../shared/...` path other than the trace data and the peer systems' scripts, which
  are data and peers, not docs;
- every `docs/....md` path, and every relative `.md` link of a Markdown file, names a
  file that exists;
- the pages that comments cite by their short names (SEMANTICS, ARCHITECTURE,
  FIELD-NOTES) exist.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SELF = Path(__file__).resolve()

# `../shared/<what>` that may be named: data (traces) and other systems (peers).
ALLOWED_SHARED = {"traces", "peers"}
SHORT_NAMES = {
    "SEMANTICS": "docs/design/semantics.md",
    "ARCHITECTURE": "docs/design/architecture.md",
    "FIELD-NOTES": "docs/design/field-notes.md",
}

OUTSIDE_DESIGN = re.compile(r"shared/design")
OLD_FILE_NAMES = re.compile(r"\b(?:" + "|".join(map(re.escape, SHORT_NAMES)) + r")\.md\b")
SHARED_PATH = re.compile(r"\.\./shared/([A-Za-z0-9_.-]+)")
DOCS_PATH = re.compile(r"(?<![\w./-])docs/[\w./-]*?\.md\b")
MD_LINK = re.compile(r"\]\(([^)\s#:]+\.md)(?:#[^)\s]*)?\)")


def tracked_text_files() -> list[Path]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    files = []
    for name in out.split("\0"):
        path = ROOT / name
        if not name or path.resolve() == SELF or not path.is_file():
            continue
        try:
            path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary (images, ...)
        files.append(path)
    return files


def problems() -> list[str]:
    found: list[str] = []
    for path in tracked_text_files():
        rel = path.relative_to(ROOT)
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            where = f"{rel}:{lineno}"
            if OUTSIDE_DESIGN.search(line):
                found.append(f"{where}: cites shared/design (now docs/design/): {line.strip()}")
            for m in OLD_FILE_NAMES.finditer(line):
                found.append(f"{where}: cites {m.group(0)}, not in the repository")
            for m in SHARED_PATH.finditer(line):
                if m.group(1) not in ALLOWED_SHARED:
                    found.append(f"{where}: cites {m.group(0)}, outside the repository")
            for m in DOCS_PATH.finditer(line):
                if not (ROOT / m.group(0)).is_file():
                    found.append(f"{where}: cites {m.group(0)}, which does not exist")
            if path.suffix == ".md":
                for m in MD_LINK.finditer(line):
                    target = (path.parent / m.group(1)).resolve()
                    if not target.is_file():
                        found.append(f"{where}: links {m.group(1)}, which does not exist")
    return found


def test_short_names_name_pages_that_exist() -> None:
    for name, page in SHORT_NAMES.items():
        assert (ROOT / page).is_file(), f"{name} should be {page}"
    assert (ROOT / "docs/design/README.md").is_file()


def test_no_citation_points_outside_the_repository() -> None:
    found = problems()
    assert not found, "\n".join(found)
