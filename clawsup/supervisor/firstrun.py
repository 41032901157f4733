"""First run: what the gateway needs before it can start, done once as clawsup starts.

A fresh container has an empty volume: no gateway config. The gateway then refuses to
start (``Missing config ... set gateway.mode=local``), and with ``--bind lan`` and no auth
it refuses again (``Refusing to bind gateway to lan without auth``) -- each a crash loop
that ends in FATAL after minutes of backoff, with the reason buried in the gateway's output.
Two steps, before any program starts, turn that into a container that serves, or one
line that says what to set:

- ``[gateway_config] create_if_missing = true``: when the gateway config does not exist,
  write a minimal one: ``gateway.mode = "local"`` and the agents' workspace inside the
  config's directory (the volume), not the gateway's default ``~/clawd``, which a
  container loses on re-create. An existing file is never touched, whatever it holds:
  the file is linked into place, which fails rather than replace one that appeared
  meanwhile.
- The auth check: a gateway command line that binds a non-loopback address (``--bind
  lan``) with no token or password from anywhere the gateway would find one is reported
  as one line naming CLAWDBOT_GATEWAY_TOKEN, and clawsup exits at once. Only certain
  cases are reported: a ``.env`` file the gateway would load, an unreadable config, an
  auth option on the command line or a login-shell import leave the decision to the
  gateway.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clawsup.supervisor.config import Config, ProgramConfig, expand_path

log = logging.getLogger(__name__)

TOKEN_VARIABLE = "CLAWDBOT_GATEWAY_TOKEN"
PASSWORD_VARIABLE = "CLAWDBOT_GATEWAY_PASSWORD"
# The gateway's own default bind; any other value needs auth.
LOOPBACK = "loopback"
# Command-line options that give the gateway auth (or an explicit mode) by themselves.
AUTH_OPTIONS = ("--token", "--password", "--auth")
WORKSPACE_DIR = "workspace"


class FirstRunError(Exception):
    """The gateway cannot start as configured; the message is one line for the operator."""


def minimal_gateway_config(config_path: Path) -> dict[str, Any]:
    """The config written on first run: local mode, the workspace beside the config."""
    return {
        "gateway": {"mode": "local"},
        "agents": {"defaults": {"workspace": str(config_path.parent / WORKSPACE_DIR)}},
    }


def gateway_program(config: Config) -> tuple[str, ProgramConfig]:
    """The program the gateway config belongs to: ``gateway_config.program`` or main."""
    name = config.gateway_config.program or config.main_program
    return name, config.programs[name]


def prepare(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """Both first-run steps, in order; FirstRunError when the gateway cannot start."""
    env = os.environ if environ is None else environ
    name, program = gateway_program(config)
    path = expand_path(config.gateway_config.path)
    if config.gateway_config.create_if_missing:
        try:
            created = create_gateway_config(path, program.user)
        except OSError as error:
            raise FirstRunError(
                f"cannot write a first gateway config at {path}: {error.strerror or error}"
            ) from None
        if created:
            log.info("no gateway config at %s: wrote one with gateway.mode = local and the "
                     "workspace in %s", path, path.parent / WORKSPACE_DIR)
    problem = auth_problem(program, path, env)
    if problem is not None:
        raise FirstRunError(f"program {name}: {problem}")


def create_gateway_config(path: Path, user: str | None = None) -> bool:
    """Write the minimal config if ``path`` does not exist; whether it was written.

    The directory is created (0700) when missing. The content goes to a temp file in the
    same directory, fsynced, then hard-linked to ``path``: the link fails if anything
    appeared there meanwhile, so an existing config is never replaced, and no reader ever
    sees a half-written file. As root with a program ``user``, what is created belongs to
    that user, as the gateway must be able to rewrite its own config.
    """
    if os.path.lexists(path):
        return False
    owner = _owner(user)
    _make_dirs(path.parent, owner)
    text = json.dumps(minimal_gateway_config(path), indent=2) + "\n"
    temp = path.with_name(f".{path.name}.clawsup-{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if owner is not None:
            os.chown(temp, *owner)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
    _fsync_dir(path.parent)
    return True


def _owner(user: str | None) -> tuple[int, int] | None:
    """uid and gid to give created files: only as root, and only for a named user."""
    if user is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _make_dirs(directory: Path, owner: tuple[int, int] | None) -> None:
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for created in reversed(missing):
        # exist_ok: the gateway or another clawsup may create it at the same moment.
        created.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            os.chown(created, *owner)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _option(command: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` on a command line (the last)."""
    value = None
    for index, word in enumerate(command):
        if word == name and index + 1 < len(command):
            value = command[index + 1]
        elif word.startswith(name + "="):
            value = word[len(name) + 1 :]
    return value


def _has_option(command: list[str], names: tuple[str, ...]) -> bool:
    return any(word == name or word.startswith(name + "=") for word in command for name in names)


def auth_problem(
    program: ProgramConfig, config_path: Path, environ: Mapping[str, str]
) -> str | None:
    """One line when the gateway would refuse to bind for want of auth; None otherwise,
    including whenever that cannot be known for sure."""
    command = program.command
    # The gateway's own command line (`... gateway --bind lan`); any other program is not
    # judged.
    if "gateway" not in command:
        return None
    env = {**environ, **program.environment}
    if any(env.get(variable) for variable in (TOKEN_VARIABLE, PASSWORD_VARIABLE)):
        return None
    if _has_option(command, AUTH_OPTIONS) or env.get("CLAWDBOT_LOAD_SHELL_ENV"):
        return None
    # .env files the gateway loads: its working directory's and its state directory's.
    env_files = [config_path.parent / ".env"]
    if program.directory is not None:
        env_files.append(expand_path(program.directory) / ".env")
    if any(os.path.lexists(candidate) for candidate in env_files):
        return None
    doc = _read_config(config_path)
    if doc is None:
        return None
    bind = _option(command, "--bind") or _get(doc, "gateway", "bind") or LOOPBACK
    if bind == LOOPBACK:
        return None
    auth = _get(doc, "gateway", "auth")
    if isinstance(auth, Mapping) and any(auth.get(k) for k in ("token", "password", "mode")):
        return None
    for variable in (TOKEN_VARIABLE, PASSWORD_VARIABLE):
        if _get(doc, "env", variable) or _get(doc, "env", "vars", variable):
            return None
    if _get(doc, "env", "shellEnv", "enabled"):
        return None
    return (
        f"the gateway binds {bind} and has no auth: set {TOKEN_VARIABLE} "
        f"(e.g. docker run -e {TOKEN_VARIABLE}=$(openssl rand -hex 32) ...) "
        f"or gateway.auth.token in {config_path}"
    )


def _read_config(path: Path) -> dict[str, Any] | None:
    """The gateway config ({} when missing), or None when it cannot be read for sure."""
    # Imported here: it brings json5, which a PID 1 whose gateway has a token never needs.
    from clawsup.supervisor.settings import SettingError, read_gateway_config

    try:
        doc = read_gateway_config(path)
    except SettingError:
        return None
    # `$include` pulls in other files, which could hold the auth.
    if "$include" in json.dumps(doc):
        return None
    return doc


def _get(doc: Mapping[str, Any], *keys: str) -> Any:
    node: Any = doc
    for key in keys:
        if not isinstance(node, Mapping):
            return None
        node = node.get(key)
    return node
