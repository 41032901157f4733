"""``clawsup``'s command line: parsed once, in cli.py."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from clawsup.cli import build_parser

PACKAGE = Path(__file__).resolve().parent.parent / "clawsup"


def test_the_config_options_of_run_in_every_spelling():
    args = build_parser().parse_args(["run", "--config", "a", "-cb", "--config=c", "-c", "d"])
    assert args.paths == ["a", "b", "c", "d"]
    assert build_parser().parse_args(["run"]).paths == []


def test_a_bad_run_line_is_a_usage_error_exit_2():
    for argv in (["run", "--bogus"], ["run", "--conf", "a"], ["run", "-c"], ["nosuch"], []):
        done = subprocess.run([sys.executable, "-m", "clawsup", *argv],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, argv
        assert done.stderr.startswith("clawsup"), argv
        assert "Traceback" not in done.stderr, argv


def test_an_unusable_config_exits_2_naming_the_file(tmp_path: Path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[supervisor]\nnot_a_key = 1\n")
    done = subprocess.run([sys.executable, "-m", "clawsup", "run", "-c", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert str(bad) in done.stderr
    assert "not_a_key" in done.stderr


def test_the_package_has_no_import_cycle():
    """Each module's imports of other clawsup modules, at any depth of the code (lazy
    imports included), form no cycle."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
                imported.update(n for n in names if n.startswith("clawsup"))
            elif isinstance(node, ast.Import):
                imported.update(a.name for a in node.names if a.name.startswith("clawsup"))
        graph[module] = imported
    graph = {m: {i for i in imports if i in graph and i != m} for m, imports in graph.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen: set[str] = set()
        while stack:
            module, path = stack.pop()
            for target in graph[module]:
                if target == start:
                    return [*path, start]
                if target not in seen:
                    seen.add(target)
                    stack.append((target, [*path, target]))
        return None

    cycles = [cycle for module in ("clawsup.cli", "clawsup.entrypoint", "clawsup.client.ctl")
              if (cycle := cycle_from(module)) is not None]
    assert cycles == []
