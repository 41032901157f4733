"""procinfo.py: the one parser of /proc/PID/stat (real processes, and lines built by hand)."""

from __future__ import annotations

import os
import subprocess
import sys

from clawsup.supervisor import procinfo
from clawsup.supervisor.locks import probe_owner

# The fields after the command name: state, ppid, pgrp, session, ... num_threads (20),
# itrealvalue, starttime (22), ...
TAIL = b"S 1 77 88 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 3 0 123456 1000 10"


def test_a_command_name_holding_parentheses_and_spaces_is_read_past():
    stat = procinfo.parse_stat(b"4242 (a) (b) S 9 9) " + TAIL + b"\n")
    assert stat == procinfo.ProcessStat(state="S", ppid=1, pgid=77, sid=88, threads=3,
                                        starttime=123456, cpu_ticks=3, rss_pages=10)


def test_a_cut_off_or_empty_stat_line_is_none():
    assert procinfo.parse_stat(b"4242 (gateway) S 1 77 88") is None
    assert procinfo.parse_stat(b"") is None


def test_read_stat_of_this_process_matches_what_os_says():
    stat = procinfo.read_stat(os.getpid())
    assert stat is not None
    assert stat.state == "R"
    assert (stat.ppid, stat.pgid, stat.sid) == (os.getppid(), os.getpgrp(), os.getsid(0))
    assert stat.threads >= 1


def test_read_stat_of_a_process_that_is_gone_is_none():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert procinfo.read_stat(child.pid) is None
    assert procinfo.read_stat(-1) is None


def test_a_zombie_owns_no_lock():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped
    try:
        stat = procinfo.read_stat(child.pid)
        assert stat is not None
        assert stat.state == "Z"
        assert probe_owner(child.pid, procinfo.boot_time()) is None
    finally:
        child.wait()
