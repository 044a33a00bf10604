"""Request parsers for the REST API: the input rules of experiments/inputs.py applied to every body,
so NUL characters, lone surrogates, deep nesting and out-of-range numbers are a 400 before any view."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError

from ..inputs import HostileInputError, check_mapping, json_loads


class JSONParser(parsers.JSONParser):
    """Strict JSON (no NaN/Infinity literals), refusing hostile input."""

    strict = True

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        raw = stream.read() if stream is not None else b""
        try:
            return json_loads(raw, allow_constants=not self.strict)
        except HostileInputError as exc:
            raise ParseError(f"Invalid input: {exc.message}") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ParseError(f"JSON parse error - {str(exc)[:200]}") from None


class LenientJSONParser(JSONParser):
    """Accepts the NaN/Infinity literals Python's json module writes by default (metric values)."""

    strict = False


class FormParser(parsers.FormParser):
    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        try:
            return check_mapping(super().parse(stream, media_type, parser_context))
        except HostileInputError as exc:
            raise ParseError(f"Invalid input: {exc.message}") from None


class MultiPartParser(parsers.MultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        result = super().parse(stream, media_type, parser_context)
        try:
            check_mapping(result.data)
        except HostileInputError as exc:
            raise ParseError(f"Invalid input: {exc.message}") from None
        return result
