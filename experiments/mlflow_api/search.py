"""MLflow's search grammar for runs and experiments, turned into Django query expressions.

    metrics.acc > 0.9 AND params.lr = '0.01' AND tags.`mlboard.card` = 'CHURN-3'
    AND attributes.status IN ('FINISHED', 'RUNNING') AND run_name LIKE 'base%'

Conditions are joined with AND (as in MLflow). Metric conditions use the latest value of each
metric; a NaN latest value never matches a comparison.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Exists, F, FilteredRelation, OrderBy, OuterRef, Q, QuerySet, Subquery, TextField
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast

from ..inputs import INT64_MAX
from ..models import LatestMetric, Param
from ..services.runs import ms_to_dt
from .http import invalid

_TOKEN = re.compile(
    r"""
    \s*(?:
        (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<ident>[A-Za-z_]\w*(?:\.(?:`[^`]+`|"[^"]+"|[\w.:/\-]+))?)
      | (?P<quoted>`[^`]+`)
      | (?P<number>[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      | (?P<op>>=|<=|!=|<>|==|=|>|<)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"AND", "OR", "IN", "NOT", "IS", "NULL", "LIKE", "ILIKE", "ASC", "DESC"}
_ENTITY = {
    "metric": "metric", "metrics": "metric",
    "param": "param", "params": "param", "parameter": "param", "parameters": "param",
    "tag": "tag", "tags": "tag",
    "attribute": "attribute", "attributes": "attribute", "attr": "attribute", "run": "attribute",
}
RUN_STRING_ATTRIBUTES = {
    "run_id": "external_id", "run_name": "name", "status": "status", "user_id": "user_name",
    "artifact_uri": "artifact_uri", "lifecycle_stage": "lifecycle_stage",
}
RUN_TIME_ATTRIBUTES = {"start_time": "start_time", "created": "start_time", "end_time": "end_time"}
MAX_CONDITIONS = 50
MAX_FILTER_LENGTH = 20_000
# LIKE patterns become regular expressions; each wildcard multiplies the backtracking a regex engine
# may do (SQLite runs Python's re), so a pattern of thousands of '%' would pin a worker.
MAX_LIKE_LENGTH = 1000
MAX_LIKE_WILDCARDS = 16


@dataclass(frozen=True)
class Token:
    kind: str  # string, ident, number, op, punct, keyword
    text: str

    @property
    def value(self) -> Any:
        if self.kind == "string":
            body = self.text[1:-1]
            return re.sub(r"\\(.)", r"\1", body)
        if self.kind == "number":
            number = float(self.text)
            return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", self.text) else number
        return self.text


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise invalid(f"Invalid search expression near {text[pos:pos + 20]!r}: could not parse it.")
        kind = match.lastgroup or ""
        raw = match.group(kind)
        if kind == "ident" and raw.upper() in _KEYWORDS:
            tokens.append(Token("keyword", raw.upper()))
        elif kind == "quoted":
            tokens.append(Token("ident", raw[1:-1]))
        else:
            tokens.append(Token(kind, raw))
        pos = match.end()
    return tokens


def _unquote_key(key: str) -> str:
    if len(key) >= 2 and key[0] == key[-1] and key[0] in "`\"":
        return key[1:-1]
    return key


def split_identifier(text: str, *, default_entity: str = "attribute") -> tuple[str, str]:
    """'metrics.acc' -> ('metric', 'acc'); 'status' -> ('attribute', 'status')."""
    prefix, dot, rest = text.partition(".")
    if dot and prefix.lower() in _ENTITY:
        return _ENTITY[prefix.lower()], _unquote_key(rest)
    if dot and prefix.lower() in ("dataset", "datasets"):
        raise invalid("Searching by dataset is not supported by mlboard.")
    if dot:
        raise invalid(
            f"Invalid entity type '{prefix}' in '{text}'. Use metrics., params., tags. or attributes."
        )
    return default_entity, _unquote_key(text)


@dataclass(frozen=True)
class Condition:
    entity: str
    key: str
    op: str  # =, !=, >, >=, <, <=, LIKE, ILIKE, IN, NOT IN, IS NULL, IS NOT NULL
    value: Any = None


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        token = self.peek()
        if token is None:
            raise invalid("Invalid search expression: it ends too early.")
        self.pos += 1
        return token

    def keyword(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token.kind == "keyword" and token.text in words:
            self.pos += 1
            return True
        return False

    def conditions(self) -> list[Condition]:
        result = [self.condition()]
        while self.peek() is not None:
            token = self.take()
            if token.kind == "keyword" and token.text == "OR":
                raise invalid("OR is not supported in search filters; combine conditions with AND.")
            if not (token.kind == "keyword" and token.text == "AND"):
                raise invalid(f"Invalid search expression: expected AND, found {token.text!r}.")
            result.append(self.condition())
            if len(result) > MAX_CONDITIONS:
                raise invalid(f"A search filter may have at most {MAX_CONDITIONS} conditions.")
        return result

    def condition(self) -> Condition:
        token = self.take()
        if token.kind != "ident":
            raise invalid(f"Invalid search expression: expected a name like metrics.acc, found {token.text!r}.")
        entity, key = split_identifier(token.text)
        if self.keyword("IS"):
            negate = self.keyword("NOT")
            if not self.keyword("NULL"):
                raise invalid("Invalid search expression: expected NULL after IS.")
            return Condition(entity, key, "IS NOT NULL" if negate else "IS NULL")
        if self.keyword("NOT"):
            if not self.keyword("IN"):
                raise invalid("Invalid search expression: expected IN after NOT.")
            return Condition(entity, key, "NOT IN", self.value_list())
        if self.keyword("IN"):
            return Condition(entity, key, "IN", self.value_list())
        if self.keyword("LIKE"):
            return Condition(entity, key, "LIKE", self.string_value(entity, key))
        if self.keyword("ILIKE"):
            return Condition(entity, key, "ILIKE", self.string_value(entity, key))
        op = self.take()
        if op.kind != "op":
            raise invalid(f"Invalid comparator {op.text!r} after '{token.text}'.")
        comparator = {"==": "=", "<>": "!="}.get(op.text, op.text)
        value = self.take()
        if value.kind not in ("string", "number"):
            raise invalid(f"Invalid value {value.text!r} for '{token.text}': expected a number or a quoted string.")
        return Condition(entity, key, comparator, value.value)

    def string_value(self, entity: str, key: str) -> str:
        token = self.take()
        if token.kind != "string":
            raise invalid(f"LIKE/ILIKE on '{entity}.{key}' needs a quoted pattern, found {token.text!r}.")
        return token.value

    def value_list(self) -> list[Any]:
        if self.take().text != "(":
            raise invalid("Invalid search expression: IN needs a parenthesised list like ('a', 'b').")
        values = []
        while True:
            token = self.take()
            if token.kind not in ("string", "number"):
                raise invalid(f"Invalid value {token.text!r} in an IN list.")
            values.append(token.value)
            sep = self.take()
            if sep.text == ")":
                return values
            if sep.text != ",":
                raise invalid("Invalid search expression: separate IN values with commas.")


def parse_filter(text: str | None) -> list[Condition]:
    if not text or not text.strip():
        return []
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid(f"A search filter may be at most {MAX_FILTER_LENGTH} characters long.")
    return _Parser(tokenize(text)).conditions()


def parse_order_by(clauses: list[str]) -> list[tuple[str, str, bool]]:
    """['metrics.acc DESC', 'start_time'] -> [('metric', 'acc', False), ('attribute', 'start_time', True)]."""
    result = []
    for clause in clauses:
        if not isinstance(clause, str) or not clause.strip():
            raise invalid(f"Invalid order_by clause {clause!r}.")
        tokens = tokenize(clause)
        ascending = True
        if tokens and tokens[-1].kind == "keyword" and tokens[-1].text in ("ASC", "DESC"):
            ascending = tokens.pop().text == "ASC"
        if len(tokens) != 1 or tokens[0].kind != "ident":
            raise invalid(f"Invalid order_by clause '{clause}': use e.g. 'metrics.acc DESC' or 'start_time ASC'.")
        entity, key = split_identifier(tokens[0].text)
        result.append((entity, key, ascending))
    return result


# --- Runs --------------------------------------------------------------------------------------


def tag_value(key: str) -> Cast:
    """A tag's value as plain text (a bare key transform would compare as JSON on SQLite)."""
    return Cast(KeyTextTransform(key, "tags"), output_field=TextField())


def like_to_regex(pattern: str) -> str:
    if len(pattern) > MAX_LIKE_LENGTH:
        raise invalid(f"A LIKE pattern may be at most {MAX_LIKE_LENGTH} characters long.")
    pattern = re.sub(r"%{2,}", "%", pattern)  # '%%%' matches what '%' matches
    if pattern.count("%") + pattern.count("_") > MAX_LIKE_WILDCARDS:
        raise invalid(f"A LIKE pattern may have at most {MAX_LIKE_WILDCARDS} wildcards (% or _).")
    out = []
    for char in pattern:
        out.append(".*" if char == "%" else "." if char == "_" else re.escape(char))
    return "^" + "".join(out) + "$"


def string_condition(field: str, cond: Condition) -> Q:
    if cond.op in ("IS NULL", "IS NOT NULL"):
        raise invalid(f"IS NULL is not supported for '{cond.key}'.")
    if cond.op in ("IN", "NOT IN"):
        values = [str(v) for v in cond.value]
        q = Q(**{f"{field}__in": values})
        return ~q if cond.op == "NOT IN" else q
    if not isinstance(cond.value, str):
        raise invalid(f"Invalid value {cond.value!r} for '{cond.entity}.{cond.key}': expected a quoted string.")
    if cond.op == "=":
        return Q(**{field: cond.value})
    if cond.op == "!=":
        return ~Q(**{field: cond.value})
    if cond.op == "LIKE":
        return Q(**{f"{field}__regex": like_to_regex(cond.value)})
    if cond.op == "ILIKE":
        return Q(**{f"{field}__iregex": like_to_regex(cond.value)})
    raise invalid(f"Invalid comparator '{cond.op}' for '{cond.entity}.{cond.key}': use =, !=, LIKE, ILIKE, IN.")


_NUMERIC_LOOKUP = {"=": "exact", ">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}


def numeric_condition(field: str, cond: Condition, value: Any) -> Q:
    if cond.op == "!=":
        return ~Q(**{field: value}) & Q(**{f"{field}__isnull": False})
    if cond.op not in _NUMERIC_LOOKUP:
        raise invalid(f"Invalid comparator '{cond.op}' for '{cond.entity}.{cond.key}': use =, !=, >, >=, <, <=.")
    return Q(**{f"{field}__{_NUMERIC_LOOKUP[cond.op]}": value})


def filter_runs(queryset: QuerySet, conditions: list[Condition]) -> QuerySet:
    for index, cond in enumerate(conditions):
        if cond.entity == "metric":
            if isinstance(cond.value, str) or cond.value is None:
                raise invalid(f"Metric '{cond.key}' must be compared with a number, e.g. metrics.{cond.key} > 0.5.")
            points = LatestMetric.objects.filter(run=OuterRef("pk"), key=cond.key, is_nan=False)
            queryset = queryset.filter(Exists(points.filter(numeric_condition("value", cond, float(cond.value)))))
        elif cond.entity == "param":
            params = Param.objects.filter(run=OuterRef("pk"), key=cond.key)
            if cond.op == "IS NULL":
                queryset = queryset.filter(~Exists(params))
            elif cond.op == "IS NOT NULL":
                queryset = queryset.filter(Exists(params))
            else:
                queryset = queryset.filter(Exists(params.filter(string_condition("value", _as_text(cond)))))
        elif cond.entity == "tag":
            if cond.op == "IS NULL":
                queryset = queryset.exclude(tags__has_key=cond.key)
            elif cond.op == "IS NOT NULL":
                queryset = queryset.filter(tags__has_key=cond.key)
            else:
                alias = f"_tag{index}"
                queryset = queryset.alias(**{alias: tag_value(cond.key)}).filter(
                    Q(tags__has_key=cond.key) & string_condition(alias, _as_text(cond))
                )
        elif cond.key in RUN_STRING_ATTRIBUTES:
            queryset = queryset.filter(string_condition(RUN_STRING_ATTRIBUTES[cond.key], _as_text(cond)))
        elif cond.key in RUN_TIME_ATTRIBUTES:
            if isinstance(cond.value, str) or cond.value is None:
                raise invalid(f"'{cond.key}' is compared with a number of milliseconds since the epoch.")
            when: datetime | None = ms_to_dt(int(cond.value))
            queryset = queryset.filter(numeric_condition(RUN_TIME_ATTRIBUTES[cond.key], cond, when))
        else:
            known = ", ".join(sorted({*RUN_STRING_ATTRIBUTES, *RUN_TIME_ATTRIBUTES}))
            raise invalid(f"Invalid attribute key '{cond.key}'. Searchable attributes: {known}.")
    return queryset


def _as_text(cond: Condition) -> Condition:
    """Params, tags and string attributes compare as text; an unquoted number is taken literally."""
    if cond.op in ("IN", "NOT IN", "IS NULL", "IS NOT NULL"):
        return cond
    if isinstance(cond.value, int | float):
        raise invalid(
            f"Invalid value {cond.value} for '{cond.entity}.{cond.key}': values of params, tags and "
            f"attributes are strings, so quote it: '{cond.value}'."
        )
    return cond


def order_runs(queryset: QuerySet, clauses: list[tuple[str, str, bool]]) -> QuerySet:
    queryset, ordering = run_ordering(queryset, clauses)
    return queryset.order_by(*ordering)


def run_ordering(queryset: QuerySet, clauses: list[tuple[str, str, bool]]) -> tuple[QuerySet, list[OrderBy]]:
    """The queryset with the sort values aliased (`_order0`, ...) and the full ordering, tie-breakers
    included. A metric's alias is NULL when the run lacks it or its latest value is NaN."""
    ordering: list[OrderBy] = []
    for index, (entity, key, ascending) in enumerate(clauses):
        alias = f"_order{index}"
        if entity == "metric":
            # A LEFT JOIN on the (run, key) unique index, not a correlated subquery per run.
            relation = f"{alias}_metric"
            queryset = queryset.alias(
                **{relation: FilteredRelation(
                    "latest_metrics", condition=Q(latest_metrics__key=key, latest_metrics__is_nan=False)
                )}
            ).alias(**{alias: F(f"{relation}__value")})
        elif entity == "param":
            value = Param.objects.filter(run=OuterRef("pk"), key=key).values("value")[:1]
            queryset = queryset.alias(**{alias: Subquery(value)})
        elif entity == "tag":
            queryset = queryset.alias(**{alias: tag_value(key)})
        elif key in RUN_STRING_ATTRIBUTES or key in RUN_TIME_ATTRIBUTES:
            alias = RUN_STRING_ATTRIBUTES.get(key) or RUN_TIME_ATTRIBUTES[key]
        else:
            raise invalid(f"Invalid order_by key '{key}'.")
        expression = F(alias)
        ordering.append(expression.asc(nulls_last=True) if ascending else expression.desc(nulls_last=True))
    # MLflow's tie-breakers (SqlAlchemyStore): start_time DESC unless already ordered by it, then the
    # run id; pk last so offset pages never overlap.
    if not any(entity == "attribute" and RUN_TIME_ATTRIBUTES.get(key) == "start_time" for entity, key, _ in clauses):
        ordering.append(F("start_time").desc(nulls_last=True))
    ordering += [F("external_id").asc(), F("pk").asc()]
    return queryset, ordering


# --- Page tokens -------------------------------------------------------------------------------


def encode_token(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode()


def decode_token(token: str | None, *, fields: tuple[str, ...]) -> dict[str, Any] | None:
    if not token:
        return None
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise invalid(f"Invalid page token {token!r}: pass back the next_page_token from a previous page.") from None
    if not isinstance(data, dict) or any(f not in data for f in fields):
        raise invalid(f"Invalid page token {token!r}: pass back the next_page_token from a previous page.")
    return data


def offset_from(token: str | None) -> int:
    data = decode_token(token, fields=("offset",))
    if data is None:
        return 0
    offset = data["offset"]
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= INT64_MAX // 2:
        raise invalid(f"Invalid page token {token[:100]!r}.")
    return offset
