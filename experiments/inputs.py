"""What request data may contain, in one place for the REST API, the MLflow API and forms.

PostgreSQL refuses NUL characters in text and lone UTF-16 surrogates cannot be encoded at all, so
both would fail deep inside a query as a 500. Integers outside 64 bits overflow bigint columns,
numbers like 1e400 parse to infinity, and pathologically nested JSON exhausts the parser's
recursion. Every such input is refused up front as a clear 400 naming where the problem is.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import DomainError

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
# Deeper than any body mlboard accepts (MLflow batches are 3 levels); far below Python's recursion limit.
MAX_JSON_DEPTH = 32


class HostileInputError(DomainError):
    """Input that no endpoint can store or interpret; always a 400."""

    code = "invalid"


def _where(path: str) -> str:
    return f" in '{path}'" if path else ""


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored, or None."""
    if "\x00" in text:
        return "contains a NUL (\\u0000) character, which cannot be stored"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape), which is not valid text"
    return None


def check_text(text: str, path: str = "") -> str:
    problem = text_problem(text)
    if problem:
        raise HostileInputError(f"The value{_where(path)} {problem}.", field=path or None)
    return text


def check_int64(value: int, path: str = "") -> int:
    if not INT64_MIN <= value <= INT64_MAX:
        raise HostileInputError(
            f"The integer{_where(path)} is out of range: integers must fit in 64 bits "
            f"({INT64_MIN} to {INT64_MAX}).",
            field=path or None,
        )
    return value


def _child_path(where: str, key: Any, in_dict: bool) -> str:
    if in_dict:
        return f"{where}.{key}" if where else str(key)
    return f"{where}[{key}]"


def _check_leaf(item: Any, where: str, texts: bool) -> None:
    if isinstance(item, str):
        if texts:
            check_text(item, where)
    elif isinstance(item, int) and not isinstance(item, bool):
        check_int64(item, where)


def check_value(value: Any, path: str = "", *, texts: bool = True) -> Any:
    """Walk decoded JSON (iteratively, so depth itself cannot overflow the stack) and refuse bad leaves.

    Only containers go on the stack, and a leaf's path is spelled out only for its error: a 1000-point
    MLflow batch is thousands of leaves. `texts=False`: every string is known to be storable (json_loads
    saw no \\u escape in UTF-8 input, the only way JSON can carry a NUL or a lone surrogate)."""
    if not isinstance(value, dict | list | tuple):
        _check_leaf(value, path, texts)
        return value
    stack: list[tuple[Any, str, int]] = [(value, path, 0)]
    while stack:
        item, where, depth = stack.pop()
        in_dict = isinstance(item, dict)
        if item and depth >= MAX_JSON_DEPTH:
            raise HostileInputError(f"The JSON is nested more than {MAX_JSON_DEPTH} levels deep.")
        for key, child in item.items() if in_dict else enumerate(item):
            if in_dict and texts and isinstance(key, str):
                problem = text_problem(key)
                if problem:
                    raise HostileInputError(f"A field name{_where(where)} {problem}.")
            if isinstance(child, str):
                if texts and text_problem(child):
                    check_text(child, _child_path(where, key, in_dict))
            elif isinstance(child, dict | list | tuple):
                stack.append((child, _child_path(where, key, in_dict), depth + 1))
            elif isinstance(child, int) and not isinstance(child, bool) and not INT64_MIN <= child <= INT64_MAX:
                check_int64(child, _child_path(where, key, in_dict))
    return value


def _finite_float(text: str) -> float:
    number = float(text)
    if math.isinf(number):
        # A literal like 1e400; the NaN/Infinity constants go through parse_constant instead.
        raise HostileInputError(f"The number {text[:40]} is out of range for a 64-bit float.")
    return number


def _int_literal(text: str) -> int:
    # Python refuses int() of more than 4300 digits with ValueError; anything that long is out of range anyway.
    if len(text.lstrip("-")) > 19:
        raise HostileInputError(f"The integer {text[:40]}… is out of range: integers must fit in 64 bits.")
    return int(text)


def _no_constants(name: str) -> Any:
    raise HostileInputError(f"{name} is not valid JSON; send it as the string \"{name}\".")


def json_loads(raw: bytes | str, *, allow_constants: bool = True) -> Any:
    """json.loads that refuses hostile input with HostileInputError (and bad JSON with ValueError).

    `allow_constants` keeps the NaN/Infinity literals Python's json module writes for metric values."""
    from_bytes = isinstance(raw, bytes)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")  # fails on any surrogate, paired or not
    # A NUL or lone surrogate in a decoded string can only come from a \u escape (the parser refuses raw
    # control characters in strings), unless the caller's str already held a surrogate.
    texts = "\\u" in raw or not (from_bytes or raw.isascii())
    try:
        data = json.loads(
            raw,
            parse_float=_finite_float,
            parse_int=_int_literal,
            parse_constant=None if allow_constants else _no_constants,
        )
    except RecursionError:
        raise HostileInputError(f"The JSON is nested more than {MAX_JSON_DEPTH} levels deep.") from None
    return check_value(data, texts=texts)


def check_mapping(data: Any) -> Any:
    """Query strings and form bodies: every key and value is text."""
    for key in data:
        check_text(key)
        values = data.getlist(key) if hasattr(data, "getlist") else [data[key]]
        for value in values:
            if isinstance(value, str):
                check_text(value, key)
    return data
