"""Starting a program's process: own process group, clean signal state, piped output.

``subprocess.Popen`` is used only to fork and exec (it knows cwd, user, process groups
and close_fds). Its ``wait()``/``poll()`` are never called: the supervisor's single reaper
collects every status with ``waitpid(-1)``, and a Popen left with ``returncode is None``
would be polled again from ``subprocess._cleanup`` and could steal a status. So the
caller keeps the Popen until the reaper has the status and then sets ``returncode``.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from clawsup.supervisor.config import ProgramConfig
from clawsup.supervisor.program import SpawnError

# Signals the supervisor itself must not have blocked or ignored, because a child
# inherits the mask and the ignored set across exec (handled signals reset to default).
_UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


def reset_signal_state() -> None:
    """Clear the inherited signal mask and ignored dispositions of this process.

    A container runtime, a shell's ``nohup`` or a parent that blocked signals before
    fork-exec hands those on to us, and we would hand them to the gateway: a gateway
    with SIGTERM ignored cannot stop gracefully. Signals we handle are reset to default
    by exec anyway; SIGPIPE (which Python ignores) is reset by Popen's restore_signals.
    """
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
    for signum in signal.valid_signals():
        if signum in _UNCATCHABLE or signum == signal.SIGPIPE:
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            # Real-time signals reserved by the C library (32, 33) cannot be touched.
            continue


@dataclass
class Spawned:
    pid: int
    stdout: int  # read end of the child's stdout pipe
    stderr: int
    popen: subprocess.Popen[bytes]


def spawn(name: str, config: ProgramConfig, environment: dict[str, str]) -> Spawned:
    """Start ``config.command`` as the leader of a new process group.

    Raises SpawnError with a clear message when it cannot be started at all.
    """
    if config.directory is not None and not Path(config.directory).is_dir():
        raise SpawnError(f"cannot start {name}: directory {config.directory} does not exist")
    env = dict(os.environ)
    env.update(config.environment)
    env.update(environment)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        popen = subprocess.Popen(
            config.command,
            stdin=subprocess.DEVNULL,
            stdout=out_write,
            stderr=err_write,
            cwd=config.directory,
            env=env,
            user=config.user,
            process_group=0,
            restore_signals=True,
            close_fds=True,
        )
    except FileNotFoundError:
        _close(out_read, err_read)
        raise SpawnError(
            f"cannot start {name}: {config.command[0]}: no such file or directory"
        ) from None
    except PermissionError:
        _close(out_read, err_read)
        raise SpawnError(f"cannot start {name}: {config.command[0]}: permission denied") from None
    except (OSError, ValueError, KeyError) as error:
        # KeyError/ValueError: an unknown user name.
        _close(out_read, err_read)
        raise SpawnError(f"cannot start {name}: {error}") from None
    finally:
        _close(out_write, err_write)
    os.set_blocking(out_read, False)
    os.set_blocking(err_read, False)
    return Spawned(pid=popen.pid, stdout=out_read, stderr=err_read, popen=popen)


def _close(*fds: int) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            continue
