"""The gateway's settings (default model, time zone): validated, written, remembered.

The gateway reads ``~/.clawdbot/clawdbot.json`` (JSON5) and applies ``agents.*`` changes
live. ``set_model`` / ``set_timezone`` validate a value, then rewrite that one key of the
file and keep every other key. The supervisor also remembers each value it set in
``<state_dir>/overrides.json`` and writes it again at startup (``apply_overrides``), so a
value survives a clawsup restart and a container whose gateway config was reset.

How the gateway config is rewritten:

- Atomically: a temp file in the same directory, written and fsynced, renamed over the
  config, then the directory fsynced. A failed write leaves the old file as it was and no
  temp file behind. A symlinked config is written through to its target.
- Only the value changes: the string at the key is replaced in the file's own text
  (json5edit.py), so comments, unquoted keys, quotes and layout stay as they were. The
  result is parsed again and must equal the intended document; when it cannot be done
  with certainty (the key is missing or not a string, appears twice...) the file is
  rewritten as formatted JSON (valid JSON5) instead, and that loses the comments.
  What was there before is kept in ``<config>.clawsup.bak`` -- not ``.bak``, which the
  gateway writes itself. The backup is refreshed only when the file holds a version
  clawsup did not write (hand-edited, or rewritten by the gateway), so repeated
  ``set_model`` calls never replace the original with clawsup's own output; the value
  that one of clawsup's own versions held is in the log and the ``Change`` it returned.
- Mode and owner are kept (chown back to the original owner needs root; without it a
  file owned by someone else is refused rather than silently given away).
- A missing config is created with just the key (mode 0600: it holds tokens; owned, when
  clawsup is root, by the owner of its directory, which is the gateway's user); its
  directory must exist. An unreadable or malformed config is an error and nothing is
  written.
- Writing a value that is already there writes nothing.

The race with the gateway, which also writes this file (temp file + rename): the file is
read again right before the rename and, if it changed since it was parsed, the whole
read-modify-write starts over (a few times, then gives up). That narrows a lost update to
the microseconds between that check and the rename; closing it needs a lock both writers
honour, and the gateway takes none.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec

from clawsup.supervisor.config import GatewayConfigFile, expand_path
from clawsup.supervisor.fileops import owner_for_new_files, read_small_file, write_atomically

# json5, json5edit and zoneinfo are imported where they are used: they serve set_model and
# set_timezone only, and at start-up they would cost PID 1 about 2 MiB of RSS for good
# (json5 pulls in unicodedata; zoneinfo pulls in sysconfig).

log = logging.getLogger(__name__)

MODEL_EXAMPLE = "anthropic/claude-opus-4-5"
MAX_MODEL_LENGTH = 200
MAX_ZONE_LENGTH = 255
BACKUP_SUFFIX = ".clawsup.bak"
OVERRIDES_FILE = "overrides.json"
MAX_OVERRIDES_SIZE = 64 << 10
# Tries of the read-modify-write when the file keeps changing under us.
WRITE_ATTEMPTS = 3

# provider "/" model, where the model part may itself hold "/" (openrouter/meta-llama/x).
_NAME_PART = r"[A-Za-z0-9][A-Za-z0-9._:@-]*"
_MODEL_PATTERN = re.compile(rf"{_NAME_PART}/{_NAME_PART}(?:/{_NAME_PART})*")
# IANA names: ASCII letters, digits, ".", "_", "-", "+" in "/"-separated parts.
_ZONE_PATTERN = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9._+-]*(?:/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*")
# Files in the zoneinfo tree that zoneinfo loads but that are not zone names.
_NOT_ZONES = frozenset({"localtime", "posixrules"})


class SettingError(ValueError):
    """A setting that cannot be validated, read or written; says which and why."""


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One key written to the gateway config. ``old`` is None when the key was absent."""

    path: str
    key: str
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new


class Override(msgspec.Struct, frozen=True, kw_only=True):
    """One value clawsup set, and what the file held before: the start-up re-apply is
    allowed only over that (or over clawsup's own values), never over someone else's."""

    value: str
    replaced: str | None  # None: the key was absent
    # The last value clawsup wrote for another reason (the model breaker's fallback): the
    # file holding it is clawsup's own doing too, not an edit to respect.
    written: str | None = None


class Overrides(msgspec.Struct, frozen=True, kw_only=True):
    """What clawsup set and re-applies at startup; None means "leave the file's value".

    A bare string is the format before ``replaced`` was kept: what it replaced is unknown.
    """

    model: Override | str | None = None
    timezone: Override | str | None = None


# --- validation -----------------------------------------------------------------------


def validate_model(model: str, allowed: Sequence[str] = ()) -> str:
    """``model`` if it is a ``provider/model`` name (and in ``allowed``, when given)."""
    shown = _shown(model)
    if len(model) > MAX_MODEL_LENGTH:
        raise SettingError(f"bad model name {shown}: longer than {MAX_MODEL_LENGTH} characters")
    if not _MODEL_PATTERN.fullmatch(model):
        raise SettingError(f"bad model name {shown}: expected provider/model, e.g. {MODEL_EXAMPLE}")
    if allowed and model not in allowed:
        raise SettingError(f"model {shown} is not allowed here; allowed: {', '.join(allowed)}")
    return model


def validate_timezone(zone: str) -> str:
    """``zone`` if it is an IANA time zone name that ``zoneinfo`` knows."""
    shown = _shown(zone)
    if not zone:
        raise SettingError("empty time zone name: expected an IANA name like America/Sao_Paulo")
    # The pattern rules out absolute paths, "..", whitespace and control characters
    # before zoneinfo turns the name into a path below its TZPATH.
    if (
        len(zone) > MAX_ZONE_LENGTH
        or not _ZONE_PATTERN.fullmatch(zone)
        or ".." in zone.split("/")
        or zone in _NOT_ZONES
    ):
        raise SettingError(f"unknown time zone {shown}")
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(zone)
    except zoneinfo.ZoneInfoNotFoundError:
        raise SettingError(f"unknown time zone {shown}") from None
    except ValueError as error:  # not a TZif file, or a key zoneinfo refuses
        raise SettingError(f"unknown time zone {shown}: {error}") from None
    except OSError as error:  # a directory of zones ("America"), an unreadable file
        raise SettingError(f"unknown time zone {shown}: {error.strerror}") from None
    return zone


def _shown(value: str) -> str:
    """A value for an error message: quoted, escaped, and cut short when huge."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(value)} characters)"


# --- the gateway config ---------------------------------------------------------------


class _Snapshot(msgspec.Struct, frozen=True):
    raw: bytes | None  # None: the file does not exist
    doc: dict[str, Any]
    mode: int
    owner: tuple[int, int] | None


def _read_raw(path: Path) -> tuple[bytes | None, os.stat_result | None]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        return None, None
    except OSError as error:
        raise SettingError(f"cannot read gateway config {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SettingError(f"cannot read gateway config {path}: not a regular file")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(), info
    except OSError as error:
        raise SettingError(f"cannot read gateway config {path}: {error.strerror}") from None
    finally:
        os.close(fd)


def _parse(path: Path, raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SettingError(f"gateway config {path} is not UTF-8 text: {error}") from None
    try:
        # Plain JSON first, as `clawdbot config set` writes it: json is loaded anyway,
        # and json5 (with unicodedata) would cost PID 1 memory for good at start-up,
        # where the turn timeout is read (message_timeout.py). JSON is JSON5.
        doc = json.loads(text)
    except (ValueError, RecursionError):
        import json5

        try:
            doc = json5.loads(text)
        except (ValueError, RecursionError) as error:
            raise SettingError(f"gateway config {path} is not valid JSON5: {error}") from None
    if not isinstance(doc, dict):
        raise SettingError(f"gateway config {path} must hold an object, not {type(doc).__name__}")
    return doc


def _snapshot(path: Path) -> _Snapshot:
    raw, info = _read_raw(path)
    doc = _parse(path, raw)
    if info is None:
        return _Snapshot(raw, doc, 0o600, None)
    return _Snapshot(raw, doc, stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid))


def read_gateway_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed config; ``{}`` when the file does not exist; SettingError otherwise."""
    return _snapshot(_resolve(path)).doc


def _resolve(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(expand_path(os.fspath(path))))


def _key_parts(dotted_key: str) -> list[str]:
    parts = dotted_key.split(".")
    if not all(parts):
        raise SettingError(f"bad config key {dotted_key!r}: expected names joined by dots")
    return parts


def get_key(doc: Mapping[str, Any], dotted_key: str) -> Any:
    """The value at ``a.b.c``; None when any part of the way is missing or not an object."""
    node: Any = doc
    for part in _key_parts(dotted_key):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _set_key(doc: dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, last = _key_parts(dotted_key)
    node = doc
    for depth, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            raise SettingError(
                f"cannot set {dotted_key}: {where} is a {type(child).__name__}, not an object"
            )
        node = child
    node[last] = value


def render_config(doc: Mapping[str, Any]) -> bytes:
    """The text clawsup writes: two-space JSON, as the gateway writes it, plus a newline."""
    return (json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=True) + "\n").encode()


def write_settings(path: str | os.PathLike[str], values: Mapping[str, Any]) -> dict[str, Any]:
    """Set each dotted key of ``values`` in the config at ``path``; return the old values.

    Writes nothing when every value is already there. See the module docstring for how
    (atomic, backup, mode and owner, the race with the gateway).
    """
    target = _resolve(path)
    for _attempt in range(WRITE_ATTEMPTS):
        before = _snapshot(target)
        old = {key: get_key(before.doc, key) for key in values}
        if all(_same(old[key], value) for key, value in values.items()):
            return old
        doc = copy.deepcopy(before.doc)
        for key, value in values.items():
            _set_key(doc, key, value)
        if _write_if_unchanged(target, before, _new_text(target, before, values, doc)):
            return old
        log.info("%s changed while clawsup was writing it; reading it again", target)
    raise SettingError(
        f"cannot write gateway config {target}: it kept changing "
        f"({WRITE_ATTEMPTS} attempts); another writer is busy with it"
    )


def _new_text(
    target: Path, before: _Snapshot, values: Mapping[str, Any], doc: dict[str, Any]
) -> bytes:
    """The file's own text with just the values swapped, so its comments and layout
    survive; the full JSON rewrite when that cannot be done with certainty."""
    if before.raw is None or not all(isinstance(v, str) for v in values.values()):
        return render_config(doc)
    import json5

    from clawsup.supervisor import json5edit

    try:
        text = before.raw.decode("utf-8")
        for key, value in values.items():
            text = json5edit.replace_string(text, key, value)
        # The edit only locates spans; what the result means is checked by the parser.
        if json5.loads(text) == doc:
            return text.encode("utf-8")
        reason = "the edited text does not parse to the intended document"
    except json5edit.Unsupported as error:
        reason = str(error)
    except (UnicodeDecodeError, ValueError) as error:
        reason = f"{type(error).__name__}: {error}"
    log.info("rewriting %s as JSON (comments are kept in the backup): %s", target, reason)
    return render_config(doc)


def write_setting(path: str | os.PathLike[str], dotted_key: str, value: Any) -> Any:
    """Set one dotted key; return its old value (None when absent)."""
    return write_settings(path, {dotted_key: value})[dotted_key]


def _same(old: Any, new: Any) -> bool:
    return type(old) is type(new) and old == new


class _ChangedMeanwhile(Exception):
    pass


# What this process last wrote to each gateway config (a few KiB each), to tell its own
# in-place edits from a version someone else wrote. Lost on restart: then one more
# backup is taken, never one less.
_LAST_WRITTEN: dict[Path, bytes] = {}


def _write_if_unchanged(target: Path, before: _Snapshot, data: bytes) -> bool:
    """Write ``data`` over ``target`` unless the file changed since ``before`` was read."""

    def check_and_back_up() -> None:
        if _read_raw(target)[0] != before.raw:
            raise _ChangedMeanwhile
        # A version clawsup wrote (its JSON rewrite, or its last in-place edit) never
        # replaces the backup: that keeps the hand-written original there.
        ours = before.raw in (render_config(before.doc), _LAST_WRITTEN.get(target))
        if before.raw is not None and not ours:
            backup = target.with_name(target.name + BACKUP_SUFFIX)
            write_atomically(backup, before.raw, mode=before.mode, owner=before.owner)

    try:
        owner = before.owner if before.raw is not None else owner_for_new_files(target.parent)
        write_atomically(
            target, data, mode=before.mode, owner=owner, before_rename=check_and_back_up
        )
    except _ChangedMeanwhile:
        return False
    except OSError as error:
        raise SettingError(
            f"cannot write gateway config {target}: {error.strerror or error}"
        ) from None
    _LAST_WRITTEN[target] = data
    return True


def _described(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _write_one(config_file: GatewayConfigFile, key: str, value: str) -> Change:
    path = _resolve(config_file.path)
    old = write_setting(path, key, value)
    change = Change(path=str(path), key=key, old=_described(old), new=value)
    if change.changed:
        log.info("%s: %s %r -> %r", path, key, change.old, value)
    return change


def set_model(config_file: GatewayConfigFile, model: str) -> Change:
    """Validate ``model`` and write it to the gateway config's ``model_key``."""
    validate_model(model, config_file.allowed_models)
    return _write_one(config_file, config_file.model_key, model)


def set_timezone(config_file: GatewayConfigFile, zone: str) -> Change:
    """Validate ``zone`` and write it to the gateway config's ``timezone_key``."""
    validate_timezone(zone)
    return _write_one(config_file, config_file.timezone_key, zone)


# --- overrides remembered in state_dir ---------------------------------------------------

_overrides_decoder = msgspec.json.Decoder(Overrides)


def overrides_path(state_dir: str | os.PathLike[str]) -> Path:
    return expand_path(os.fspath(state_dir)) / OVERRIDES_FILE


def load_overrides(state_dir: str | os.PathLike[str]) -> Overrides:
    """The remembered overrides; empty when there are none or the file is unusable.

    A corrupt file is logged and ignored, never a reason not to start: the gateway's own
    config still holds a model and a zone.
    """
    path = overrides_path(state_dir)
    try:
        data = read_small_file(path, MAX_OVERRIDES_SIZE, follow_symlinks=False)
    except FileNotFoundError:
        return Overrides()
    except OSError as error:
        log.warning("ignoring overrides %s: cannot read it: %s", path, error.strerror)
        return Overrides()
    if len(data) > MAX_OVERRIDES_SIZE:
        log.warning("ignoring overrides %s: larger than %d bytes", path, MAX_OVERRIDES_SIZE)
        return Overrides()
    try:
        return _overrides_decoder.decode(data)
    except (msgspec.DecodeError, RecursionError) as error:
        log.warning("ignoring overrides %s: %s", path, error)
        return Overrides()


def save_overrides(state_dir: str | os.PathLike[str], overrides: Overrides) -> Path:
    """Write the overrides atomically (state_dir created 0700 when missing)."""
    path = overrides_path(state_dir)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomically(path, msgspec.json.format(msgspec.json.encode(overrides)) + b"\n")
    except OSError as error:
        raise SettingError(f"cannot save overrides to {path}: {error.strerror}") from None
    return path


def override_value(override: Override | str | None) -> str | None:
    """The value an override sets, whichever format it was saved in."""
    return override.value if isinstance(override, Override) else override


def remembered(previous: Override | str | None, change: Change) -> Override:
    """The override to keep after ``change`` was written at an operator's request.

    What it replaced stays the value before clawsup's first change: over a file that
    still holds clawsup's own earlier value, the original is what a reset brings back.
    """
    if isinstance(previous, Override) and change.old in (previous.value, previous.written):
        return Override(value=change.new, replaced=previous.replaced)
    return Override(value=change.new, replaced=change.old)


class Dropped(msgspec.Struct, frozen=True, kw_only=True):
    """A remembered value not re-applied because the file was edited since."""

    key: str
    value: str
    found: str | None  # what the file holds now
    replaced: str | None  # what clawsup's value had replaced; None also when unknown
    reason: str


class Reapplied(msgspec.Struct, frozen=True, kw_only=True):
    """What ``apply_overrides`` did: values written, overrides dropped, and the
    overrides still in force (to save back when some were dropped)."""

    changes: list[Change]
    dropped: list[Dropped]
    kept: Overrides


def _verdict(override: Override | str, found: str | None) -> str | None:
    """Why the remembered value must not be written over ``found``; None when it may.

    The file holding the remembered value, what it replaced (a reset config, a new
    home) or a value clawsup wrote itself is clawsup's to change; anything else, a key
    removed included, is an edit made since (by hand, ``clawdbot config set``, the
    gateway) and wins.
    """
    if isinstance(override, str):
        if found == override:
            return None
        return "remembered in the old format, without the value it replaced"
    if found in (override.value, override.replaced) or (
        override.written is not None and found == override.written
    ):
        return None
    return "the gateway config was edited since clawsup set it"


def apply_overrides(config_file: GatewayConfigFile, overrides: Overrides) -> Reapplied:
    """Write every remembered value the file may take back (see ``_verdict``).

    An override that no longer validates (the zone database changed, ``allowed_models``
    no longer lists it) is logged and skipped: the config's own value stays. One over a
    file edited since is dropped. A config that cannot be read or written raises
    SettingError and nothing is written.
    """
    path = _resolve(config_file.path)
    snapshot = _snapshot(path)
    doc = snapshot.doc
    wanted: dict[str, str] = {}
    dropped: list[Dropped] = []
    kept: dict[str, Override | str | None] = {"model": overrides.model,
                                              "timezone": overrides.timezone}
    for name, key, validate in (
        ("model", config_file.model_key,
         lambda v: validate_model(v, config_file.allowed_models)),
        ("timezone", config_file.timezone_key, validate_timezone),
    ):
        override = kept[name]
        if override is None:
            continue
        value = override if isinstance(override, str) else override.value
        found = _described(get_key(doc, key))
        # No file at all (a new container, a reset home) is nobody's edit to respect.
        why = None if snapshot.raw is None else _verdict(override, found)
        if why is not None:
            replaced = None if isinstance(override, str) else override.replaced
            dropped.append(Dropped(key=key, value=value, found=found, replaced=replaced,
                                   reason=why))
            kept[name] = None
            continue
        try:
            wanted[key] = validate(value)
        except SettingError as error:
            log.warning("not re-applying the remembered %s: %s", name, error)
    kept_overrides = Overrides(model=kept["model"], timezone=kept["timezone"])
    if not wanted:
        return Reapplied(changes=[], dropped=dropped, kept=kept_overrides)
    old = write_settings(path, wanted)
    changes = [
        Change(path=str(path), key=key, old=_described(old[key]), new=value)
        for key, value in wanted.items()
    ]
    for change in changes:
        if change.changed:
            log.info("%s: re-applied %s %r -> %r", path, change.key, change.old, change.new)
    return Reapplied(changes=[c for c in changes if c.changed], dropped=dropped,
                     kept=kept_overrides)
