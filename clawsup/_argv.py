"""What clawsup's two command lines (``clawsup``, ``clawsupctl``) share about argparse:
a usage error raised, not exited on, and help laid out without loading shutil.

Light on purpose: ``clawsupctl health`` runs in probes every few seconds and ``clawsup
run`` is PID 1 for the container's whole life.
"""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (~4 ms)
if TYPE_CHECKING:
    from typing import NoReturn


# argparse passes its own words ("options", "show this help message and exit") through
# gettext, which looks for an argparse catalogue on disk each time: 3 lookups per parser,
# about 200 stat() calls for clawsupctl's 17 parsers, two thirds of building them (11 of
# 15 ms with LANG=C.UTF-8 on the 2-core machine) on every probe. Python ships no such
# catalogue, so the words are what they would be anyway.
argparse._ = str  # type: ignore[attr-defined]


class UsageError(Exception):
    """The command line is wrong (exit 2, as argparse would)."""


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a UsageError, for the caller to exit on: the
    exit status is not always 2 (``clawsupctl health`` exits 1, as Docker wants)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)  # --conf is not --config
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


class Formatter(argparse.HelpFormatter):
    """``-c, --config FILE`` (argparse's own: ``-c FILE, --config FILE``), and the width
    argparse gets from shutil.get_terminal_size without importing shutil (with bz2 and
    lzma): argparse builds a formatter to check each argument it is given."""

    _width = 0  # found once: argparse makes a formatter for every argument it is given

    def __init__(self, prog: str) -> None:
        if not Formatter._width:
            Formatter._width = max(_columns() - 2, 40)
        super().__init__(prog, width=Formatter._width)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or action.nargs == 0:
            return super()._format_action_invocation(action)
        value = self._format_args(action, self._get_default_metavar_for_optional(action))
        return f"{', '.join(action.option_strings)} {value}"


def _columns() -> int:
    """The terminal's width as shutil.get_terminal_size finds it: $COLUMNS, the terminal
    on stdout, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 80
    return columns
