"""schedctl's argument parsing (the commands themselves run end to end in
tests/test_e2e_api.py)."""

from __future__ import annotations

import pytest

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
