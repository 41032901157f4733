"""Replacing one string in JSON5 text without touching anything else."""

from __future__ import annotations

import copy
import json
from typing import Any

import json5
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawsup.supervisor.json5edit import Unsupported, replace_string
from tests.util import FIXTURE_HOME

KEY = "agents.defaults.model.primary"


def test_the_fixture_config_keeps_every_comment_and_space() -> None:
    text = (FIXTURE_HOME / "clawdbot.json").read_text()
    edited = replace_string(text, KEY, "openai/gpt-5.2")
    assert edited == text.replace('"anthropic/claude-opus-4-5"', '"openai/gpt-5.2"', 1)
    assert json5.loads(edited)["agents"]["defaults"]["model"]["primary"] == "openai/gpt-5.2"


@pytest.mark.parametrize(
    "text",
    [
        "{agents: {defaults: {model: {primary: 'a/b'}}}}",
        '{"agents": {"defaults": {"model": {"primary": "a/b",},},},}',
        "{agents /* c */ : // c\n {defaults: {model: {fallbacks: ['x', {primary: 'no'}], "
        "primary /* here */ : /* and here */ 'a/b' // end\n}}}}",
        '{"agents": {"defaults": {"model": {"primary": "a\\"b\\\\c\\u0041"}}}}',
        "{x: 'it''s', agents: {defaults: {model: {primary: \"a/b\"}}}}".replace("''", "\\'"),
        "\ufeff{agents:{defaults:{model:{primary:'a/b'}}}}",
    ],
)
def test_json5_forms(text: str) -> None:
    edited = replace_string(text, KEY, "new/model")
    doc = json5.loads(edited)
    assert doc["agents"]["defaults"]["model"]["primary"] == "new/model"
    expected = json5.loads(text)
    expected["agents"]["defaults"]["model"]["primary"] = "new/model"
    assert doc == expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("{agents: {defaults: {model: {}}}}", "no string value"),
        ("{agents: {defaults: {model: {primary: 5}}}}", "no string value"),
        ("{agents: {defaults: {model: {primary: 'a', primary: 'b'}}}}", "twice"),
        ("{agents: /* open", "unterminated comment"),
        ("{agents: 'open", "unterminated string"),
        ("{agents: {defaults", "unexpected end"),
        ("{} {}", "after the top-level value"),
        ("{agents {}}", "expected ':'"),
    ],
)
def test_what_it_will_not_edit(text: str, why: str) -> None:
    with pytest.raises(Unsupported, match=why):
        replace_string(text, KEY, "new/model")


def test_value_with_quotes_and_unicode_is_written_as_a_json_string() -> None:
    edited = replace_string("{agents:{defaults:{model:{primary:''}}}}", KEY, 'ç"\\/')
    assert json5.loads(edited)["agents"]["defaults"]["model"]["primary"] == 'ç"\\/'


_names = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1,
                 max_size=8)
_leaves = st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.none())
_docs = st.recursive(
    _leaves,
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(_names, inner, max_size=4)),
    max_leaves=12,
)


def _string_paths(doc: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths: list[tuple[str, ...]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if "." in key:
                continue
            if isinstance(value, str):
                paths.append((*prefix, key))
            else:
                paths.extend(_string_paths(value, (*prefix, key)))
    return paths


@settings(max_examples=200, deadline=None)
@given(doc=st.dictionaries(_names, _docs, min_size=1, max_size=5), indent=st.sampled_from(
    [None, 2]), ascii_only=st.booleans(), data=st.data())
def test_any_json_document_edits_to_exactly_the_expected_one(
    doc: dict[str, Any], indent: int | None, ascii_only: bool, data: st.DataObject
) -> None:
    text = json.dumps(doc, indent=indent, ensure_ascii=ascii_only)
    # Stated against the json5 parser's own reading of the text, which is what settings
    # compares with (it reads escaped astral characters as two surrogates, unlike json).
    parsed = json5.loads(text)
    paths = _string_paths(parsed)
    if not paths:
        return
    path = data.draw(st.sampled_from(paths))
    edited = replace_string(text, ".".join(path), "new/value")
    expected = copy.deepcopy(parsed)
    node = expected
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = "new/value"
    assert json5.loads(edited) == expected
