"""The session janitor: orphaned locks, stuck messages, oversized transcripts, old archives.

In parts, each its own module:

- ``dirset.py``, the directory set: which session directories the configured globs match,
  each opened once (pinned) and accepted only inside its glob's fixed prefix, with one
  inotify watch each, and watches on the directories a new one may appear in;
- ``index.py``, the session index: per directory, the locks (with their content), the
  transcripts (and which are oversized) and the archives, kept current at one lstat per
  name inotify reported, a warm pass every ``full_pass_every``, cold scans where nothing
  can be trusted;
- ``policy.py``, the decisions: which lock is orphaned, held or stuck, what to archive
  and purge, when a full pass is due -- pure functions of the index, the clock and what
  /proc says;
- ``core.py``, the :class:`Janitor` the event loop drives: a sweep brings the index up
  to date, asks the policy, and carries out its decisions;
- ``report.py``, what a sweep returns (:class:`SweepReport`, its findings, each an
  event) and the problems it logs once; ``names.py``, what the files are called.

The janitor's inotify instance is an ``inotify.Dispatcher``, the one FileWatch uses too;
/proc reads go through procinfo.py, renames through fileops.py.

Safety. Only direct children of the session directories are touched, and only regular
files: ``lstat`` (never ``stat``) decides, locks are opened with O_NOFOLLOW|O_NONBLOCK (a
FIFO never blocks a read) and checked with fstat. Rename, link and unlink act on the
directory entry, never on what a symlink points to, and go through a descriptor of the
directory. A directory that vanishes or cannot be read is logged once, until it changes
again; the sweep goes on with the rest.
"""

from clawsup.supervisor.fileops import rename_noreplace
from clawsup.supervisor.janitor.core import EXITED_PIDS_KEPT, Janitor
from clawsup.supervisor.janitor.index import lstat_transcripts
from clawsup.supervisor.janitor.names import (
    ARCHIVE_STAMP_FORMAT,
    SESSION_SUFFIX,
    archive_name,
    archived_at_from_name,
)
from clawsup.supervisor.janitor.report import (
    ArchivedSession,
    Finding,
    HeldLock,
    JanitorStats,
    OrphanLock,
    PurgedArchive,
    StuckMessage,
    SweepReport,
)

__all__ = [
    "ARCHIVE_STAMP_FORMAT",
    "EXITED_PIDS_KEPT",
    "SESSION_SUFFIX",
    "ArchivedSession",
    "Finding",
    "HeldLock",
    "Janitor",
    "JanitorStats",
    "OrphanLock",
    "PurgedArchive",
    "StuckMessage",
    "SweepReport",
    "archive_name",
    "archived_at_from_name",
    "lstat_transcripts",
    "rename_noreplace",
]
