"""The clawsup skill: its file, read by the gateway's front-matter rules, every command in
it a real clawsupctl command line, and ``clawsup install-skill``.

The gateway itself loads and judges the skill in tests/realgw/test_realgw_skill.py (its
own ``skills info`` command on the pinned release); the checks here need no gateway and
follow its loader's rules, read from the release: the front matter is the block between
the first two ``---`` lines, read as YAML, except that a ``key: {...}`` line is taken
verbatim (so ``metadata`` is one line of JSON5); the skill's name must match its folder
and be lowercase, its description is required (at most 1024 characters), and only
``name``, ``description``, ``license``, ``compatibility``, ``metadata`` and
``allowed-tools`` are known fields; ``metadata.clawdbot.requires.bins`` must all be on
PATH for the skill to be eligible.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from clawsup.client.ctl import UsageError, build_parser
from clawsup.skill import SKILL_NAME, source

SKILL = source() / "SKILL.md"
KNOWN_FIELDS = {"name", "description", "license", "compatibility", "metadata", "allowed-tools"}
_LINE = re.compile(r"^([\w-]+):\s*(.*)$")


def front_matter(text: str) -> dict[str, Any]:
    """The gateway's reading (dist/markdown/frontmatter.js): YAML, with ``{...}`` lines
    verbatim; then ``metadata`` parsed as JSON (JSON5 in the gateway; JSON is a subset)."""
    assert text.startswith("---\n"), "the file starts with the front matter"
    end = text.index("\n---", 3)
    block = text[4:end]
    fields: dict[str, Any] = dict(yaml.safe_load(block))
    for line in block.split("\n"):
        match = _LINE.match(line)
        if match and match.group(2).strip().startswith(("{", "[")):
            fields[match.group(1)] = match.group(2).strip()
    fields["metadata"] = json.loads(fields["metadata"])
    return fields


def command_lines(text: str) -> list[list[str]]:
    """Every command line in the skill's ```bash blocks, split as a shell would."""
    lines: list[list[str]] = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines += [shlex.split(line) for line in block.splitlines() if line.strip()]
    return lines


def test_the_front_matter_is_what_the_gateway_loads() -> None:
    fields = front_matter(SKILL.read_text())
    assert set(fields) <= KNOWN_FIELDS, "unknown fields are warned about by the loader"
    assert fields["name"] == SKILL_NAME == SKILL.parent.name
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", fields["name"])
    assert 0 < len(fields["description"]) <= 1024
    clawdbot = fields["metadata"]["clawdbot"]
    assert clawdbot["requires"]["bins"] == ["clawsupctl"]
    assert clawdbot["os"] == ["linux"]


def test_every_command_in_the_skill_is_a_clawsupctl_command_line() -> None:
    lines = command_lines(SKILL.read_text())
    assert len(lines) >= 8
    for argv in lines:
        assert argv[0] == "clawsupctl", argv
        # Parsed by clawsupctl's own parser: an unknown command or option, or a missing
        # argument, is a UsageError here, as it would be in the agent's turn.
        try:
            build_parser().parse_args(argv[1:])
        except UsageError as error:
            raise AssertionError(f"{shlex.join(argv)}: {error}") from None


def test_the_skill_covers_questions_settings_and_a_restart_when_idle() -> None:
    used = {argv[1] for argv in command_lines(SKILL.read_text())}
    assert {"status", "health", "incidents", "set-model", "set-timezone", "restart"} <= used


def test_the_skill_restarts_only_when_idle_and_never_stops_the_bot() -> None:
    lines = command_lines(SKILL.read_text())
    restarts = [argv for argv in lines if argv[1] == "restart"]
    assert restarts
    assert all("--when-idle" in argv for argv in restarts)
    assert not [argv for argv in lines if argv[1] in ("stop", "shutdown", "signal")]


# -- clawsup install-skill ----------------------------------------------------------------


def _install(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "clawsup", "install-skill", *args],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(home)})


def test_install_skill_copies_the_skill_into_dir(tmp_path: Path) -> None:
    done = _install(str(tmp_path / "skills"), home=tmp_path)
    assert done.returncode == 0, done.stderr
    installed = tmp_path / "skills" / "clawsup" / "SKILL.md"
    assert installed.read_text() == SKILL.read_text()
    assert str(installed.parent) in done.stdout
    assert installed.parent.stat().st_mode & 0o755 == 0o755


def test_install_skill_defaults_to_the_gateways_managed_skills(tmp_path: Path) -> None:
    done = _install(home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / ".clawdbot" / "skills" / "clawsup" / "SKILL.md").read_text() == \
        SKILL.read_text()


def test_install_skill_replaces_an_older_copy_and_leaves_nothing_else(tmp_path: Path) -> None:
    skills = tmp_path / "skills"
    old = skills / "clawsup"
    old.mkdir(parents=True)
    (old / "SKILL.md").write_text("---\nname: clawsup\ndescription: old\n---\n")
    (old / "stale.txt").write_text("from an older version")
    (skills / "weather").mkdir()
    done = _install(str(skills), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (old / "SKILL.md").read_text() == SKILL.read_text()
    assert not (old / "stale.txt").exists()
    assert sorted(p.name for p in skills.iterdir()) == ["clawsup", "weather"]


def test_install_skill_where_it_cannot_write_fails_in_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = _install(str(blocker / "skills"), home=tmp_path)
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "cannot install" in done.stderr


def test_the_wheel_carries_the_skill(tmp_path: Path) -> None:
    # Inside the package, so that a wheel (and `pip install`, as the image does) ships it.
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                           str(tmp_path), str(Path(__file__).resolve().parent.parent)],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {done.stderr.strip().splitlines()[-1:]}")
    (wheel,) = tmp_path.glob("clawsup-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert archive.read("clawsup/skills/clawsup/SKILL.md").decode() == SKILL.read_text()
