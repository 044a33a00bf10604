"""experiments.inputs: what request JSON may hold. The walk skips string checks when the source
cannot carry a bad string (no \\u escape in UTF-8 input); the property test holds it to a plain
recursive reference on arbitrary JSON, escapes, NULs, surrogates, big integers and depth included."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.inputs import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH, HostileInputError, json_loads


def _bad_text(text: str) -> bool:
    return "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


def reference_problem(value, depth: int = 0) -> bool:
    """True when some part of `value` must be refused (the rules, spelled out naively)."""
    if depth > MAX_JSON_DEPTH:
        return True
    if isinstance(value, str):
        return _bad_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return False
    if isinstance(value, int):
        return not INT64_MIN <= value <= INT64_MAX
    if isinstance(value, dict):
        return any(_bad_text(k) or reference_problem(v, depth + 1) for k, v in value.items())
    return any(reference_problem(v, depth + 1) for v in value)


text = st.text(alphabet=st.sampled_from(["a", "é", "\x00", "\ud800", "\udfff", "😀", "\\", '"', "u"]), max_size=6)
leaves = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False, allow_infinity=False), text,
                   st.integers(min_value=-(2**70), max_value=2**70))
documents = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                         max_leaves=30)


def _nested(depth: int, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@settings(max_examples=400, deadline=None)
@given(documents)
def test_refuses_exactly_what_the_rules_refuse(value):
    escaped = json.dumps(value)  # \u escapes for every non-ASCII character, surrogates and NULs included
    raw = json.dumps(value, ensure_ascii=False)  # may hold a raw lone surrogate: only a str can
    # (An escaped pair like \ud800\udfff decodes to one valid character: judge what the parser yields.)
    sources = [escaped.encode("utf-8"), escaped, raw]
    try:
        sources.append(raw.encode("utf-8"))
    except UnicodeEncodeError:
        pass
    for source in sources:
        decoded = json.loads(source)
        if reference_problem(decoded):
            with pytest.raises(HostileInputError):
                json_loads(source)
        else:
            assert json_loads(source) == decoded


@pytest.mark.parametrize("as_bytes", [True, False])
def test_depth_limit_is_exact(as_bytes):
    ok, deep = json.dumps(_nested(MAX_JSON_DEPTH)), json.dumps(_nested(MAX_JSON_DEPTH + 1))
    assert json_loads(ok.encode() if as_bytes else ok) == _nested(MAX_JSON_DEPTH)
    with pytest.raises(HostileInputError, match="nested more than"):
        json_loads(deep.encode() if as_bytes else deep)


def test_errors_name_the_place():
    body = {"metrics": [{"key": "ok", "step": 1}, {"key": "bad\x00", "step": 2}]}
    with pytest.raises(HostileInputError, match=r"in 'metrics\[1\]\.key' contains a NUL"):
        json_loads(json.dumps(body).encode())
    with pytest.raises(HostileInputError, match=r"integer in 'metrics\[0\]\.step' is out of range"):
        json_loads(b'{"metrics": [{"step": 9300000000000000000}]}')
    with pytest.raises(HostileInputError, match="field name in 'metrics"):
        json_loads(b'{"metrics": [{"k\\u0000": 1}]}')
    with pytest.raises(HostileInputError, match="lone UTF-16 surrogate"):
        json_loads('{"key": "\ud800"}')  # a str already holding a surrogate, no escape in sight
