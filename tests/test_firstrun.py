"""First run (clawsup/supervisor/firstrun.py): a minimal gateway config on an empty volume,
an existing one untouched, and a gateway that would refuse to bind for want of a token
reported as one line before anything starts."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawsup.supervisor.config import Config, load_config
from clawsup.supervisor.firstrun import (
    TOKEN_VARIABLE,
    FirstRunError,
    auth_problem,
    create_gateway_config,
    minimal_gateway_config,
    prepare,
)
from tests.util import REPO, Clawsup, wait_until

GATEWAY_COMMAND = ["node", "dist/index.js", "gateway", "--bind", "lan", "--port", "18789"]


def write_config(tmp_path: Path, *, command: list[str] | None = None,
                 create: bool = True, environment: dict[str, str] | None = None,
                 gateway_config: Path | None = None) -> Path:
    path = tmp_path / "clawsup.toml"
    gateway_config = gateway_config or tmp_path / "home" / ".clawdbot" / "clawdbot.json"
    path.write_text(
        "[supervisor]\n"
        f"run_dir = {json.dumps(str(tmp_path / 'run'))}\n"
        f"state_dir = {json.dumps(str(tmp_path / 'state'))}\n"
        "[programs.gateway]\n"
        f"command = {json.dumps(command or GATEWAY_COMMAND)}\n"
        "main = true\n"
        f"environment = {{ {', '.join(f'{k} = {json.dumps(v)}' for k, v in (environment or {}).items())} }}\n"
        "[janitor]\n"
        f"sessions = [{json.dumps(str(tmp_path / 'home' / '.clawdbot' / 'agents' / '*' / 'sessions'))}]\n"
        "restart_flag = \"\"\n"
        "[gateway_config]\n"
        f"path = {json.dumps(str(gateway_config))}\n"
        f"create_if_missing = {'true' if create else 'false'}\n"
    )
    return path


def config_of(tmp_path: Path, **kwargs: object) -> Config:
    return load_config(write_config(tmp_path, **kwargs))  # type: ignore[arg-type]


TOKEN_ENV = {TOKEN_VARIABLE: "s3cret"}


# -- the minimal gateway config ------------------------------------------------------------


def test_a_missing_gateway_config_is_written_with_local_mode_and_the_workspace_beside_it(
    tmp_path: Path,
) -> None:
    config = config_of(tmp_path)
    prepare(config, TOKEN_ENV)
    path = tmp_path / "home" / ".clawdbot" / "clawdbot.json"
    doc = json.loads(path.read_text())
    assert doc == {
        "gateway": {"mode": "local"},
        "agents": {"defaults": {"workspace": str(path.parent / "workspace")}},
    }
    assert doc == minimal_gateway_config(path)


def test_the_written_config_is_private_and_its_new_directories_too(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "clawdbot.json"
    assert create_gateway_config(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    # No temp file left beside it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["clawdbot.json"]


@pytest.mark.skipif(os.geteuid() != 0, reason="giving files to another user needs root")
def test_as_root_what_is_created_belongs_to_the_programs_user(tmp_path: Path) -> None:
    """clawsup as root with a program `user`: the gateway must be able to rewrite it."""
    nobody = pwd.getpwnam("nobody")
    path = tmp_path / "home" / ".clawdbot" / "clawdbot.json"
    assert create_gateway_config(path, "nobody") is True
    for created in (path, path.parent, path.parent.parent):
        info = created.stat()
        assert (info.st_uid, info.st_gid) == (nobody.pw_uid, nobody.pw_gid), created
    assert tmp_path.stat().st_uid == 0


def test_an_existing_gateway_config_is_left_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "home" / ".clawdbot" / "clawdbot.json"
    path.parent.mkdir(parents=True)
    original = b"// mine\n{ gateway: { mode: 'remote' }, }\n"
    path.write_bytes(original)
    os.chmod(path, 0o640)
    before = path.stat()
    prepare(config_of(tmp_path), TOKEN_ENV)
    after = path.stat()
    assert path.read_bytes() == original
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (
        before.st_ino, before.st_mtime_ns, before.st_mode)
    assert create_gateway_config(path) is False


def test_an_existing_empty_file_is_not_replaced(tmp_path: Path) -> None:
    path = tmp_path / "clawdbot.json"
    path.write_bytes(b"")
    assert create_gateway_config(path) is False
    assert path.read_bytes() == b""


def test_a_symlinked_config_even_dangling_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "clawdbot.json"
    path.symlink_to(tmp_path / "elsewhere.json")
    assert create_gateway_config(path) is False
    assert path.is_symlink()
    assert not (tmp_path / "elsewhere.json").exists()


def test_create_if_missing_off_writes_nothing(tmp_path: Path) -> None:
    prepare(config_of(tmp_path, create=False), TOKEN_ENV)
    assert not (tmp_path / "home").exists()


def test_an_unwritable_directory_is_a_first_run_error_naming_the_path(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        # root writes anywhere: a path under a regular file cannot be created by anyone.
        blocker = tmp_path / "file"
        blocker.write_text("")
        target = blocker / "clawdbot.json"
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "sub" / "clawdbot.json"
    with pytest.raises(FirstRunError, match=str(target)):
        prepare(config_of(tmp_path, gateway_config=target), TOKEN_ENV)


def test_the_real_gateway_reads_the_written_config(tmp_path: Path) -> None:
    """The keys are the gateway's own: its CLI reads the mode and workspace back."""
    node = Path.home() / ".cache/clawsup/gateway-2026.1.24-3/node/bin/node"
    app = Path.home() / ".cache/clawsup/gateway-2026.1.24-3/app/node_modules/clawdbot"
    if not (node.exists() and (app / "dist" / "index.js").exists()):
        pytest.skip("the real gateway is not installed (tools/install-gateway)")
    home = tmp_path / "home"
    path = home / ".clawdbot" / "clawdbot.json"
    assert create_gateway_config(path) is True
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "NO_COLOR": "1",
           "TMPDIR": str(tmp_path)}
    for key, expected in (("gateway.mode", "local"),
                          ("agents.defaults.workspace", str(path.parent / "workspace"))):
        done = subprocess.run([str(node), "dist/index.js", "config", "get", key], cwd=app,
                              env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip().splitlines()[-1] == expected


# -- the auth check ------------------------------------------------------------------------


def problem(tmp_path: Path, env: dict[str, str] | None = None, *,
            command: list[str] | None = None, doc: object = None,
            environment: dict[str, str] | None = None) -> str | None:
    config = config_of(tmp_path, command=command, environment=environment, create=False)
    path = tmp_path / "home" / ".clawdbot" / "clawdbot.json"
    if doc is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return auth_problem(config.programs["gateway"], path, env or {})


def test_lan_without_any_token_is_one_line_naming_the_variable(tmp_path: Path) -> None:
    found = problem(tmp_path, doc={"gateway": {"mode": "local"}})
    assert found is not None
    assert TOKEN_VARIABLE in found
    assert "\n" not in found


def test_a_fresh_volume_without_a_token_fails_prepare(tmp_path: Path) -> None:
    with pytest.raises(FirstRunError, match=TOKEN_VARIABLE):
        prepare(config_of(tmp_path), {})
    # The config was still written: the next start only needs the token.
    assert (tmp_path / "home" / ".clawdbot" / "clawdbot.json").exists()


def test_a_token_in_the_environment_passes(tmp_path: Path) -> None:
    assert problem(tmp_path, TOKEN_ENV) is None
    assert problem(tmp_path, {"CLAWDBOT_GATEWAY_PASSWORD": "pw"}) is None


def test_a_token_in_the_programs_environment_passes(tmp_path: Path) -> None:
    assert problem(tmp_path, environment=TOKEN_ENV) is None


def test_an_empty_token_counts_as_none(tmp_path: Path) -> None:
    # The gateway treats "" as no token: `docker run -e CLAWDBOT_GATEWAY_TOKEN=` is no auth.
    assert problem(tmp_path, {TOKEN_VARIABLE: ""}, doc={}) is not None


def test_auth_in_the_gateway_config_passes(tmp_path: Path) -> None:
    for doc in ({"gateway": {"auth": {"token": "t"}}},
                {"gateway": {"auth": {"password": "p"}}},
                {"env": {TOKEN_VARIABLE: "t"}},
                {"env": {"vars": {TOKEN_VARIABLE: "t"}}},
                "// JSON5\n{ gateway: { auth: { token: 't', }, }, }\n"):
        assert problem(tmp_path, doc=doc) is None, doc


def test_loopback_needs_no_token(tmp_path: Path) -> None:
    command = ["node", "dist/index.js", "gateway", "--port", "18789"]
    assert problem(tmp_path, command=command, doc={}) is None
    assert problem(tmp_path, command=[*command, "--bind=loopback"], doc={}) is None


def test_a_lan_bind_from_the_gateway_config_needs_a_token(tmp_path: Path) -> None:
    command = ["node", "dist/index.js", "gateway", "--port", "18789"]
    assert problem(tmp_path, command=command, doc={"gateway": {"bind": "lan"}}) is not None


def test_auth_on_the_command_line_is_left_to_the_gateway(tmp_path: Path) -> None:
    assert problem(tmp_path, command=[*GATEWAY_COMMAND, "--token", "t"], doc={}) is None
    assert problem(tmp_path, command=[*GATEWAY_COMMAND, "--auth=password"], doc={}) is None


def test_what_cannot_be_read_for_sure_is_left_to_the_gateway(tmp_path: Path) -> None:
    # A malformed config, an $include, a .env file the gateway loads, a shell import.
    assert problem(tmp_path, doc="{ not json5") is None
    assert problem(tmp_path, doc={"$include": "./auth.json5"}) is None
    assert problem(tmp_path, {"CLAWDBOT_LOAD_SHELL_ENV": "1"}, doc={}) is None
    (tmp_path / "home" / ".clawdbot" / ".env").write_text(f"{TOKEN_VARIABLE}=t\n")
    assert problem(tmp_path, doc={}) is None


def test_a_program_that_is_not_the_gateway_command_is_not_judged(tmp_path: Path) -> None:
    demo = [sys.executable, "-m", "clawsup.demo.gateway", "--bind", "lan"]
    assert problem(tmp_path, command=demo, doc={}) is None


# -- through `clawsup run` -----------------------------------------------------------------


def run_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (TOKEN_VARIABLE, "CLAWSUP_CONFIG")}
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), **extra)
    return env


def test_clawsup_run_without_a_token_exits_2_at_once_and_starts_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "started"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')", "gateway", "--bind", "lan"]
    config = write_config(tmp_path, command=command)
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "clawsup", "run", "-c", str(config)],
                          env=run_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert time.monotonic() - started < 10
    # The last line says it; the only other line is the log's note of the config written.
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("clawsup: program gateway: ")
    assert TOKEN_VARIABLE in lines[-1]
    assert [line for line in lines if TOKEN_VARIABLE in line] == lines[-1:]
    assert len(lines) <= 2
    assert not marker.exists()


def test_clawsup_run_writes_the_config_before_the_gateway_starts(tmp_path: Path) -> None:
    seen = tmp_path / "seen.json"
    config_path = tmp_path / "home" / ".clawdbot" / "clawdbot.json"
    # The "gateway" copies the config it finds at its start, then waits to be stopped.
    script = (f"import shutil, time; shutil.copyfile({str(config_path)!r}, {str(seen)!r}); "
              "time.sleep(600)")
    config = write_config(tmp_path, command=[sys.executable, "-c", script, "gateway",
                                             "--bind", "lan"])
    clawsup = Clawsup(config, tmp_path / "clawsup.log",
                      env=run_env(tmp_path, **TOKEN_ENV))
    try:
        wait_until(seen.exists, 20, what="the program's copy of the gateway config")
        assert json.loads(seen.read_text()) == minimal_gateway_config(config_path)
    finally:
        clawsup.stop()
