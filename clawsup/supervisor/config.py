"""The configuration: one frozen, typed struct built once from TOML.

Components take the part they need (``Config.janitor``, ``Config.programs[name]``...).

A config is checked in one walk (``config_problems``) that reports every problem at once,
each as "file: key: what is wrong": msgspec alone stops at the first. Each rule is
written once, where the key is declared: the type (msgspec checks it), a ``Check`` in
the field's ``Annotated`` type (a rule about one value, including what only this machine
can answer: an executable, a directory, a user, an environment variable), or the
section's ``__post_init__`` (a rule relating several keys of one table, checked once
each of them decodes: a value a ``Check`` refuses still does).
"""

from __future__ import annotations

import math
import os
import pwd
import re
import shutil
import signal
import tomllib
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, Union, get_args, get_origin

import msgspec

from clawsup.supervisor.kinds import DEFAULT_ALERT_KINDS, EVENT_KINDS
from clawsup.supervisor.resources import Limits
from clawsup.units import Duration, Size, parse_duration, parse_size

DEFAULT_CONFIG_PATH = "/etc/clawsup/clawsup.toml"

# Every kind may be alerted on (kinds.py).
ALERT_EVENT_KINDS = frozenset(EVENT_KINDS)


# Signals clawsup receives only to pass on to programs (``forward_signals``).
FORWARDABLE_SIGNALS = frozenset({signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH})
# What the main program gets when its config does not say: not USR1 (see forward_signals).
DEFAULT_MAIN_FORWARDS = frozenset({signal.SIGUSR2, signal.SIGWINCH})


class ConfigError(Exception):
    """A config that cannot be used: each of ``problems`` names file, key and expectation."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


class Check:
    """A rule about one value, put in the field's type: ``Annotated[str, Check(rule)]``.

    ``rule(value, table)`` gets the decoded value and the raw table that holds it (for
    the keys the answer depends on) and returns what is wrong, or None.
    """

    def __init__(self, rule: Callable[[Any, Mapping[str, Any]], str | None]) -> None:
        self.rule = rule


class HostCheck(Check):
    """A rule only the machine that runs clawsup can answer (an executable, a directory,
    a user, an environment variable): skipped when a config is only read elsewhere."""


class _Section(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


def _signal_number(name: str) -> int:
    """``"SIGTERM"``, ``"TERM"`` or ``"15"`` -> 15; ValueError otherwise."""
    text = name.strip().upper()
    if text.isdigit():
        number = int(text)
        if number in {s.value for s in signal.Signals}:
            return number
    else:
        if not text.startswith("SIG"):
            text = "SIG" + text
        try:
            return signal.Signals[text].value
        except KeyError:
            pass
    raise ValueError(f"expected a signal name like 'SIGTERM', got {name!r}")


def _a_signal(name: str, _table: Mapping[str, Any]) -> str | None:
    try:
        _signal_number(name)
    except ValueError as error:
        return str(error)
    return None


def _forwardable(name: str, _table: Mapping[str, Any]) -> str | None:
    try:
        number = _signal_number(name)
    except ValueError as error:
        return str(error)
    if number not in FORWARDABLE_SIGNALS:
        return (
            f"clawsup passes on only SIGUSR1, SIGUSR2 and SIGWINCH, got {name!r} "
            "(TERM, INT, QUIT and HUP are its own: stop and reload)"
        )
    return None


# What os.path.expandvars replaces; anything it does not know it leaves as it is.
_VARIABLE = re.compile(r"\$(\w+|\{([^}]*)\})", re.ASCII)


def _variables_set(path: str, _table: Mapping[str, Any]) -> str | None:
    unset = [
        match.group(2) if match.group(2) is not None else match.group(1)
        for match in _VARIABLE.finditer(path)
    ]
    unset = [name for name in unset if name not in os.environ]
    if unset:
        names = ", ".join(f"${name}" for name in unset)
        return f"{names} not set in clawsup's environment, so {path!r} would name no real path"
    return None


# A path clawsup expands (``expand_path``: ``~`` and ``$VAR``) before using it.
ExpandedPath = Annotated[str, HostCheck(_variables_set)]


class SupervisorConfig(_Section, frozen=True):
    run_dir: ExpandedPath = "/run/clawsup"
    state_dir: ExpandedPath = "/var/lib/clawsup"
    exit_on_fatal: bool = True
    # Extra control endpoint, e.g. "tcp://0.0.0.0:7777". Only with CURVE keys: an
    # unauthenticated TCP control port is never opened (Circus' mistake).
    control_tcp: str | None = None
    curve_secret_key_file: ExpandedPath | None = None
    curve_authorized_keys_dir: ExpandedPath | None = None
    # Largest control frame accepted: a larger one is answered "too_large"; one over 16
    # times this is dropped by libzmq with its peer (ZMQ_MAXMSGSIZE) before it is buffered.
    max_request_size: Size = Size(1 << 20)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # How a program's whole tree is kept (tree.py): "auto" gives each program a cgroup v2
    # where clawsup may create one, and walks /proc elsewhere; "off" always walks /proc.
    cgroups: Literal["auto", "off"] = "auto"

    def __post_init__(self) -> None:
        if self.control_tcp is not None:
            if not self.control_tcp.startswith("tcp://"):
                raise ValueError("control_tcp must be a tcp:// endpoint")
            if self.curve_secret_key_file is None or self.curve_authorized_keys_dir is None:
                raise ValueError(
                    "control_tcp needs curve_secret_key_file and curve_authorized_keys_dir: "
                    "an unauthenticated TCP control port is never opened"
                )


class Backoff(_Section, frozen=True):
    initial: Duration = Duration(0.5)
    factor: float = 2.0
    max: Duration = Duration(30.0)
    reset_after: Duration = Duration(60.0)
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.factor < 1.0:
            raise ValueError(f"backoff factor must be >= 1.0, got {self.factor}")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"backoff jitter must be between 0 and 1, got {self.jitter}")
        if self.max < self.initial:
            raise ValueError("backoff max must not be below initial")


class CrashLoop(_Section, frozen=True):
    max_restarts: int = 5
    window: Duration = Duration(60.0)
    cooldown: Duration = Duration(300.0)

    def __post_init__(self) -> None:
        if self.max_restarts < 1:
            raise ValueError(f"max_restarts must be >= 1, got {self.max_restarts}")


class Hang(_Section, frozen=True):
    d_state_after: Duration = Duration(10.0)
    sample_interval: Duration = Duration(1.0)
    zombie_children_max: int = 50
    enabled: bool = True

    def __post_init__(self) -> None:
        if self.sample_interval <= 0:
            raise ValueError("sample_interval must be above 0")
        if self.zombie_children_max < 0:
            raise ValueError("zombie_children_max must be >= 0")


class Liveness(_Section, frozen=True):
    http: str | None = None
    tcp: str | None = None
    exec: list[str] | None = None
    period: Duration = Duration(30.0)
    timeout: Duration = Duration(5.0)
    failures: int = 3
    # While STARTING the probe is tried often (watch.py); the first success is what makes
    # the program RUNNING. None within start_timeout is a failed start.
    start_timeout: Duration = Duration(120.0)
    # Deprecated, without effect: probes used to wait this long after RUNNING. The probe
    # now decides when the program is RUNNING, so there is nothing left to wait for.
    # Accepted (with a warning, see ``deprecations``) so an old config still starts.
    initial_delay: Duration | None = None

    def __post_init__(self) -> None:
        given = [k for k in ("http", "tcp", "exec") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"liveness needs exactly one of http, tcp or exec, got {given or 'none'}"
            )
        if self.http is not None and not self.http.startswith("http://"):
            raise ValueError(f"liveness http must be an http:// URL, got {self.http!r}")
        if self.tcp is not None:
            host, sep, port = self.tcp.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"liveness tcp must be HOST:PORT, got {self.tcp!r}")
        if self.exec is not None and not self.exec:
            raise ValueError("liveness exec must be a non-empty command list")
        if self.failures < 1:
            raise ValueError("liveness failures must be >= 1")
        if self.period <= 0 or self.timeout <= 0:
            raise ValueError("liveness period and timeout must be above 0")
        if self.start_timeout <= 0:
            raise ValueError("liveness start_timeout must be above 0")


class Logs(_Section, frozen=True):
    """What is kept of a program's output (logbuffer.py), besides the container log."""

    # The newest lines kept for `clawsupctl logs`: bytes of memory (an ASCII line, its
    # length plus ~170).
    buffer: Size = Size(1 << 20)
    # Also append them to this file, rotated by rename past max_size (0: never rotated),
    # keeping this many old files (FILE.1 is the newest).
    file: ExpandedPath | None = None
    max_size: Size = Size(10 << 20)
    backups: int = 3

    def __post_init__(self) -> None:
        if self.backups < 0:
            raise ValueError(f"backups must be >= 0, got {self.backups}")
        if self.file is not None and not self.file:
            raise ValueError("file must be a path")


class Resources(_Section, frozen=True):
    """Limits on what a program's whole tree uses (resources.py judges them)."""

    max_rss: Size | None = None
    # Percent of one core: 150 is one and a half cores.
    max_cpu: float | None = None
    # How long max_cpu must be exceeded without a break.
    window: Duration = Duration(60.0)

    def __post_init__(self) -> None:
        if self.max_rss is not None and self.max_rss <= 0:
            raise ValueError(f"max_rss must be above 0, got {self.max_rss}")
        if self.max_cpu is not None and not (math.isfinite(self.max_cpu) and self.max_cpu > 0):
            raise ValueError("max_cpu must be a percentage of one core above 0 (150 is one "
                             f"and a half cores), got {self.max_cpu!r}")
        if not (math.isfinite(self.window) and self.window > 0):
            raise ValueError(f"window must be a duration above 0, got {self.window!r}")

    @property
    def limits(self) -> Limits:
        return Limits(max_rss=self.max_rss, max_cpu=self.max_cpu, window=self.window)


def _words(command: list[str], _table: Mapping[str, Any]) -> str | None:
    if not command or not all(command):
        return "must be a non-empty list of non-empty strings"
    return None


def _executable(command: list[str], program: Mapping[str, Any]) -> str | None:
    """Whether ``command[0]`` names an executable the way the spawn will look it up: a
    name through the program's PATH, a relative path from its directory."""
    name = command[0]
    if "/" not in name:
        environment = program.get("environment")
        search = os.environ.get("PATH", os.defpath)
        if isinstance(environment, dict) and isinstance(environment.get("PATH"), str):
            search = environment["PATH"]
        if shutil.which(name, path=search) is None:
            return f"{name!r} is not an executable found on PATH ({search})"
        return None
    directory = program.get("directory")
    path = Path(directory if isinstance(directory, str) else ".") / name
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"{name!r} is not an executable file"
    return None


def _a_directory(directory: str, _table: Mapping[str, Any]) -> str | None:
    # As the spawn uses it: cwd is not expanded.
    if not Path(directory).is_dir():
        return f"directory {directory} does not exist"
    return None


def _a_user(user: str, _table: Mapping[str, Any]) -> str | None:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return f"no user named {user!r} on this system"
    return None


class ProgramConfig(_Section, frozen=True):
    command: Annotated[list[str], Check(_words), HostCheck(_executable)]
    main: bool = False
    environment: dict[str, str] = {}
    directory: Annotated[str, HostCheck(_a_directory)] | None = None
    user: Annotated[str, HostCheck(_a_user)] | None = None
    autostart: bool = True
    autorestart: Literal["always", "on-failure", "never"] = "always"
    # Exit codes that count as success for autorestart = "on-failure".
    exit_codes: list[int] = msgspec.field(default_factory=lambda: [0])
    start_seconds: Duration = Duration(1.0)
    stop_signal: Annotated[str, Check(_a_signal)] = "SIGTERM"
    stop_timeout: Duration = Duration(10.0)
    backoff: Backoff = Backoff()
    crash_loop: CrashLoop = CrashLoop()
    hang: Hang = Hang()
    liveness: Liveness | None = None
    logs: Logs = Logs()
    resources: Resources = Resources()
    # Which of the signals clawsup receives and passes on (USR1, USR2, WINCH) go to this
    # program's process group. None: USR2 and WINCH for the main program, none for the
    # others. USR1 only when listed: Node opens its inspector (a debugger on
    # 127.0.0.1:9229, code execution for any local user) on USR1 unless started with
    # --disable-sigusr1 or once a script handles USR1, as the gateway does only late.
    forward_signals: list[Annotated[str, Check(_forwardable)]] | None = None

    @property
    def stop_signal_number(self) -> int:
        return _signal_number(self.stop_signal)

    @property
    def forwarded_signals(self) -> frozenset[int]:
        """The signal numbers passed on to this program when clawsup receives them."""
        if self.forward_signals is None:
            return DEFAULT_MAIN_FORWARDS if self.main else frozenset()
        return frozenset(_signal_number(name) for name in self.forward_signals)


class JanitorConfig(_Section, frozen=True):
    sessions: list[ExpandedPath] = msgspec.field(
        default_factory=lambda: ["~/.clawdbot/agents/*/sessions"]
    )
    interval: Duration = Duration(5.0)
    max_session_size: Size = Size(10 << 20)
    lock_max_age: Duration = Duration(300.0)
    # None: the gateway's own turn timeout plus a margin (message_timeout.py), so a stuck
    # message is acted on only after the gateway had its chance to end the turn itself.
    message_timeout: Duration | None = None
    archive_retention: Duration = Duration(7 * 86400.0)
    restart_flag: ExpandedPath | None = "~/.clawdbot/restart.flag"
    ops_requests: ExpandedPath | None = "~/.clawdbot/ops-requests"
    # Full pass even when inotify saw nothing: the safety net for missed events.
    full_pass_every: Duration = Duration(60.0)

    def __post_init__(self) -> None:
        if self.interval <= 0:
            raise ValueError("interval must be above 0")


class GatewayConfigFile(_Section, frozen=True):
    path: ExpandedPath = "~/.clawdbot/clawdbot.json"
    model_key: str = "agents.defaults.model.primary"
    timezone_key: str = "agents.defaults.userTimezone"
    # How a change reaches the gateway: its own file watcher ("reload") or a restart.
    apply: Literal["reload", "restart"] = "reload"
    allowed_models: list[str] = []
    # Which program the settings belong to; the main program when left out.
    program: str | None = None
    # Write a minimal config (local mode, workspace beside it) at start when there is
    # none: a fresh container's volume is empty (firstrun.py).
    create_if_missing: bool = False


class BreakerConfig(_Section, frozen=True):
    fallbacks: list[str] = []
    failures: int = 3
    window: Duration = Duration(600.0)
    cooldown: Duration = Duration(300.0)
    max_cooldown: Duration = Duration(3600.0)

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("breaker failures must be >= 1")


def _check_url(key: str, url: str) -> None:
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise ValueError(f"{key} must be an http:// or https:// URL, got {url!r}")


class TelegramConfig(_Section, frozen=True):
    chat_id: str
    token_env: str = "CLAWSUP_TELEGRAM_TOKEN"
    api_base: str = "https://api.telegram.org"
    timeout: Duration = Duration(10.0)

    def __post_init__(self) -> None:
        _check_url("api_base", self.api_base)


class WebhookConfig(_Section, frozen=True):
    url: str
    timeout: Duration = Duration(10.0)

    def __post_init__(self) -> None:
        _check_url("url", self.url)


class AlertsConfig(_Section, frozen=True):
    events: list[str] = msgspec.field(default_factory=lambda: sorted(DEFAULT_ALERT_KINDS))
    quiet_period: Duration = Duration(600.0)
    queue_size: int = 100
    retries: int = 5
    telegram: TelegramConfig | None = None
    webhook: WebhookConfig | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.events) - ALERT_EVENT_KINDS)
        if unknown:
            raise ValueError(
                f"unknown alert event kinds {unknown}; known: {sorted(ALERT_EVENT_KINDS)}"
            )


class MetricsConfig(_Section, frozen=True):
    listen: str = "127.0.0.1:9464"

    def __post_init__(self) -> None:
        try:
            parse_listen(self.listen)
        except ValueError as error:
            raise ValueError(f"listen: {error}") from None


def parse_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:9464"`` / ``"[::1]:9464"`` / ``"localhost:0"`` -> (host, port)."""
    text = listen.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"expected '[IPv6]:PORT', got {listen!r}")
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            raise ValueError(
                f"expected 'HOST:PORT' (IPv6 as '[::1]:9464'), got {listen!r}"
            )
    if not host:
        raise ValueError(f"missing the host in {listen!r}")
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"expected a port number 0-65535 in {listen!r}, got {port_text!r}")
    return host, int(port_text)


class Config(_Section, frozen=True):
    programs: dict[str, ProgramConfig]
    supervisor: SupervisorConfig = SupervisorConfig()
    janitor: JanitorConfig = JanitorConfig()
    gateway_config: GatewayConfigFile = GatewayConfigFile()
    breaker: BreakerConfig | None = None
    alerts: AlertsConfig | None = None
    metrics: MetricsConfig | None = None

    def __post_init__(self) -> None:
        if not self.programs:
            raise ValueError("at least one [programs.NAME] table is required")
        mains = [name for name, program in self.programs.items() if program.main]
        if len(mains) != 1:
            raise ValueError(
                f"exactly one program must have main = true, got {len(mains)}"
                + (f" ({', '.join(mains)})" if mains else "")
            )
        if self.gateway_config.program is not None and (
            self.gateway_config.program not in self.programs
        ):
            raise ValueError(
                f"gateway_config.program names {self.gateway_config.program!r}, "
                "which is not a program"
            )

    @property
    def main_program(self) -> str:
        return next(name for name, program in self.programs.items() if program.main)


def deprecations(config: Config) -> list[str]:
    """Keys that are accepted but do nothing any more, each with why (for run and check)."""
    found = []
    for name, program in config.programs.items():
        if program.liveness is not None and program.liveness.initial_delay is not None:
            found.append(
                f"programs.{name}.liveness.initial_delay is deprecated and has no effect: "
                f"{name} is STARTING until its first liveness probe passes (at most "
                f"liveness.start_timeout, {program.liveness.start_timeout:g}s), so there is "
                "no start-up left for probes to wait out; remove the key"
            )
    return found


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Duration:
        return parse_duration(value)
    if kind is Size:
        return parse_size(value)
    raise NotImplementedError(f"cannot decode {kind}")


def expand_path(path: str) -> Path:
    """``~`` and ``$VAR`` expanded at load time; the result is absolute."""
    return Path(os.path.expandvars(os.path.expanduser(path))).absolute()


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --- the walk that finds every problem ------------------------------------------------


def config_problems(raw: Mapping[str, Any], *, on_this_host: bool = True) -> list[str]:
    """Every problem of a raw (TOML) config, each as "key: what is wrong"; [] when none.

    ``on_this_host=False`` leaves out the ``HostCheck`` rules: for reading a config meant
    for another machine (the image's, from outside it).
    """
    return [problem.text for problem in _Walk(on_this_host).problems(raw, Config, "")]


class _Problem(NamedTuple):
    text: str
    # Broken by a Check only: the value still decodes, so the rules relating it to the
    # other keys of its table can be checked too.
    decodes: bool = False


class _Walk:
    """One walk over a raw config, with or without the host's rules."""

    def __init__(self, on_this_host: bool) -> None:
        self.on_this_host = on_this_host

    def problems(self, value: Any, kind: Any, key: str) -> list[_Problem]:
        """The problems of ``value`` read as ``kind`` at ``key``: tables key by key, so one
        bad key does not hide the others; any other value as one whole."""
        table = _struct_in(kind)
        if table is not None and isinstance(value, dict):
            return self.table_problems(value, table, key)
        entries = _dict_of_tables(kind)
        if entries is not None and isinstance(value, dict):
            return [
                problem
                for name, entry in value.items()
                for problem in self.problems(entry, entries, _join(key, str(name)))
            ]
        return _decoding_problems(value, kind, key)

    def table_problems(
        self, raw: dict[str, Any], table: type[msgspec.Struct], key: str
    ) -> list[_Problem]:
        fields = {field.encode_name: field for field in msgspec.structs.fields(table)}
        problems = [
            _Problem(f"{_join(key, name)}: unknown key") for name in raw if name not in fields
        ]
        for name, field in fields.items():
            if name not in raw:
                if field.required:
                    problems.append(_Problem(f"{_join(key, name)}: missing (required)"))
                continue
            found_at = _join(key, name)
            found = self.problems(raw[name], field.type, found_at)
            problems += found or self.check_problems(raw[name], field.type, raw, found_at)
        if not all(problem.decodes for problem in problems):
            return problems
        # Each key decodes: what is left is a rule relating several (__post_init__).
        return problems + _decoding_problems(raw, table, key)

    def check_problems(
        self, value: Any, kind: Any, table: Mapping[str, Any], key: str
    ) -> list[_Problem]:
        """What the ``Check`` rules in ``kind`` say of a value of that type; the first
        broken rule of a value, as later rules may rely on earlier ones."""
        origin = get_origin(kind)
        if origin is Annotated:
            base, *extras = get_args(kind)
            found = self.check_problems(value, base, table, key)
            checks = [extra for extra in extras if isinstance(extra, Check)]
            if not self.on_this_host:
                checks = [check for check in checks if not isinstance(check, HostCheck)]
            for check in checks:
                if found:
                    break
                message = check.rule(value, table)
                if message is not None:
                    found = [_Problem(f"{key}: {message}", decodes=True)]
            return found
        if origin in (Union, types.UnionType):
            if value is None:
                return []
            return [
                p for member in get_args(kind)
                for p in self.check_problems(value, member, table, key)
            ]
        if origin is list:
            (item,) = get_args(kind)
            return [
                p for index, element in enumerate(value)
                for p in self.check_problems(element, item, table, f"{key}[{index}]")
            ]
        return []


def _decoding_problems(value: Any, kind: Any, key: str) -> list[_Problem]:
    """What msgspec says of ``value`` as ``kind``: its first problem only."""
    try:
        msgspec.convert(value, kind, dec_hook=_dec_hook)
    except msgspec.ValidationError as error:
        return [_Problem(_described(error, key, kind))]
    return []


def _struct_in(kind: Any) -> type[msgspec.Struct] | None:
    """The table type ``kind`` is, or holds as ``X | None``."""
    members = get_args(kind) if get_origin(kind) in (Union, types.UnionType) else ()
    for member in (kind, *members):
        if isinstance(member, type) and issubclass(member, msgspec.Struct):
            return member
    return None


def _dict_of_tables(kind: Any) -> type[msgspec.Struct] | None:
    if get_origin(kind) is dict:
        return _struct_in(get_args(kind)[1])
    return None


def _allowed(kind: Any) -> list[str]:
    """The values of a ``Literal`` type (also inside ``X | None``)."""
    if get_origin(kind) is Literal:
        return [str(value) for value in get_args(kind)]
    return [value for member in get_args(kind) for value in _allowed(member)]


def _join(key: str, part: str) -> str:
    if not key:
        return part
    return f"{key}{part}" if part.startswith("[") else f"{key}.{part}"


def _described(error: msgspec.ValidationError, key: str, kind: Any) -> str:
    # msgspec says "Expected `int`, got `str` - at `$[1]`"; operators want
    # "key[1]: expected int, got str" and, for a choice, what may be chosen.
    message, sep, where = str(error).rpartition(" - at `")
    if not sep:
        message, where = str(error), "$`"
    key = _join(key, where.rstrip("`").removeprefix("$").lstrip(".")) if where != "$`" else key
    message = message.replace("`", "")
    message = message[:1].lower() + message[1:]
    if message.startswith("object contains unknown field"):
        return f"{_join(key, message.split('unknown field', 1)[1].strip())}: unknown key"
    allowed = _allowed(kind)
    if allowed and message.startswith("invalid enum value"):
        message += f"; allowed: {', '.join(allowed)}"
    return f"{key}: {message}" if key else message


def parse_config(
    raw: dict[str, Any], source: str = "<config>", *, on_this_host: bool = True
) -> Config:
    """The Config of a raw (TOML) config; ConfigError listing every problem."""
    problems = config_problems(raw, on_this_host=on_this_host)
    if problems:
        raise ConfigError(*(f"{source}: {problem}" for problem in problems))
    return msgspec.convert(raw, Config, dec_hook=_dec_hook)


def load_config(*paths: str | Path, on_this_host: bool = True) -> Config:
    """Read one TOML file, or several merged in order (later keys win), into a Config
    (``on_this_host``: see ``config_problems``)."""
    if not paths:
        raise ConfigError("no config file given")
    merged: dict[str, Any] = {}
    for path in paths:
        try:
            with open(path, "rb") as handle:
                raw = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such file") from None
        except PermissionError:
            raise ConfigError(f"{path}: permission denied") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, not a config file") from None
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from None
        except UnicodeDecodeError as error:
            raise ConfigError(f"{path}: not UTF-8 text: {error}") from None
        merged = _merge(merged, raw)
    return parse_config(merged, ", ".join(str(p) for p in paths), on_this_host=on_this_host)


def default_config_path() -> str:
    return os.environ.get("CLAWSUP_CONFIG") or DEFAULT_CONFIG_PATH
