from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import json5
import pytest

from clawsup.supervisor.config import GatewayConfigFile
from clawsup.supervisor.fileops import write_atomically
from clawsup.supervisor.settings import (
    BACKUP_SUFFIX,
    Change,
    Override,
    Overrides,
    SettingError,
    _snapshot,
    _write_if_unchanged,
    apply_overrides,
    get_key,
    load_overrides,
    read_gateway_config,
    remembered,
    save_overrides,
    set_model,
    set_timezone,
    validate_model,
    validate_timezone,
    write_setting,
)
from tests.test_opsfiles import frozen_directory

MODEL_KEY = "agents.defaults.model.primary"
ZONE_KEY = "agents.defaults.userTimezone"


@pytest.fixture
def config_path(clawdbot_home: Path) -> Path:
    return clawdbot_home / "clawdbot.json"


@pytest.fixture
def config_file(config_path: Path) -> GatewayConfigFile:
    return GatewayConfigFile(path=str(config_path))


def entries(directory: Path) -> set[str]:
    return set(os.listdir(directory))


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


@contextlib.contextmanager
def nothing_written(directory: Path) -> Iterator[None]:
    """Every entry of ``directory`` is there afterwards as before, byte for byte."""

    def contents() -> dict[str, bytes | None]:
        return {p.name: p.read_bytes() if p.is_file() else None for p in directory.iterdir()}

    before = contents()
    yield
    assert contents() == before


def test_set_model_changes_only_the_model(config_path: Path, config_file: GatewayConfigFile):
    before = json5.loads(config_path.read_text())

    change = set_model(config_file, "openai/gpt-5.2")

    assert change == Change(
        path=str(config_path), key=MODEL_KEY, old="anthropic/claude-opus-4-5", new="openai/gpt-5.2"
    )
    after = json5.loads(config_path.read_text())
    before["agents"]["defaults"]["model"]["primary"] = "openai/gpt-5.2"
    assert after == before
    assert after["agents"]["defaults"]["model"]["fallbacks"] == ["openai/gpt-5.2"]
    assert after["gateway"]["reload"] == {"mode": "hybrid", "debounceMs": 300}
    assert after["channels"]["telegram"] == {"enabled": True, "dmPolicy": "pairing"}


def test_set_model_keeps_comments_and_layout_and_changes_only_the_value(
    config_path: Path, config_file: GatewayConfigFile
):
    original = config_path.read_text()
    set_model(config_file, "openai/gpt-5.2")
    assert config_path.read_text() == original.replace(
        'primary: "anthropic/claude-opus-4-5"', 'primary: "openai/gpt-5.2"'
    )
    set_timezone(config_file, "Europe/Lisbon")
    text = config_path.read_text()
    assert "// IANA zone" in text
    assert 'userTimezone: "Europe/Lisbon"' in text


def test_first_rewrite_keeps_the_commented_original_in_the_backup(
    config_path: Path, config_file: GatewayConfigFile
):
    original = config_path.read_bytes()
    assert b"//" in original

    set_model(config_file, "openai/gpt-5.2")
    set_model(config_file, "anthropic/claude-sonnet-4-5")
    set_timezone(config_file, "Europe/Lisbon")

    # clawsup's own versions never push the hand-written original out of the backup.
    assert backup_of(config_path).read_bytes() == original


def test_a_version_written_by_someone_else_is_backed_up(
    config_path: Path, config_file: GatewayConfigFile
):
    set_model(config_file, "openai/gpt-5.2")
    edited = b'{"agents": {"defaults": {"model": {"primary": "openai/gpt-5.2"}}}, "x": 1}'
    config_path.write_bytes(edited)

    set_model(config_file, "anthropic/claude-opus-4-5")

    assert backup_of(config_path).read_bytes() == edited


def test_write_leaves_no_temp_files(config_path: Path, config_file: GatewayConfigFile):
    before = entries(config_path.parent)
    set_model(config_file, "openai/gpt-5.2")
    set_timezone(config_file, "Asia/Tokyo")
    assert entries(config_path.parent) == before | {backup_of(config_path).name}


def test_mode_is_kept(config_path: Path, config_file: GatewayConfigFile):
    config_path.chmod(0o640)
    set_model(config_file, "openai/gpt-5.2")
    assert stat.S_IMODE(config_path.stat().st_mode) == 0o640
    assert stat.S_IMODE(backup_of(config_path).stat().st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_owner_is_kept_when_root(config_path: Path, config_file: GatewayConfigFile):
    os.chown(config_path, 4321, 4322)
    set_model(config_file, "openai/gpt-5.2")
    info = config_path.stat()
    assert (info.st_uid, info.st_gid) == (4321, 4322)
    assert backup_of(config_path).stat().st_uid == 4321


def test_same_value_writes_nothing(config_path: Path, config_file: GatewayConfigFile):
    before = config_path.stat()
    change = set_model(config_file, "anthropic/claude-opus-4-5")
    assert not change.changed
    after = config_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not backup_of(config_path).exists()


@pytest.mark.parametrize(
    "model",
    [
        "",
        " ",
        "claude-opus",
        "anthropic/",
        "/claude",
        "anthropic/ claude",
        " anthropic/claude",
        "anthropic/claude\n",
        "anthropic/claude\x00",
        "anthropic//claude",
        "anthropic/claude/",
        "a" * 10_000 + "/b",
        "anthropic/clau de",
        "anthropic/clâude",
    ],
)
def test_bad_model_names_change_nothing(
    model: str, config_path: Path, config_file: GatewayConfigFile
):
    with nothing_written(config_path.parent), pytest.raises(SettingError, match="bad model"):
        set_model(config_file, model)


def test_bad_model_message_shows_the_expected_form():
    with pytest.raises(SettingError) as raised:
        validate_model("x", [])
    assert str(raised.value) == (
        "bad model name 'x': expected provider/model, e.g. anthropic/claude-opus-4-5"
    )


def test_huge_model_name_is_cut_short_in_the_message():
    with pytest.raises(SettingError) as raised:
        validate_model("a" * 10_000 + "/b", [])
    assert len(str(raised.value)) < 200


@pytest.mark.parametrize(
    "model",
    [
        "anthropic/claude-opus-4-5",
        "openrouter/meta-llama/llama-3",
        "ollama/llama3:8b",
        "vertex/claude-3@20240229",
        "openai/gpt-5.2",
    ],
)
def test_good_model_names_pass(model: str):
    assert validate_model(model, []) == model


def test_model_outside_the_allowed_list_changes_nothing(config_path: Path):
    config_file = GatewayConfigFile(path=str(config_path), allowed_models=["openai/gpt-5.2"])
    with nothing_written(config_path.parent), pytest.raises(SettingError, match="not allowed"):
        set_model(config_file, "anthropic/claude-sonnet-4-5")
    assert set_model(config_file, "openai/gpt-5.2").new == "openai/gpt-5.2"


@pytest.mark.parametrize(
    "zone",
    [
        "Mars/Base",
        "../etc/passwd",
        "/etc/localtime",
        "",
        "America",
        "localtime",
        "posixrules",
        "America/Sao Paulo",
        "Europe/../Etc/UTC",
        "Europe/Lisbon\n",
        "x" * 10_000,
    ],
)
def test_bad_zones_change_nothing(zone: str, config_path: Path, config_file: GatewayConfigFile):
    with nothing_written(config_path.parent), pytest.raises(SettingError, match="time zone"):
        set_timezone(config_file, zone)


def test_unknown_zone_message():
    with pytest.raises(SettingError) as raised:
        validate_timezone("Mars/Base")
    assert str(raised.value) == "unknown time zone 'Mars/Base'"


@pytest.mark.parametrize("zone", ["America/Sao_Paulo", "UTC", "Etc/GMT+3", "Europe/Lisbon"])
def test_iana_zones_pass(zone: str):
    assert validate_timezone(zone) == zone


def test_set_timezone_writes_the_zone(config_path: Path, config_file: GatewayConfigFile):
    change = set_timezone(config_file, "Asia/Tokyo")
    assert (change.old, change.new) == ("America/Sao_Paulo", "Asia/Tokyo")
    assert get_key(read_gateway_config(config_path), ZONE_KEY) == "Asia/Tokyo"


@pytest.mark.parametrize(
    "content",
    [
        b"{ agents: { defaults: ",
        b"// only a comment\n",
        b"[1, 2, 3]",
        b'{"agents": "\xff\xfe"}',
    ],
)
def test_malformed_config_is_an_error_and_nothing_is_written(
    content: bytes, config_path: Path, config_file: GatewayConfigFile
):
    config_path.write_bytes(content)
    with nothing_written(config_path.parent), pytest.raises(SettingError) as raised:
        set_model(config_file, "openai/gpt-5.2")
    assert str(config_path) in str(raised.value)


def test_a_key_below_a_non_object_is_refused(config_path: Path, config_file: GatewayConfigFile):
    content = b'{agents: {defaults: {model: "anthropic/claude-opus-4-5"}}}'
    config_path.write_bytes(content)
    with pytest.raises(SettingError, match=r"agents\.defaults\.model is a str, not an object"):
        set_model(config_file, "openai/gpt-5.2")
    assert config_path.read_bytes() == content


def test_missing_config_is_created_with_just_the_key(tmp_path: Path):
    path = tmp_path / "clawdbot.json"
    assert read_gateway_config(path) == {}

    change = set_model(GatewayConfigFile(path=str(path)), "openai/gpt-5.2")

    assert change.old is None
    assert json.loads(path.read_text()) == {
        "agents": {"defaults": {"model": {"primary": "openai/gpt-5.2"}}}
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not backup_of(path).exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file to another owner")
def test_a_new_config_belongs_to_the_owner_of_its_directory(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 4321, 4322)
    path = home / "clawdbot.json"
    set_timezone(GatewayConfigFile(path=str(path)), "Asia/Tokyo")
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (4321, 4322, 0o600)


def test_missing_config_directory_is_an_error(tmp_path: Path):
    path = tmp_path / "absent" / "clawdbot.json"
    assert read_gateway_config(path) == {}
    with pytest.raises(SettingError, match="cannot write gateway config"):
        set_model(GatewayConfigFile(path=str(path)), "openai/gpt-5.2")
    assert not path.parent.exists()


def test_symlinked_config_is_written_through(config_path: Path, tmp_path: Path):
    link = tmp_path / "link.json"
    link.symlink_to(config_path)
    set_model(GatewayConfigFile(path=str(link)), "openai/gpt-5.2")
    assert link.is_symlink()
    assert get_key(read_gateway_config(config_path), MODEL_KEY) == "openai/gpt-5.2"


def test_unwritable_backup_leaves_the_config_intact(
    config_path: Path, config_file: GatewayConfigFile
):
    blocker = backup_of(config_path)
    blocker.mkdir()
    (blocker / "keep").write_text("x")
    with (
        nothing_written(config_path.parent),
        pytest.raises(SettingError, match="cannot write gateway config"),
    ):
        set_model(config_file, "openai/gpt-5.2")


def test_read_only_directory_leaves_the_config_intact(
    config_path: Path, config_file: GatewayConfigFile
):
    with (
        nothing_written(config_path.parent),
        frozen_directory(config_path.parent),
        pytest.raises(SettingError),
    ):
        set_model(config_file, "openai/gpt-5.2")


def test_disk_full_mid_write_leaves_the_config_intact(config_path: Path):
    # RLIMIT_FSIZE makes write() fail with EFBIG part way through the temp file, as a
    # full disk would; it needs a process of its own.
    script = textwrap.dedent(
        f"""
        import resource, signal
        from clawsup.supervisor.config import GatewayConfigFile
        from clawsup.supervisor.settings import SettingError, set_model
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))
        try:
            set_model(GatewayConfigFile(path={str(config_path)!r}), "openai/gpt-5.2")
        except SettingError as error:
            print(error)
        """
    )
    with nothing_written(config_path.parent):
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
        )
    assert "cannot write gateway config" in done.stdout


def test_a_config_changed_after_reading_is_not_overwritten(config_path: Path):
    before = _snapshot(config_path)
    config_path.write_text('{"written": "by the gateway"}')  # the gateway got there first

    assert not _write_if_unchanged(config_path, before, b'{"lost": "update"}')
    assert config_path.read_text() == '{"written": "by the gateway"}'
    assert not [name for name in entries(config_path.parent) if name.endswith(".tmp")]
    # write_setting reads it again and builds on the gateway's version.
    write_setting(config_path, MODEL_KEY, "openai/gpt-5.2")
    assert read_gateway_config(config_path) == {
        "written": "by the gateway",
        "agents": {"defaults": {"model": {"primary": "openai/gpt-5.2"}}},
    }


def test_write_atomically_backs_out_when_asked(tmp_path: Path):
    path = tmp_path / "file"
    path.write_text("old")

    def refuse() -> None:
        raise OSError(5, "changed my mind")

    with pytest.raises(OSError, match="changed my mind"):
        write_atomically(path, b"new", before_rename=refuse)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["file"]


def test_get_key_walks_dotted_paths():
    doc = {"agents": {"defaults": {"model": {"primary": "a/b"}, "n": 1}}}
    assert get_key(doc, MODEL_KEY) == "a/b"
    assert get_key(doc, "agents.defaults.n") == 1
    assert get_key(doc, "agents.missing.x") is None
    assert get_key(doc, "agents.defaults.n.deeper") is None
    with pytest.raises(SettingError, match="bad config key"):
        get_key(doc, "agents..model")


def test_read_gateway_config_reads_json5(config_path: Path):
    doc = read_gateway_config(config_path)
    assert get_key(doc, MODEL_KEY) == "anthropic/claude-opus-4-5"
    assert get_key(doc, ZONE_KEY) == "America/Sao_Paulo"
    assert get_key(doc, "agents.defaults.timeoutSeconds") == 600


# --- overrides ------------------------------------------------------------------------


def test_overrides_round_trip(tmp_path: Path):
    state_dir = tmp_path / "state" / "clawsup"
    overrides = Overrides(
        model=Override(value="openai/gpt-5.2", replaced="anthropic/claude-opus-4-5"),
        timezone=Override(value="Asia/Tokyo", replaced=None),
    )
    path = save_overrides(state_dir, overrides)
    assert path == state_dir / "overrides.json"
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_overrides(state_dir) == overrides
    assert os.listdir(state_dir) == ["overrides.json"]


def test_an_overrides_file_with_the_old_updated_at_still_loads(tmp_path: Path):
    # Files written before updated_at was dropped carry it; it is ignored.
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "overrides.json").write_text(json.dumps(
        {"model": {"value": "openai/gpt-5.2", "replaced": None},
         "updated_at": "2025-01-31T12:00:00Z"}))
    assert load_overrides(state_dir) == Overrides(
        model=Override(value="openai/gpt-5.2", replaced=None))


def test_no_overrides_file_means_no_overrides(tmp_path: Path):
    assert load_overrides(tmp_path / "nowhere") == Overrides()


@pytest.mark.parametrize(
    "content",
    [
        b"not json at all",
        b'{"model": 42}',
        b"[]",
        b"\xff\xfe\x00",
        b'{"model": "' + b"a" * 70_000 + b'"}',
        b'{"x": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    ],
)
def test_corrupt_overrides_are_logged_and_ignored(
    content: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    (tmp_path / "overrides.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="clawsup.supervisor.settings"):
        assert load_overrides(tmp_path) == Overrides()
    assert "ignoring overrides" in caplog.text


def test_overrides_that_are_a_directory_are_ignored(tmp_path: Path):
    (tmp_path / "overrides.json").mkdir()
    assert load_overrides(tmp_path) == Overrides()


OPUS = "anthropic/claude-opus-4-5"
GPT = "openai/gpt-5.2"


def test_apply_overrides_writes_what_differs_once(
    config_path: Path, config_file: GatewayConfigFile
):
    overrides = Overrides(model=Override(value=GPT, replaced=OPUS),
                          timezone=Override(value="America/Sao_Paulo", replaced="UTC"))

    result = apply_overrides(config_file, overrides)

    assert result.changes == [Change(path=str(config_path), key=MODEL_KEY, old=OPUS, new=GPT)]
    assert (result.dropped, result.kept) == ([], overrides)
    assert get_key(read_gateway_config(config_path), MODEL_KEY) == GPT
    assert apply_overrides(config_file, overrides).changes == []


def test_apply_overrides_to_a_reset_config(config_path: Path, config_file: GatewayConfigFile):
    config_path.unlink()  # a new container with the gateway's config gone
    overrides = Overrides(model=Override(value=GPT, replaced=OPUS),
                          timezone=Override(value="Asia/Tokyo", replaced="America/Sao_Paulo"))

    result = apply_overrides(config_file, overrides)

    assert [(c.key, c.old, c.new) for c in result.changes] == [
        (MODEL_KEY, None, GPT),
        (ZONE_KEY, None, "Asia/Tokyo"),
    ]
    doc = read_gateway_config(config_path)
    assert (get_key(doc, MODEL_KEY), get_key(doc, ZONE_KEY)) == (GPT, "Asia/Tokyo")


def test_a_hand_edit_since_the_override_wins_and_the_override_is_dropped(
    config_path: Path, config_file: GatewayConfigFile
):
    config_path.write_text(config_path.read_text().replace(OPUS, "x-ai/grok-4"))
    overrides = Overrides(model=Override(value=GPT, replaced=OPUS),
                          timezone=Override(value="Asia/Tokyo", replaced="America/Sao_Paulo"))

    result = apply_overrides(config_file, overrides)

    assert [(d.key, d.value, d.found, d.replaced) for d in result.dropped] == [
        (MODEL_KEY, GPT, "x-ai/grok-4", OPUS)]
    assert result.kept == Overrides(model=None, timezone=overrides.timezone)
    assert [(c.key, c.new) for c in result.changes] == [(ZONE_KEY, "Asia/Tokyo")]
    doc = read_gateway_config(config_path)
    assert (get_key(doc, MODEL_KEY), get_key(doc, ZONE_KEY)) == ("x-ai/grok-4", "Asia/Tokyo")


def test_a_removed_key_is_an_edit_too(config_path: Path, config_file: GatewayConfigFile):
    config_path.write_text(config_path.read_text().replace(
        'userTimezone: "America/Sao_Paulo", // IANA zone', ""))
    overrides = Overrides(timezone=Override(value="Asia/Tokyo", replaced="America/Sao_Paulo"))

    result = apply_overrides(config_file, overrides)

    assert [(d.key, d.found) for d in result.dropped] == [(ZONE_KEY, None)]
    assert get_key(read_gateway_config(config_path), ZONE_KEY) is None


def test_a_value_the_breaker_wrote_is_clawsups_own(
    config_path: Path, config_file: GatewayConfigFile
):
    config_path.write_text(config_path.read_text().replace(OPUS, "openai/gpt-4o"))
    overrides = Overrides(model=Override(value=GPT, replaced=OPUS, written="openai/gpt-4o"))

    result = apply_overrides(config_file, overrides)

    assert result.dropped == []
    assert get_key(read_gateway_config(config_path), MODEL_KEY) == GPT


def test_an_old_format_override_is_kept_only_where_the_file_holds_it(
    config_path: Path, config_file: GatewayConfigFile, tmp_path: Path
):
    # Saved before "replaced" was kept: a bare string. Whether the file's value is the one
    # it replaced or an edit since cannot be told, so it is never written over anything.
    state = tmp_path / "state"
    state.mkdir()
    (state / "overrides.json").write_text(
        json.dumps({"model": GPT, "timezone": "America/Sao_Paulo", "updated_at": None}))
    overrides = load_overrides(state)
    assert overrides.model == GPT
    before = config_path.read_bytes()

    result = apply_overrides(config_file, overrides)

    assert [(d.key, d.found) for d in result.dropped] == [(MODEL_KEY, OPUS)]
    assert result.kept == Overrides(timezone="America/Sao_Paulo")
    assert (result.changes, config_path.read_bytes()) == ([], before)


def test_remembered_keeps_the_value_before_clawsups_first_change():
    first = remembered(None, Change(path="p", key=MODEL_KEY, old=OPUS, new=GPT))
    assert first == Override(value=GPT, replaced=OPUS)
    second = remembered(first, Change(path="p", key=MODEL_KEY, old=GPT, new="x-ai/grok-4"))
    assert second == Override(value="x-ai/grok-4", replaced=OPUS)
    # Over someone else's value, that value is what the new one replaced.
    third = remembered(second, Change(path="p", key=MODEL_KEY, old="a/b", new=GPT))
    assert third == Override(value=GPT, replaced="a/b")


def test_apply_overrides_skips_one_no_longer_allowed(
    config_path: Path, caplog: pytest.LogCaptureFixture
):
    config_file = GatewayConfigFile(path=str(config_path), allowed_models=[GPT])
    overrides = Overrides(model=Override(value="anthropic/claude-sonnet-4-5", replaced=OPUS),
                          timezone=Override(value="Asia/Tokyo", replaced="America/Sao_Paulo"))

    with caplog.at_level(logging.WARNING, logger="clawsup.supervisor.settings"):
        result = apply_overrides(config_file, overrides)

    assert [c.key for c in result.changes] == [ZONE_KEY]
    assert "not re-applying the remembered model" in caplog.text
    assert get_key(read_gateway_config(config_path), MODEL_KEY) == OPUS


def test_apply_overrides_on_a_malformed_config_raises_and_writes_nothing(
    config_path: Path, config_file: GatewayConfigFile
):
    config_path.write_bytes(b"{ broken")
    with pytest.raises(SettingError, match="not valid JSON5"):
        apply_overrides(config_file, Overrides(model=Override(value=GPT, replaced=OPUS)))
    assert config_path.read_bytes() == b"{ broken"
