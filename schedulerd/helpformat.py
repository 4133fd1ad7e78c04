"""`--help` that shows each option's default, as argparse's
ArgumentDefaultsHelpFormatter does, but only where one says something: not for a
flag that is off unless given, an empty value, or a help text that already names it."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.HelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            default in (None, False, "", [], ())
            or default is argparse.SUPPRESS
            or "default" in text.lower()
            or not action.option_strings
        ):
            return action.help
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"
