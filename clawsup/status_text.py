"""How a status reply reads to people: the table ``clawsupctl status`` prints, the line
``clawsupctl health`` prints and the words for a program's last exit.

Shared by ``clawsupctl`` (which reads replies with the stdlib json module) and the
supervisor's own log lines, so it works on plain data (dicts and lists as
``msgspec.to_builtins`` or ``json.loads`` give them) and imports neither pyzmq nor
msgspec.
"""

from __future__ import annotations

from clawsup.units import format_duration

# typing.TYPE_CHECKING without importing typing (~4 ms of every `clawsupctl status`).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any


def describe_exit(code: int | None, signal: str | None, reason: str) -> str:
    """``signal SIGKILL (hung: D state for 10s)``, ``exit 1``."""
    what = f"signal {signal}" if signal else f"exit {code}"
    return f"{what} ({reason})" if reason else what


def format_status(reply: Mapping[str, Any]) -> str:
    """The aligned table of a status reply, with model, zone and breaker below it."""
    rows = [["NAME", "STATE", "PID", "PROCS", "UPTIME", "RESTARTS", "LAST EXIT"]]
    for program in reply["programs"]:
        rows.append(_program_row(program))
    lines = table(rows)
    extras = []
    if reply["model"]:
        extras.append(f"model: {reply['model']}")
    if reply["timezone"]:
        extras.append(f"timezone: {reply['timezone']}")
    breaker = reply["breaker"]
    if breaker is not None and breaker["state"] != "closed":
        extras.append(f"breaker: {breaker['state']} (using {breaker['active_model']})")
    if extras:
        lines.append("")
        lines.append("   ".join(extras))
    return "\n".join(lines)


def _program_row(program: Mapping[str, Any]) -> list[str]:
    state = program["state"]
    flags = [flag for flag in ("hung", "unkillable") if program[flag]]
    if program.get("stuck_thread"):
        flags.append(program["stuck_thread"])
    if program["liveness"] == "failing":
        flags.append("liveness failing")
    if program["next_start_in"] is not None:
        flags.append(f"next start in {format_duration(program['next_start_in'])}")
    if flags:
        state += f" ({', '.join(flags)})"
    last_exit = program["last_exit"]
    return [
        program["name"] + (" *" if program["main"] else ""),
        state,
        "-" if program["pid"] is None else str(program["pid"]),
        "-" if program["pid"] is None else str(program["processes"]),  # its whole tree
        "-" if program["uptime"] is None else format_duration(round(program["uptime"])),
        str(program["restarts"]),
        "-"
        if last_exit is None
        else describe_exit(last_exit["code"], last_exit["signal"], last_exit["reason"]),
    ]


def health_line(healthy: bool, reasons: Sequence[str]) -> str:
    if healthy:
        return "healthy"
    return "unhealthy: " + ("; ".join(reasons) or "no reason given")


def table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Columns padded to their widest cell, two spaces apart, no trailing blanks."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
