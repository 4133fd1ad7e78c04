"""schedctl's argument parsing (the commands themselves run end to end in
tests/test_e2e_api.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedulerd.api.v1 import jobs_pb2
from schedulerd.cli.format import job_detail
from schedulerd.cli.main import _gpus, build_parser


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", (1, 1)), ("4", (4, 4)), ("1:4", (1, 4)), ("2:2", (2, 2))],
    ids=["one", "rigid", "elastic", "degenerate-range"],
)
def test_gpus_accepts_n_and_min_max(text: str, expected: tuple[int, int]) -> None:
    assert _gpus(text) == expected


@pytest.mark.parametrize("text", ["0", "4:2", "a", "1:", ":4", "-1", "1.5"])
def test_gpus_refuses_what_is_not_a_count_or_range(text: str) -> None:
    with pytest.raises(SystemExit, match="--gpus"):
        _gpus(text)


def test_submit_keeps_the_command_after_the_double_dash() -> None:
    args = build_parser().parse_args(
        ["submit", "--consumer", "/a", "--gpus", "1:4", "--", "python", "-c", "print(1)"]
    )
    assert args.command[-3:] == ["python", "-c", "print(1)"]


def test_a_redacted_job_shows_no_command() -> None:
    spec = jobs_pb2.JobSpec(consumer="/a", user="bob", command=["python", "secret.py"])
    assert "secret.py" in job_detail(jobs_pb2.Job(id=1, spec=spec))
    hidden = job_detail(jobs_pb2.Job(id=1, spec=spec, redacted=True))
    assert "command:    (hidden)" in hidden and "secret.py" not in hidden


def test_credential_options_come_before_the_command() -> None:
    args = build_parser().parse_args(
        ["--token-file", "/t", "--ca", "/ca.crt", "ca", "issue-node", "--ca", "/pki", "n1"]
    )
    assert (args.token_file, args.ca, args.ca_dir) == (Path("/t"), Path("/ca.crt"), Path("/pki"))
    args = build_parser().parse_args(["token", "create", "--user", "a", "--ttl", "1h"])
    assert (args.ttl, args.scope, args.node) == (3600.0, [], False)


def test_a_submission_names_no_user_unless_asked() -> None:
    """The daemon takes the submitter from the credential; --user is for cluster admins."""
    assert build_parser().parse_args(["submit", "--consumer", "/a", "--", "true"]).user == ""
