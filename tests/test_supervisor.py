"""The supervisor core against real processes and real signals (issue 2, items 2-7)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from clawsup.client import Client, Unreachable
from clawsup.protocol import ProgramStatus
from tests.util import (
    Clawsup,
    image_stand_in,
    incidents,
    python_program,
    wait_incident,
    wait_until,
    write_config,
    zombies_under,
)

FAST = """
start_seconds = "100ms"
stop_timeout = "2s"
backoff = { initial = "100ms", factor = 2.0, max = "1s", reset_after = "3s" }
"""


@pytest.fixture
def run_clawsup(tmp_path: Path) -> Iterator[object]:
    started: list[Clawsup] = []

    def start(body: str, supervisor: str = "", **kwargs: object) -> Clawsup:
        config = write_config(tmp_path, body, supervisor=supervisor)
        instance = Clawsup(config, tmp_path / f"clawsup{len(started)}.log", **kwargs)  # type: ignore[arg-type]
        started.append(instance)
        return instance

    yield start
    for instance in started:
        instance.stop()


def program(code: str, extra: str = "", name: str = "gw", main: bool = True) -> str:
    return textwrap.dedent(f"""
        [programs.{name}]
        command = {python_program(textwrap.dedent(code))}
        main = {"true" if main else "false"}
        """) + FAST + extra


# -- config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ('[programs.gw]\ncommand = ["true"]\nmain = true\nbogus = 1\n', "programs.gw.bogus: unknown key"),
        ('[programs.gw]\ncommand = ["true"]\nmain = true\nstop_timeout = "soon"\n',
         "programs.gw.stop_timeout: expected a duration"),
        ('[programs.gw]\ncommand = ["true"]\nmain = true\n[janitor]\nmax_session_size = "big"\n',
         "janitor.max_session_size: expected a size"),
        ('[programs.gw]\ncommand = ["true"]\n', "exactly one program must have main = true, got 0"),
        ('[programs.a]\ncommand = ["true"]\nmain = true\n[programs.b]\ncommand = ["true"]\nmain = true\n',
         "got 2 (a, b)"),
        ('[programs.gw]\ncommand = "true"\nmain = true\n', "programs.gw.command: expected array"),
        ('[programs.gw]\ncommand = ["true"]\nmain = true\nstop_signal = "SIGNOPE"\n',
         "expected a signal name"),
        ("[programs.gw\n", "not valid TOML"),
    ],
)
def test_bad_config_is_refused_with_file_and_key(tmp_path: Path, body: str, expected: str) -> None:
    config = tmp_path / "bad.toml"
    marker = tmp_path / "started"
    config.write_text(body.replace('["true"]', f'["touch", "{marker}"]'))
    for command in ("check", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "clawsup", command, "-c", str(config)],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 2, result.stderr
        assert str(config) in result.stderr
        assert expected in result.stderr
    assert not marker.exists(), "nothing may be started from a bad config"


def test_missing_and_unreadable_config(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(missing)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert f"{missing}: no such file" in result.stderr
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(tmp_path)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "is a directory" in result.stderr


def test_shipped_config_is_valid(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parent.parent / "etc" / "clawsup.toml"
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(shipped),
                             "-c", str(image_stand_in(tmp_path))],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "gateway (main)" in result.stdout


# -- children ----------------------------------------------------------------------------


def _block_and_ignore() -> None:
    # What a careless parent (a shell's nohup, a runtime) may hand to clawsup.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGTERM})
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def test_child_gets_clean_signal_state_own_group_and_environment(run_clawsup, tmp_path: Path) -> None:
    # Not a Python child: Python ignores SIGPIPE and SIGXFSZ itself at startup. cat reads
    # its own /proc status, as the gateway would have it right after exec.
    status, env = tmp_path / "status.txt", tmp_path / "env.txt"
    command = ["sh", "-c", f'echo "env=$CLAWDBOT_NO_RESPAWN" > {env}; '
               f"exec cat /proc/self/status > {status}"]
    body = (f"[programs.gw]\ncommand = {json.dumps(command)}\nmain = true\n"
            'autorestart = "never"\nenvironment = { CLAWDBOT_NO_RESPAWN = "1" }\n' + FAST)
    clawsup = run_clawsup(body, preexec=_block_and_ignore)
    assert clawsup.wait() == 0
    fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines())
    assert int(fields["SigBlk"], 16) == 0, "no blocked signals handed on"
    assert int(fields["SigIgn"], 16) == 0, "no ignored signals handed on"
    assert fields["NSpgid"] == fields["NSpid"], "each program leads its own process group"
    assert env.read_text().strip() == "env=1"


def test_output_lines_are_attributed_to_their_program(run_clawsup) -> None:
    code = """
        import sys, time
        print('hello from stdout', flush=True)
        print('oops on stderr', file=sys.stderr, flush=True)
        sys.stdout.write('no newline yet'); sys.stdout.flush()
        time.sleep(60)
    """
    side = program("import time; print('side here', flush=True); time.sleep(60)", name="side",
                   main=False)
    clawsup = run_clawsup(program(code) + side)
    clawsup.wait_log("gw | hello from stdout")
    clawsup.wait_log("gw | oops on stderr")
    clawsup.wait_log("side | side here")
    clawsup.signal(signal.SIGTERM)
    clawsup.wait()
    # A partial last line is flushed when the program's output ends.
    assert "gw | no newline yet" in clawsup.log()


def unstartable(tmp_path: Path) -> Path:
    """An executable that exec cannot start (its interpreter is missing): what a command
    that passed the config check at load time can still do at spawn time."""
    script = tmp_path / "gateway"
    script.write_text("#!/nonexistent/interpreter\n")
    script.chmod(0o755)
    return script


def test_command_that_cannot_be_started_is_reported_and_crash_loops_to_fatal(
    run_clawsup, tmp_path: Path
) -> None:
    side = program("import time; print('side up', flush=True); time.sleep(60)", name="side",
                   main=False)
    script = unstartable(tmp_path)
    clawsup = run_clawsup(
        f'[programs.gw]\ncommand = ["{script}"]\nmain = true\n' + FAST
        + 'crash_loop = { max_restarts = 2, window = "60s", cooldown = "60s" }\n' + side
    )
    clawsup.wait_log(f"cannot start gw: {script}: no such file or directory")
    # The other program is unaffected while the broken one backs off.
    clawsup.wait_log("side | side up")
    # The crash loop trips; with exit_on_fatal (the default) clawsup exits non-zero.
    assert clawsup.wait(20) == 1
    assert [event["program"] for event in incidents(tmp_path, "crash_loop")] == ["gw"]
    assert [event["program"] for event in incidents(tmp_path, "fatal")] == ["gw"]


def test_fatal_main_without_exit_on_fatal_keeps_supervising(run_clawsup, tmp_path: Path) -> None:
    side = program("import time; print('side up', flush=True); time.sleep(60)", name="side",
                   main=False)
    clawsup = run_clawsup(
        f'[programs.gw]\ncommand = ["{unstartable(tmp_path)}"]\nmain = true\n' + FAST
        + 'crash_loop = { max_restarts = 1, window = "60s", cooldown = "60s" }\n' + side,
        supervisor="exit_on_fatal = false",
    )
    assert wait_incident(tmp_path, "crash_loop")["program"] == "gw"
    clawsup.wait_log("side | side up")
    assert clawsup.proc.poll() is None, "clawsup keeps running with a FATAL main program"
    clawsup.signal(signal.SIGTERM)
    assert clawsup.wait() == 1, "a FATAL main program still means a non-zero exit"


def test_missing_directory_is_a_clear_error_before_anything_starts(
    run_clawsup, tmp_path: Path
) -> None:
    clawsup = run_clawsup(
        f'[programs.gw]\ncommand = ["true"]\nmain = true\ndirectory = "{tmp_path}/gone"\n'
        + FAST + 'crash_loop = { max_restarts = 1, window = "60s", cooldown = "60s" }\n'
    )
    assert clawsup.wait(20) == 2
    assert f"programs.gw.directory: directory {tmp_path}/gone does not exist" in clawsup.log()


# -- signals and exit --------------------------------------------------------------------


def test_sigterm_reaches_the_child_and_exit_status_is_propagated(run_clawsup, tmp_path: Path) -> None:
    got = tmp_path / "got-term"
    code = f"""
        import signal, sys, time
        def on_term(*_):
            open({str(got)!r}, 'w').write('TERM')
            sys.exit(7)
        signal.signal(signal.SIGTERM, on_term)
        print('ready', flush=True)
        while True: time.sleep(1)
    """
    clawsup = run_clawsup(program(code))
    clawsup.wait_log("gw | ready")
    clawsup.signal(signal.SIGTERM)
    assert clawsup.wait() == 7
    assert got.read_text() == "TERM"


IGNORES_SIGTERM = """
    import signal, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print('ready', flush=True)
    while True: time.sleep(1)
"""


def test_child_ignoring_sigterm_is_killed_after_stop_timeout(run_clawsup) -> None:
    clawsup = run_clawsup(program(IGNORES_SIGTERM).replace('stop_timeout = "2s"', 'stop_timeout = "500ms"'))
    clawsup.wait_log("gw | ready")
    clawsup.signal(signal.SIGINT)
    assert clawsup.wait() == 128 + signal.SIGKILL
    assert "did not stop within 0.5s, sent SIGKILL" in clawsup.log()


def test_grandchild_that_would_outlive_its_parent_is_killed_with_the_group(
    run_clawsup, tmp_path: Path
) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = f"""
        import subprocess, time
        g = subprocess.Popen(['sleep', '1000'])
        open({str(pidfile)!r}, 'w').write(str(g.pid))
        print('ready', flush=True)
        while True: time.sleep(1)
    """
    clawsup = run_clawsup(program(code))
    clawsup.wait_log("gw | ready")
    grandchild = int(pidfile.read_text())
    clawsup.signal(signal.SIGTERM)
    clawsup.wait()
    wait_until(lambda: not Path(f"/proc/{grandchild}").exists(), 10, what="grandchild gone")


def test_crash_kills_the_rest_of_the_group_before_respawn(run_clawsup, tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    code = f"""
        import os, subprocess, time
        if not os.path.exists({str(pidfile)!r}):
            g = subprocess.Popen(['sleep', '1000'])
            open({str(pidfile)!r}, 'w').write(str(g.pid))
            time.sleep(0.5)
            raise SystemExit(1)
        print('second run', flush=True)
        while True: time.sleep(1)
    """
    clawsup = run_clawsup(program(code))
    clawsup.wait_log("gw | second run")
    grandchild = int(pidfile.read_text())
    wait_until(lambda: not Path(f"/proc/{grandchild}").exists(), 10, what="grandchild gone")


def test_main_killed_by_signal_exits_128_plus_n(run_clawsup) -> None:
    code = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    clawsup = run_clawsup(program(code, 'autorestart = "never"\n'))
    assert clawsup.wait() == 128 + signal.SIGKILL


def test_on_failure_restarts_failures_but_not_success(run_clawsup, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    code = f"""
        import os
        p = {str(counter)!r}
        n = int(open(p).read()) if os.path.exists(p) else 0
        open(p, 'w').write(str(n + 1))
        raise SystemExit(0 if n >= 2 else 5)
    """
    clawsup = run_clawsup(program(code, 'autorestart = "on-failure"\n'))
    assert clawsup.wait() == 0
    assert counter.read_text() == "3"


SIGNAL_NOTER = textwrap.dedent("""
    import os, signal, time
    def note(signum, _):
        with open({got!r}, 'a') as f: f.write(signal.Signals(signum).name + '\\n')
    for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
        signal.signal(s, note)
    print('ready', os.getpid(), flush=True)
    while True: time.sleep(1)
""")


def test_usr1_usr2_winch_are_forwarded_to_every_program_listing_them(
    run_clawsup, tmp_path: Path
) -> None:
    got, side_got = tmp_path / "got", tmp_path / "side_got"
    every = 'forward_signals = ["SIGUSR1", "USR2", "SIGWINCH"]\n'
    side = program(SIGNAL_NOTER.format(got=str(side_got)), every, name="side", main=False)
    clawsup = run_clawsup(program(SIGNAL_NOTER.format(got=str(got)), every) + side)
    clawsup.wait_log("gw | ready")
    clawsup.wait_log("side | ready")
    for signum in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
        clawsup.signal(signum)
        for path in (got, side_got):
            wait_until(lambda s=signum, p=path: p.exists()
                       and signal.Signals(s).name in p.read_text(), 10)


def test_forwarded_signals_reach_the_programs_process_group(run_clawsup, tmp_path: Path) -> None:
    got = tmp_path / "got"
    # The program's own process ignores the signal; its child (in its process group)
    # notes it.
    code = f"""
        import signal, subprocess, sys, time
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        subprocess.Popen([sys.executable, "-c", {SIGNAL_NOTER.format(got=str(got))!r}])
        while True: time.sleep(1)
    """
    clawsup = run_clawsup(program(code, 'forward_signals = ["SIGUSR2"]\n'))
    clawsup.wait_log("gw | ready")
    clawsup.signal(signal.SIGUSR2)
    wait_until(lambda: got.exists() and "SIGUSR2" in got.read_text(), 10)


def test_usr1_is_not_forwarded_by_default(run_clawsup, tmp_path: Path) -> None:
    # Node opens its inspector on USR1: by default only USR2 and WINCH reach the main
    # program, and nothing reaches the others.
    got, side_got = tmp_path / "got", tmp_path / "side_got"
    side = program(SIGNAL_NOTER.format(got=str(side_got)), name="side", main=False)
    clawsup = run_clawsup(program(SIGNAL_NOTER.format(got=str(got))) + side)
    clawsup.wait_log("gw | ready")
    clawsup.wait_log("side | ready")
    clawsup.signal(signal.SIGUSR1)
    clawsup.wait_log("got SIGUSR1: no program has it in forward_signals")
    # USR2 after USR1, from the same sender: once USR2 has arrived, USR1 would have too.
    clawsup.signal(signal.SIGUSR2)
    wait_until(lambda: got.exists() and "SIGUSR2" in got.read_text(), 10)
    clawsup.signal(signal.SIGWINCH)
    wait_until(lambda: "SIGWINCH" in got.read_text(), 10)
    assert got.read_text().split() == ["SIGUSR2", "SIGWINCH"]
    assert not side_got.exists(), "a program that is not main gets nothing by default"


def test_forward_signals_accepts_only_the_signals_clawsup_passes_on(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[programs.gw]\ncommand = ["true"]\nmain = true\n'
                      'forward_signals = ["SIGTERM"]\n')
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "programs.gw.forward_signals[0]: " in result.stderr
    assert "only SIGUSR1, SIGUSR2 and SIGWINCH" in result.stderr


def test_hup_restarts_changed_programs_only_and_keeps_old_config_when_invalid(
    run_clawsup, tmp_path: Path
) -> None:
    loop = "import os, time; print('pid', os.getpid(), flush=True); time.sleep(600)"
    other = program(loop, name="other", main=False)
    clawsup = run_clawsup(program(loop) + other)
    clawsup.wait_log("gw | pid")
    clawsup.wait_log("other | pid")
    config = tmp_path / "clawsup.toml"
    original = config.read_text()

    def pids(name: str) -> list[str]:
        return [line.split()[-1] for line in clawsup.log().splitlines()
                if line.startswith(f"{name} | pid")]

    # An invalid config on HUP: the old one keeps running, and the log says why.
    config.write_text(original + "\n[janitor.nonsense]\n")
    clawsup.signal(signal.SIGHUP)
    clawsup.wait_log("config reload failed, keeping the old one")
    assert len(pids("gw")) == 1
    # A valid change to one program restarts that one only.
    config.write_text(original.replace(
        '[programs.other]', '[programs.other]\nenvironment = { CHANGED = "1" }', 1))
    clawsup.signal(signal.SIGHUP)
    wait_until(lambda: len(pids("other")) == 2, 15, what="other restarted")
    assert len(pids("gw")) == 1, "unchanged program untouched"
    assert clawsup.proc.poll() is None


# -- the reaper --------------------------------------------------------------------------

STORM = """
    import os, sys, time
    # 1,000 grandchildren orphaned at once: each intermediate child exits at once, so
    # the grandchild is re-parented to the supervisor (PID 1 or subreaper).
    for _ in range(1000):
        if os.fork() == 0:
            if os.fork() == 0:
                time.sleep(0.05)
                os._exit(0)
            os._exit(0)
    # Reap the intermediate children ourselves: they are ours, not orphans.
    for _ in range(1000):
        os.wait()
    # The last grandchild exits 50 ms after its birth; the storm is over 100 ms after it.
    time.sleep(0.15)
    print('storm done', flush=True)
    time.sleep(600)
"""


def _storm_test(clawsup: Clawsup) -> None:
    clawsup.wait_log("gw | storm done", timeout=60)
    supervisor = clawsup.supervisor_pid
    # Let the last grandchildren (50 ms sleepers) finish, then sample repeatedly.
    for _ in range(20):
        assert zombies_under(supervisor) == []
    clawsup.signal(signal.SIGTERM)
    clawsup.wait()


def test_orphan_storm_as_pid1_leaves_no_zombies(run_clawsup) -> None:
    clawsup = run_clawsup(program(STORM), pid1=True)
    _storm_test(clawsup)
    assert "clawsup" in clawsup.log()


def test_orphan_storm_as_subreaper_leaves_no_zombies(run_clawsup) -> None:
    clawsup = run_clawsup(program(STORM))
    _storm_test(clawsup)


def test_pid1_exits_with_main_status(run_clawsup) -> None:
    clawsup = run_clawsup(program("raise SystemExit(4)", 'autorestart = "never"\n'), pid1=True)
    assert clawsup.wait() == 4


# -- hang detection ----------------------------------------------------------------------

DSTATE = """
    import ctypes, os, signal, sys, time
    {handler}
    print('pid', os.getpid(), flush=True)
    if os.environ.get('CLAWSUP_TEST_RUN') == 'again':
        pass
    marker = {marker!r}
    if os.path.exists(marker):
        print('respawned', flush=True)
        while True: time.sleep(1)
    open(marker, 'w').close()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    # clone(CLONE_VFORK | SIGCHLD) without CLONE_VM: the parent sleeps in D until the
    # child exits; the child has its own copy of memory, so it may run Python.
    child = libc.syscall(56, 0x4000 | signal.SIGCHLD, 0, 0, 0, 0)
    if child == 0:
        time.sleep({seconds})
        os._exit(0)
    print('left D state', flush=True)
    while True: time.sleep(1)
"""
HANG = """
[programs.gw.hang]
d_state_after = "{after}"
sample_interval = "100ms"
"""


@pytest.mark.parametrize("with_term_handler", [False, True])
def test_d_state_longer_than_threshold_is_hung_and_killed(
    run_clawsup, tmp_path: Path, with_term_handler: bool
) -> None:
    handler = ("signal.signal(signal.SIGTERM, lambda *a: print('TERM ignored', flush=True))"
               if with_term_handler else "")
    code = DSTATE.format(handler=handler, marker=str(tmp_path / "once"), seconds=60)
    clawsup = run_clawsup(program(code) + HANG.format(after="1s"))
    text = clawsup.wait_log("gw | respawned", timeout=30)
    assert "gw is hung (state: D for 1." in text
    assert "restarting" in text
    assert "sent SIGKILL" in text
    assert "left D state" not in text


def test_short_d_state_never_triggers_a_kill(run_clawsup, tmp_path: Path) -> None:
    code = DSTATE.format(handler="", marker=str(tmp_path / "once"), seconds=1)
    clawsup = run_clawsup(program(code) + HANG.format(after="3s"))
    clawsup.wait_log("gw | left D state", timeout=30)
    assert "hung" not in clawsup.log()
    assert "respawned" not in clawsup.log()


def test_zombie_leak_restarts_gracefully(run_clawsup, tmp_path: Path) -> None:
    marker = tmp_path / "leaked"
    code = f"""
        import os, signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print('graceful stop', flush=True), sys.exit(0)))
        if os.path.exists({str(marker)!r}):
            print('respawned', flush=True)
            while True: time.sleep(1)
        open({str(marker)!r}, 'w').close()
        for _ in range(8):
            if os.fork() == 0:
                os._exit(0)
        print('leaked', flush=True)
        while True: time.sleep(1)
    """
    extra = '[programs.gw.hang]\nsample_interval = "100ms"\nzombie_children_max = 5\n'
    clawsup = run_clawsup(program(code) + extra)
    text = clawsup.wait_log("gw | respawned", timeout=30)
    assert "gw leaks zombies (8 > 5), restarting" in text
    assert "gw | graceful stop" in text


def test_hang_settings_changed_by_a_reload_take_effect(run_clawsup, tmp_path: Path) -> None:
    code = """
        import os, time
        for _ in range(8):
            if os.fork() == 0:
                os._exit(0)
        print('leaked', flush=True)
        while True: time.sleep(1)
    """
    off = '[programs.gw.hang]\nenabled = false\n'
    on = '[programs.gw.hang]\nsample_interval = "100ms"\nzombie_children_max = 5\n'
    clawsup = run_clawsup(program(code) + off)
    clawsup.wait_log("gw | leaked")
    assert incidents(tmp_path, "zombie_leak") == []
    config = tmp_path / "clawsup.toml"
    config.write_text(config.read_text().replace(off, on))
    clawsup.signal(signal.SIGHUP)
    leak = wait_incident(tmp_path, "zombie_leak", timeout=30)
    assert (leak["program"], leak["data"]["zombies"]) == ("gw", 8)


HTTP_SERVER = """
    import http.server, os, sys, threading, time
    wedge = {wedge!r}
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            while os.path.exists(wedge):
                time.sleep(0.05)  # the event loop is blocked: no response
            self.send_response(200); self.end_headers(); self.wfile.write(b'ok')
        def log_message(self, *a): pass
    server = http.server.HTTPServer(('127.0.0.1', {port}), H)
    print('serving', os.getpid(), flush=True)
    server.serve_forever()
"""


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_liveness_probe_restarts_a_wedged_http_server(run_clawsup, tmp_path: Path) -> None:
    port = _free_port()
    wedge = tmp_path / "wedge"
    code = HTTP_SERVER.format(wedge=str(wedge), port=port)
    extra = f"""
[programs.gw.liveness]
http = "http://127.0.0.1:{port}/"
period = "200ms"
timeout = "300ms"
failures = 2
"""
    clawsup = run_clawsup(program(code) + extra)
    wait_state(tmp_path, "RUNNING", 10)
    wedge.touch()
    failed = wait_incident(tmp_path, "liveness_failed", timeout=20)
    wedge.unlink()
    clawsup.wait_log("gw | serving", count=2, timeout=20)
    assert failed["program"] == "gw"
    assert str(failed["data"]["detail"]).startswith("no HTTP response from")


TCP_SERVER = """
    import os, socket, time
    listener = socket.create_server(('127.0.0.1', {port}))
    print('listening', os.getpid(), flush=True)
    while not os.path.exists({closed!r}):
        time.sleep(0.05)
    listener.close()  # the port is closed, the process lives on
    print('closed', flush=True)
    while True: time.sleep(1)
"""


def test_tcp_liveness_probe_restarts_a_program_whose_port_closed(
    run_clawsup, tmp_path: Path
) -> None:
    port = _free_port()
    closed = tmp_path / "closed"
    extra = f"""
[programs.gw.liveness]
tcp = "127.0.0.1:{port}"
period = "200ms"
timeout = "300ms"
failures = 2
"""
    clawsup = run_clawsup(program(TCP_SERVER.format(port=port, closed=str(closed))) + extra)
    clawsup.wait_log("gw | listening")
    wait_state(tmp_path, "RUNNING", 10)
    closed.touch()
    clawsup.wait_log("gw | closed")
    clawsup.wait_log("liveness probes", timeout=20)
    assert f"cannot connect to 127.0.0.1:{port}" in clawsup.log()
    closed.unlink()
    clawsup.wait_log("gw | listening", count=2, timeout=20)


def test_exec_liveness_probe_goes_through_the_one_reaper(run_clawsup, tmp_path: Path) -> None:
    healthy = tmp_path / "healthy"
    healthy.touch()
    extra = f"""
[programs.gw.liveness]
exec = ["test", "-e", "{healthy}"]
period = "200ms"
timeout = "2s"
failures = 2
"""
    clawsup = run_clawsup(program("import time; print('up', flush=True); time.sleep(600)") + extra)
    clawsup.wait_log("gw | up")
    wait_state(tmp_path, "RUNNING", 10)
    healthy.unlink()
    clawsup.wait_log("gw | up", count=2, timeout=20)
    assert "test exited with status 1" in clawsup.log()


# -- ready means serving ------------------------------------------------------------------


def program_status(tmp_path: Path, name: str = "gw") -> ProgramStatus:
    with Client(f"ipc://{tmp_path}/run/control.sock", timeout=5) as client:
        return next(p for p in client.status().programs if p.name == name)


def wait_state(tmp_path: Path, state: str, timeout: float, name: str = "gw") -> None:
    def reached() -> bool:
        try:
            return program_status(tmp_path, name).state == state
        except Unreachable:
            return False  # clawsup is still starting up

    wait_until(reached, timeout, what=f"{name} {state}")


def health_exit_code(tmp_path: Path) -> int:
    ctl = Path(sys.executable).parent / "clawsupctl"
    return subprocess.run([str(ctl), "--socket", f"ipc://{tmp_path}/run/control.sock",
                           "health"], capture_output=True, timeout=30).returncode


def http_answers(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


SERVES_WHEN = textwrap.dedent("""
    import http.server, os, time
    print('spawned', os.getpid(), flush=True)
    while not os.path.exists({go!r}):
        time.sleep(0.02)
    time.sleep({delay})
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200); self.end_headers(); self.wfile.write(b'ok')
        def log_message(self, *a): pass
    server = http.server.HTTPServer(('127.0.0.1', {port}), H)
    print('serving', os.getpid(), flush=True)
    server.serve_forever()
""")


def probed(port: int, start_timeout: str = "60s") -> str:
    return f"""
[programs.gw.liveness]
http = "http://127.0.0.1:{port}/"
start_timeout = "{start_timeout}"
period = "30s"
timeout = "1s"
"""


def test_with_a_probe_the_program_is_starting_and_unhealthy_until_it_serves(
    run_clawsup, tmp_path: Path
) -> None:
    port, go = _free_port(), tmp_path / "go"
    code = SERVES_WHEN.format(go=str(go), delay=0, port=port)
    clawsup = run_clawsup(program(code) + probed(port))
    clawsup.wait_log("gw | spawned")
    # Well past start_seconds (100ms), and not serving: still STARTING, and unhealthy.
    wait_state(tmp_path, "STARTING", 10)
    wait_until(lambda: (program_status(tmp_path).uptime or 0) > 1.0, 10)
    assert program_status(tmp_path).state == "STARTING"
    assert health_exit_code(tmp_path) == 1
    go.touch()
    clawsup.wait_log("gw | serving")
    # Tried at least once a second while STARTING.
    wait_state(tmp_path, "RUNNING", 1.5)
    assert program_status(tmp_path).liveness == "passing"
    assert health_exit_code(tmp_path) == 0


def test_no_success_within_start_timeout_is_a_failed_start(run_clawsup, tmp_path: Path) -> None:
    # Never serves, and ignores SIGTERM: stopped with SIGKILL after stop_timeout, then
    # restarted with backoff, as a crash while starting would be.
    code = """
        import os, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('spawned', os.getpid(), flush=True)
        while True: time.sleep(1)
    """
    body = program(code, 'stop_timeout = "500ms"\n').replace('stop_timeout = "2s"\n', "")
    clawsup = run_clawsup(body + probed(_free_port(), start_timeout="1s"))
    clawsup.wait_log("gw | spawned", count=2, timeout=20)
    status = program_status(tmp_path)
    assert status.restarts >= 1
    assert status.last_exit is not None
    assert status.last_exit.signal == "SIGKILL"
    assert status.last_exit.reason.startswith("start_timeout")
    assert "STARTING -> STOPPING (start_timeout" in clawsup.log()
    assert "STOPPING -> BACKOFF" in clawsup.log()


def test_restart_and_start_answer_once_the_program_serves_again(
    run_clawsup, tmp_path: Path
) -> None:
    port, go = _free_port(), tmp_path / "go"
    go.touch()
    code = SERVES_WHEN.format(go=str(go), delay=1.0, port=port)
    run_clawsup(program(code) + probed(port))
    wait_state(tmp_path, "RUNNING", 15)
    with Client(f"ipc://{tmp_path}/run/control.sock", timeout=60) as client:
        old_pid = client.status().programs[0].pid
        reply = client.restart("gw")
        assert reply.state == "RUNNING"
        assert reply.pid != old_pid
        assert http_answers(port), "restart answered before the program served"
        client.stop("gw")
        assert not http_answers(port)
        reply = client.start("gw")
        assert reply.state == "RUNNING"
        assert http_answers(port), "start answered before the program served"


def test_initial_delay_is_accepted_with_a_deprecation_warning(tmp_path: Path) -> None:
    config = write_config(tmp_path, '[programs.gw]\ncommand = ["true"]\nmain = true\n'
                          '[programs.gw.liveness]\ntcp = "127.0.0.1:1"\n'
                          'initial_delay = "30s"\n')
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "programs.gw.liveness.initial_delay is deprecated and has no effect" in result.stderr


def test_run_starts_with_initial_delay_and_warns_about_it(run_clawsup) -> None:
    clawsup = run_clawsup(program("import time; print('up', flush=True); time.sleep(600)")
                          + '[programs.gw.liveness]\ntcp = "127.0.0.1:1"\n'
                          'initial_delay = "30s"\n')
    clawsup.wait_log("gw | up")
    assert "warning" in clawsup.log()
    assert "programs.gw.liveness.initial_delay is deprecated and has no effect" in clawsup.log()


def test_crash_loop_backs_off_exponentially_then_goes_fatal(run_clawsup, tmp_path: Path) -> None:
    import re

    body = program("raise SystemExit(1)").replace(
        'backoff = { initial = "100ms", factor = 2.0, max = "1s", reset_after = "3s" }',
        'backoff = { initial = "100ms", factor = 2.0, max = "1s", reset_after = "3s", '
        "jitter = 0.0 }",
    ) + 'crash_loop = { max_restarts = 4, window = "30s", cooldown = "60s" }\n'
    clawsup = run_clawsup(body)
    assert clawsup.wait(30) == 1, "FATAL with exit_on_fatal: the container must restart"
    log = clawsup.log()
    delays = [float(d) for d in re.findall(r"crashed, restarting in ([0-9.]+)s", log)]
    assert delays == [0.1, 0.2, 0.4, 0.8]
    [crash_loop] = incidents(tmp_path, "crash_loop")
    assert (crash_loop["program"], crash_loop["data"]["cooldown"]) == ("gw", 60.0)
    assert [event["program"] for event in incidents(tmp_path, "fatal")] == ["gw"]


def test_programs_stop_in_reverse_order(run_clawsup, tmp_path: Path) -> None:
    order = tmp_path / "order"
    code = """
        import signal, sys, time
        def stop(*_):
            with open({order!r}, 'a') as f: f.write('{name}\\n')
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print('ready', flush=True)
        while True: time.sleep(1)
    """
    body = "".join(
        program(code.format(order=str(order), name=name), name=name, main=(name == "first"))
        for name in ("first", "second", "third")
    )
    clawsup = run_clawsup(body)
    for name in ("first", "second", "third"):
        clawsup.wait_log(f"{name} | ready")
    clawsup.signal(signal.SIGTERM)
    assert clawsup.wait() == 0
    assert order.read_text().split() == ["third", "second", "first"]


@pytest.mark.parametrize(
    "keys",
    ["", 'curve_secret_key_file = "/k/server.key_secret"\n',
     'curve_authorized_keys_dir = "/k/clients"\n'],
)
def test_tcp_control_port_without_both_curve_settings_is_refused(tmp_path: Path, keys: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[supervisor]\ncontrol_tcp = "tcp://0.0.0.0:7777"\n' + keys
                      + '[programs.gw]\ncommand = ["true"]\nmain = true\n')
    result = subprocess.run([sys.executable, "-m", "clawsup", "check", "-c", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "an unauthenticated TCP control port is never opened" in result.stderr


def test_a_second_stop_signal_kills_at_once(run_clawsup) -> None:
    clawsup = run_clawsup(program(IGNORES_SIGTERM).replace('stop_timeout = "2s"', 'stop_timeout = "1h"'))
    clawsup.wait_log("gw | ready")
    clawsup.signal(signal.SIGTERM)
    clawsup.wait_log("-> STOPPING (shutdown)")
    clawsup.signal(signal.SIGINT)
    # Without the second signal this would take the hour of stop_timeout.
    assert clawsup.wait(30) == 128 + signal.SIGKILL
    assert "got SIGINT again: not waiting for stop_timeout" in clawsup.log()
    assert "still STOPPING (hurried by a second stop signal, sent SIGKILL)" in clawsup.log()


def test_orphans_reaped_are_counted_in_metrics(run_clawsup) -> None:
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # The subshell exits at once, so its background sleep is re-parented to clawsup.
    body = ('[programs.gw]\ncommand = ["sh", "-c", "(sleep 0.2 &); exec sleep 100"]\n'
            f'main = true\n{FAST}\n[metrics]\nlisten = "127.0.0.1:{port}"\n')
    run_clawsup(body)

    def reaped() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
                return "clawsup_zombies_reaped_total 1.0" in reply.read().decode()
        except OSError:
            return False

    wait_until(reaped, 15, what="the orphaned sleep counted as reaped")
