"""The ``clawsup`` skill for the Clawdbot gateway, shipped in the package and installed by
``clawsup install-skill [DIR]`` (the image installs it into the gateway's bundled skills).

A skill is a folder with a ``SKILL.md`` the gateway reads: YAML front matter (``name``,
``description``, ``metadata`` with ``requires.bins``) and instructions the agent follows,
running the commands through its exec tool. The folder is copied whole, through a
temporary sibling renamed into place: a gateway loading skills meanwhile sees the old
folder or the new one, never half of it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

SKILL_NAME = "clawsup"
DEFAULT_DIRECTORY = "~/.clawdbot/skills"


class SkillInstallError(Exception):
    """The skill could not be installed (what and why in the message)."""


def source() -> Path:
    """The skill's folder inside the installed package."""
    return Path(str(resources.files("clawsup") / "skills" / SKILL_NAME))


def install(directory: str | os.PathLike[str] | None = None) -> Path:
    """Copy the skill into ``directory``/clawsup (default ~/.clawdbot/skills); its path."""
    skills = Path(os.path.expanduser(os.fspath(directory or DEFAULT_DIRECTORY)))
    target = skills / SKILL_NAME
    try:
        skills.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{SKILL_NAME}-", dir=skills))
    except OSError as error:
        raise SkillInstallError(f"cannot install into {skills}: {error.strerror}") from None
    try:
        shutil.copytree(source(), staging, dirs_exist_ok=True)
        # mkdtemp makes it 0700; the gateway may run as another user than the installer.
        staging.chmod(0o755)
        if target.is_dir() and not target.is_symlink():
            old = Path(tempfile.mkdtemp(prefix=f".{SKILL_NAME}-old-", dir=skills))
            target.rename(old / SKILL_NAME)
            staging.rename(target)
            shutil.rmtree(old)
        else:
            if target.is_symlink() or target.exists():
                target.unlink()
            staging.rename(target)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise SkillInstallError(f"cannot install into {target}: {error}") from None
    return target
