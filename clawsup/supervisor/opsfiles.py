"""The old watchdog's files, still honoured: the restart flag and the ops-requests inbox.

Skills written for ``watchdog.sh`` ask for a restart by creating a file, or drop JSON
requests into a directory. clawsup reads both; the control socket is the better way.

Restart flag (``[janitor].restart_flag``, default ``~/.clawdbot/restart.flag``)
------------------------------------------------------------------------------

Its presence asks for a restart of the main program; its content, if any, is the reason::

    touch ~/.clawdbot/restart.flag                       # reason ""
    echo "new skill installed" > ~/.clawdbot/restart.flag

- Only a regular file is read (at most 4 KiB, never through a symlink, never blocking on
  a FIFO). Bytes that are not UTF-8 become U+FFFD; control characters become spaces, so
  a reason is one log line.
- A symlink, FIFO or socket at that path also asks for a restart, with reason "": the
  entry itself is removed (``unlink`` removes a link, never its target) and never opened,
  so a link cannot make clawsup read, or log, another file.
- A directory there is not a flag: reported, left alone.
- The flag is removed before the restart is asked for. A flag that cannot be removed
  (read-only mount, no write permission on its directory) does **not** restart: a flag
  that stays would restart the gateway on every sweep. ``RestartFlag.take`` raises
  ``FlagError`` once for it, then keeps trying quietly at each sweep: once the flag can
  be removed it is taken and the restart happens.
- Two flags written in quick succession may merge into one restart.

Ops requests (``[janitor].ops_requests``, default ``~/.clawdbot/ops-requests``)
------------------------------------------------------------------------------

One JSON object per file, tagged on ``action``::

    {"action": "restart"}
    {"action": "restart", "program": "gateway", "reason": "skill update"}
    {"action": "set_model", "model": "anthropic/claude-opus-4-5"}
    {"action": "set_timezone", "timezone": "America/Sao_Paulo"}

``program`` defaults to the main program. Other keys (``id``, ``requested_by``...) are
ignored, as ``watchdog.sh`` ignored them. UTF-8, at most 64 KiB. (``watchdog.sh`` read
``/root/clawd/ops-requests``: point ``ops_requests`` there to keep such skills working.)

- Files read: regular files directly in the directory whose name ends in ``.json`` and
  does not start with ``.``, in name order (name them ``req-<timestamp>-<id>.json`` to get
  them run in the order written). The old watchdog read only ``req-*.json``; any
  ``*.json`` is read now. Symlinks, subdirectories (``done/``, ``failed/``) and other
  entries are skipped, never followed.
- Write a request atomically: to ``.<name>.json.tmp`` (or any name starting with ``.``),
  then rename it to ``<name>.json``. Writers that do not (``echo '{...}' > req-1.json``,
  all ``watchdog.sh`` asked of them) are tolerated: a file modified less than 0.5 s ago is left for
  the next sweep, when it is complete.
- After it ran, a request is moved to ``done/`` (it succeeded) or ``failed/`` (it failed,
  or could not be parsed: not JSON, not UTF-8, too large, unknown action, wrong types --
  such a file is moved there at once and never retried). The directories are created
  0700 and, when clawsup runs as root, given to the inbox's owner, as are the result
  files: the skill that asked can read the answer. Nothing there is reached through a
  symlink. A name already taken there is never overwritten: ``req-1.json`` becomes
  ``req-1.1.json``, ``req-1.2.json``... (``watchdog.sh`` used ``error/``, not
  ``failed/``).
- Beside the moved file, ``<moved name>.result.json``::

    {"request": "req-1.json", "ok": true,
     "result": {"key": "agents.defaults.model.primary", "old": "...", "new": "..."},
     "finished_at": "2025-01-31T12:00:00.123456Z"}
    {"request": "req-2.json", "ok": false,
     "error": {"code": "bad_request", "message": "unknown action 'reboot' ..."},
     "finished_at": "2025-01-31T12:00:05Z"}

  ``error`` has the shape of the control socket's error object.
- Each file runs once: the move is what marks it done. ``OpsInbox`` keeps a request it
  handed out from being handed out again before it is finished, and remembers a file it
  could not move so that it does not run on every sweep. That memory lasts as long as the
  process: after a clawsup restart such a file runs again, and so does a request whose
  run was cut short by a crash before it was moved (at least once, never twice in one
  process).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from clawsup.protocol import BAD_REQUEST
from clawsup.supervisor.config import expand_path
from clawsup.supervisor.fileops import (
    fsync_directory,
    owner_for_new_files,
    read_small_file,
    write_atomically,
)

log = logging.getLogger(__name__)

FLAG_READ_LIMIT = 4 << 10
MAX_REQUEST_SIZE = 64 << 10
# A request file younger than this may still be being written by a non-atomic writer.
SETTLE_SECONDS = 0.5
# An inbox whose mtime is older than this before a listing that found it empty is taken to
# be empty for as long as its mtime stays the same (see OpsInbox.take).
_QUIET_MARGIN = 2.0
DONE_DIR = "done"
FAILED_DIR = "failed"
RESULT_SUFFIX = ".result.json"
# Bound on the counter suffix, so a directory full of names cannot spin the loop.
MAX_NAME_COUNTER = 10_000


# --- the restart flag -----------------------------------------------------------------


class FlagError(Exception):
    """A restart flag that is there but cannot be taken; no restart was asked for."""


def _reason(data: bytes) -> str:
    text = data[:FLAG_READ_LIMIT].decode("utf-8", errors="replace")
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text + "..." if len(data) > FLAG_READ_LIMIT else text


def take_restart_flag(path: str | os.PathLike[str]) -> str | None:
    """The flag's reason ("" when empty) after removing it; None when there is no flag.

    Raises FlagError for a directory at that path or a flag that cannot be removed.
    """
    flag = expand_path(os.fspath(path))
    try:
        mode = os.lstat(flag).st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        raise FlagError(f"cannot look at restart flag {flag}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise FlagError(f"restart flag {flag} is a directory, not a flag; remove it")
    reason, unread = "", ""
    if stat.S_ISREG(mode):
        try:
            reason = _reason(read_small_file(flag, FLAG_READ_LIMIT, follow_symlinks=False))
        except FileNotFoundError:
            return None
        except OSError as error:
            # Swapped for a symlink or FIFO since lstat (ELOOP, EINVAL), or unreadable to
            # us: still a flag, only without a reason.
            unread = f"cannot read its reason: {error.strerror}"
    else:
        unread = "not a regular file, removed unread"
    try:
        os.unlink(flag)
    except FileNotFoundError:
        return None  # another reader (a leftover watchdog.sh?) took it first
    except OSError as error:
        raise FlagError(
            f"cannot remove restart flag {flag}: {error.strerror}; not restarting, "
            "since a flag that stays would restart the gateway on every sweep"
        ) from None
    if unread:
        log.warning("restart flag %s: %s", flag, unread)
    return reason


def _identity(path: Path) -> tuple[int, ...] | None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        return (-1, error.errno or 0)
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_mode)


class RestartFlag:
    """The restart flag at one path, reporting a stuck flag once rather than every sweep."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = expand_path(os.fspath(path))
        self._stuck: tuple[int, ...] | None = None

    def take(self) -> str | None:
        """As ``take_restart_flag``, but FlagError only once for the same stuck flag.

        A stuck flag is still tried at every sweep, quietly: once someone makes it
        removable, it is taken and the restart happens.
        """
        identity = _identity(self.path)
        if identity is None:  # no flag: the usual case, one lstat per sweep
            self._stuck = None
            return None
        try:
            reason = take_restart_flag(self.path)
        except FlagError:
            if identity is not None and identity == self._stuck:
                return None
            self._stuck = identity
            raise
        self._stuck = None
        return reason


# --- ops requests ---------------------------------------------------------------------


class _OpsRequest(msgspec.Struct, tag_field="action", frozen=True, kw_only=True):
    pass


class RestartRequest(_OpsRequest, tag="restart", frozen=True):
    program: str | None = None
    reason: str | None = None


class SetModelRequest(_OpsRequest, tag="set_model", frozen=True):
    model: str


class SetTimezoneRequest(_OpsRequest, tag="set_timezone", frozen=True):
    timezone: str


OpsRequest = RestartRequest | SetModelRequest | SetTimezoneRequest

_request_decoder: msgspec.json.Decoder[OpsRequest] = msgspec.json.Decoder(OpsRequest)


ACTIONS = ("restart", "set_model", "set_timezone")
_UNKNOWN_ACTION = re.compile(r"Invalid value (.*) - at \$\.action")


class RequestError(ValueError):
    """A request file that is not a valid request; says why."""


def parse_request(data: bytes) -> OpsRequest:
    """The request in ``data``, or RequestError saying what is wrong with it."""
    if len(data) > MAX_REQUEST_SIZE:
        raise RequestError(f"larger than {MAX_REQUEST_SIZE} bytes")
    try:
        text = data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        raise RequestError(f"not UTF-8 text: {error}") from None
    if not text.strip():
        raise RequestError("empty file: expected a JSON object with an action")
    try:
        return _request_decoder.decode(text)
    except RecursionError:
        raise RequestError("nested too deeply") from None
    except msgspec.DecodeError as error:
        message = str(error).replace("`", "")
        unknown = _UNKNOWN_ACTION.fullmatch(message)
        if unknown:
            message = f"unknown action {unknown.group(1)}; expected one of {', '.join(ACTIONS)}"
        raise RequestError(message) from None


@dataclass(frozen=True, slots=True)
class PendingRequest:
    """A request file found in the inbox: parsed, or with the reason it could not be."""

    path: Path
    identity: tuple[int, ...]
    request: OpsRequest | None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.path.name


def _read_request(path: Path, identity: tuple[int, ...]) -> PendingRequest | None:
    try:
        data = read_small_file(path, MAX_REQUEST_SIZE, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.EINVAL, errno.EISDIR):
            return None  # swapped for a symlink, FIFO or directory since it was listed
        return PendingRequest(path, identity, None, f"cannot read it: {error.strerror}")
    try:
        return PendingRequest(path, identity, parse_request(data))
    except RequestError as error:
        return PendingRequest(path, identity, None, str(error))


def pending_requests(
    directory: str | os.PathLike[str], *, now: float | None = None, settle: float = SETTLE_SECONDS
) -> list[PendingRequest]:
    """Request files in ``directory``, in name order, each parsed or with its error.

    A missing directory has none. ``now`` (wall-clock seconds, as file times are) decides
    which files are still settling. Reads only; moving is ``finish``'s job.
    """
    current = time.time() if now is None else now
    return _scan_inbox(expand_path(os.fspath(directory)), current, settle).found


class _Listing(NamedTuple):
    found: list[PendingRequest]  # the requests ready, parsed or with their error
    settles_at: float | None  # when the first file still being written will have settled
    named_like_requests: int  # entries named like a request, whatever they turned out to be


def _scan_inbox(inbox: Path, now: float, settle: float) -> _Listing:
    """One listing of ``inbox``: what is ready, and what may be later."""
    try:
        with os.scandir(inbox) as listing:
            entries = sorted(listing, key=lambda entry: entry.name)
    except FileNotFoundError:
        return _Listing([], None, 0)
    found = []
    settles_at: float | None = None
    named_like_requests = 0
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(".json"):
            continue
        named_like_requests += 1
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            continue
        if 0 <= now - info.st_mtime < settle:
            ready_at = info.st_mtime + settle
            settles_at = ready_at if settles_at is None else min(settles_at, ready_at)
            continue
        identity = (info.st_dev, info.st_ino, info.st_mtime_ns)
        pending = _read_request(inbox / entry.name, identity)
        if pending is not None:
            found.append(pending)
    return _Listing(found, settles_at, named_like_requests)


def _open_outcome_directory(inbox: int, name: str, owner: tuple[int, int] | None) -> int:
    """``done/`` or ``failed/`` inside the open inbox, created 0700; never a symlink."""
    try:
        os.mkdir(name, 0o700, dir_fd=inbox)
        created = True
    except FileExistsError:
        created = False
    try:
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=inbox
        )
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR):
            raise NotADirectoryError(
                errno.ENOTDIR, "not a directory (a symlink is not followed)", name
            ) from None
        raise
    if created and owner is not None:
        os.fchown(fd, *owner)
    return fd


def _free_name(directory: int, name: str) -> str:
    """``name``, else ``stem.1.json``, ``stem.2.json``...: the first one not taken."""
    # Only the inbox's owner could take a name between this check and the rename, and
    # then loses only a file of its own: rename replaces an entry, never follows it.
    stem, dot, suffix = name.rpartition(".")
    if not dot:
        stem, suffix = name, ""
    for counter in range(MAX_NAME_COUNTER):
        candidate = name if counter == 0 else f"{stem}.{counter}.{suffix}".rstrip(".")
        if not _exists(candidate, directory) and not _exists(candidate + RESULT_SUFFIX, directory):
            return candidate
    raise FileExistsError(errno.EEXIST, f"no free name for {name}")


def _exists(name: str, directory: int) -> bool:
    try:
        os.lstat(name, dir_fd=directory)
    except FileNotFoundError:
        return False
    return True


def finish(
    pending: PendingRequest,
    ok: bool,
    result: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> Path:
    """Move the request to ``done/`` or ``failed/`` and write its result beside it.

    ``result`` goes under ``"result"`` when ``ok``, under ``"error"`` otherwise. Returns
    where the request went; raises OSError when it could not be moved (the result file
    is only logged when it cannot be written: the request has run and is out of the way).
    As root, what clawsup creates there belongs to the inbox's owner, so that the skill
    that wrote the request can read its result.
    """
    outcome = DONE_DIR if ok else FAILED_DIR
    record = _result_record(pending, ok, result, now)
    # Everything below goes through directory fds: the inbox belongs to the gateway's
    # user, who must not be able to steer root's writes elsewhere with a symlink.
    inbox = os.open(pending.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        owner = owner_for_new_files(inbox)
        directory = _open_outcome_directory(inbox, outcome, owner)
        try:
            moved = _free_name(directory, pending.name)
            os.rename(pending.name, moved, src_dir_fd=inbox, dst_dir_fd=directory)
            fsync_directory(inbox)
            try:
                write_atomically(Path(moved + RESULT_SUFFIX), record, owner=owner, dir_fd=directory)
            except OSError as error:
                log.warning("ops request %s: cannot write its result: %s", pending.name, error)
        finally:
            os.close(directory)
    finally:
        os.close(inbox)
    return pending.path.parent / outcome / moved


def _result_record(
    pending: PendingRequest, ok: bool, result: Mapping[str, Any], now: datetime | None
) -> bytes:
    record = {
        "request": pending.name,
        "ok": ok,
        "result" if ok else "error": dict(result),
        "finished_at": now or datetime.now(UTC),
    }
    return msgspec.json.format(msgspec.json.encode(record, enc_hook=str)) + b"\n"


class OpsInbox:
    """The ops-requests directory, handing out each request once per process."""

    def __init__(self, directory: str | os.PathLike[str], *, settle: float = SETTLE_SECONDS):
        self.directory = expand_path(os.fspath(directory))
        self.settle = settle
        # Handed out, not finished yet: a slow restart must not be handed out again.
        self._in_flight: set[str] = set()
        # Could not be moved: name -> identity of that file, skipped while it stays.
        self._stuck: dict[str, tuple[int, ...]] = {}
        self._last_listing_error: str | None = None
        # (dev, inode, mtime) of the inbox when a listing found no request in it.
        self._empty_as_of: tuple[int, int, int] | None = None
        # Wall-clock time when a file the last look left alone (still being written)
        # will have settled; None when there was none.
        self.settles_at: float | None = None

    def take(self, now: float | None = None) -> list[PendingRequest]:
        """Requests to run, in name order; each must be passed back to ``finish``.

        Files that are not valid requests are moved to ``failed/`` here and logged.
        """
        current = time.time() if now is None else now
        # Taken before the listing: a request arriving after it changes the mtime.
        inbox = self._identity()
        if inbox is not None and inbox[0] == self._empty_as_of:
            self.settles_at = None
            return []
        self._empty_as_of = None
        try:
            listing = _scan_inbox(self.directory, current, self.settle)
        except OSError as error:
            self.settles_at = None
            message = f"cannot list ops requests in {self.directory}: {error.strerror}"
            if message != self._last_listing_error:
                log.error("%s", message)
            self._last_listing_error = message
            return []
        self._last_listing_error = None
        self.settles_at = listing.settles_at
        if (inbox is not None and not listing.named_like_requests and not self._in_flight
                and not self._stuck and current - inbox[1] >= _QUIET_MARGIN):
            self._empty_as_of = inbox[0]
        self._stuck = {
            name: identity
            for name, identity in self._stuck.items()
            if os.path.lexists(self.directory / name)
        }
        ready = []
        for pending in listing.found:
            if pending.name in self._in_flight or self._stuck.get(pending.name) == pending.identity:
                continue
            if pending.request is None:
                log.warning("rejected ops request %s: %s", pending.path, pending.error)
                self._finish(pending, False, {"code": BAD_REQUEST, "message": pending.error})
                continue
            self._in_flight.add(pending.name)
            ready.append(pending)
        return ready

    def _identity(self) -> tuple[tuple[int, int, int], float] | None:
        """(dev, inode, mtime) of the inbox and its mtime in seconds; None if unreadable.

        ``take`` runs every sweep for the supervisor's whole life, nearly always on an
        empty inbox, and an inbox found empty is not listed again while this stays the
        same: one stat instead of a listing. A file created or renamed into it changes
        the directory's mtime, but the kernel stamps that from a coarse clock (a few ms),
        so a file created just after a listing may leave it unchanged. The shortcut is
        trusted only when the mtime was already ``_QUIET_MARGIN`` older than the listing,
        as git trusts a racy index entry: any later change then stamps a different mtime.
        """
        try:
            info = os.stat(self.directory)
        except OSError:
            return None  # the listing says what is wrong, once
        return (info.st_dev, info.st_ino, info.st_mtime_ns), info.st_mtime

    def finish(self, pending: PendingRequest, ok: bool, result: Mapping[str, Any]) -> Path | None:
        """As the module's ``finish``; a move that fails is logged and remembered, not raised."""
        self._in_flight.discard(pending.name)
        return self._finish(pending, ok, result)

    def _finish(self, pending: PendingRequest, ok: bool, result: Mapping[str, Any]) -> Path | None:
        try:
            return finish(pending, ok, result)
        except OSError as error:
            log.error(
                "cannot move ops request %s out of the inbox: %s; it will not run again "
                "until clawsup restarts",
                pending.path,
                error,
            )
            self._stuck[pending.name] = pending.identity
            return None
