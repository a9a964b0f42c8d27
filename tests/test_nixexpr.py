"""The Nix serializer: exact text for the tricky cases, and a round trip through real Nix."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from synth import nixexpr
from tests.conftest import require_tool


def test_string_escapes() -> None:
    assert nixexpr.string('a"b') == '"a\\"b"'
    assert nixexpr.string("a\\b") == '"a\\\\b"'
    assert nixexpr.string("${x}") == '"\\${x}"'
    assert nixexpr.string("$x and $") == '"$x and $"'
    assert nixexpr.string("a\nb\tc\r") == '"a\\nb\\tc\\r"'


def test_attr_names() -> None:
    assert nixexpr.attr_name("lemmy-cluster") == "lemmy-cluster"
    assert nixexpr.attr_name("_x'") == "_x'"
    assert nixexpr.attr_name("10.0.0.1:80") == '"10.0.0.1:80"'
    assert nixexpr.attr_name("in") == '"in"'
    assert nixexpr.attr_name("") == '""'
    assert nixexpr.attr_name("1abc") == '"1abc"'


def test_layout() -> None:
    text = nixexpr.render({"a": {"b": [1, "x"], "c": []}, "d": {}, "e": [True], "f": None, "g": -3})
    assert text == (
        "{\n"
        "  a = {\n"
        "    b = [\n"
        "      1\n"
        '      "x"\n'
        "    ];\n"
        "    c = [ ];\n"
        "  };\n"
        "  d = { };\n"
        "  e = [ true ];\n"
        "  f = null;\n"
        "  g = (-3);\n"
        "}"
    )


def test_refuses_what_it_cannot_write() -> None:
    with pytest.raises(TypeError):
        nixexpr.render(1.5)
    with pytest.raises(TypeError):
        nixexpr.render({1: "x"})
    with pytest.raises(ValueError):
        nixexpr.render(2**63)


def nix_eval(text: str) -> Any:
    nix = require_tool("nix-instantiate")
    out = subprocess.run(
        [nix, "--eval", "--strict", "--json", "-E", text],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, f"nix-instantiate rejected:\n{text}\n{out.stderr}"
    return json.loads(out.stdout)


# Nix strings cannot hold NUL; everything else, including "${", quotes, backslashes and
# non-ASCII text, must survive.
nix_text = st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
tricky_text = st.one_of(nix_text, st.sampled_from(["${", "$${", "\\${x}", "''", "'${", '"', "\\", "in", "or"]))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    tricky_text,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(tricky_text, inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(values)
def test_round_trip_through_nix(value: Any) -> None:
    """What the serializer writes, Nix reads back as the same value."""
    assert nix_eval(nixexpr.render(value)) == value


def test_a_name_ending_in_a_newline_is_quoted() -> None:
    """`$` matches before a trailing newline: "A\\n" once became the bare name A (found by the round
    trip above)."""
    assert nix_eval(nixexpr.render({"A\n": None})) == {"A\n": None}
    assert nixexpr.render({"A\n": 1}) == '{\n  "A\\n" = 1;\n}'
