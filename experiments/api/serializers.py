"""REST API serializers. Output serializers are read-only views of models; input serializers
validate shape and resolve ids inside the caller's teams, then views hand the cleaned data to
experiments/services. Input serializers reject unknown fields so nothing is silently dropped."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import (
    AnalysisScale,
    AnalysisTest,
    ApiToken,
    Board,
    Card,
    CardEvent,
    CardKind,
    CardRun,
    Column,
    Direction,
    EventKind,
    Iteration,
    LatestMetric,
    Membership,
    Metric,
    Role,
    Run,
    RunStatus,
    Stage,
    Team,
    User,
    VerdictChoice,
)

MAX_METRICS_PER_BATCH: int = getattr(settings, "MLFLOW_MAX_METRICS_PER_BATCH", 1000)
MAX_PARAMS_PER_REQUEST: int = getattr(settings, "MLFLOW_MAX_PARAMS_PER_BATCH", 100)

METRIC_VALUE_SCHEMA = {
    "oneOf": [
        {"type": "number"},
        {"type": "string", "enum": ["NaN", "Infinity", "-Infinity"]},
    ],
    "description": "A number; NaN and +/-Infinity are sent and returned as the strings 'NaN', 'Infinity', '-Infinity'.",
}
_SPECIAL_FLOATS = {
    "nan": math.nan,
    "infinity": math.inf,
    "+infinity": math.inf,
    "inf": math.inf,
    "-infinity": -math.inf,
    "-inf": -math.inf,
}


def float_to_json(value: float, *, is_nan: bool = False) -> float | str:
    """Strict JSON has no NaN/Infinity literals; send them as the strings clients accept back."""
    if is_nan or math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return value


def _choice_error(what: str, choices: list[str]) -> dict[str, str]:
    return {"invalid_choice": f'"{{input}}" is not a valid {what}; use one of: {", ".join(choices)}.'}


class StrictSerializer(serializers.Serializer):
    """Rejects fields the endpoint does not know instead of ignoring them."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError(
                    {name: ["Unknown field; see /api/docs/ for the fields this endpoint accepts."] for name in unknown}
                )
        return super().to_internal_value(data)


# --- Errors (schema only) --------------------------------------------------------------------------


class ErrorBodySerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable code, e.g. invalid, not_found, conflict.")
    message = serializers.CharField(help_text="Human-readable explanation.")
    fields = serializers.DictField(required=False, help_text="Per-field messages for invalid input.")
    current_version = serializers.IntegerField(required=False, help_text="On 409: the version to retry with.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorBodySerializer()


# --- Teams and boards ------------------------------------------------------------------------------


@extend_schema_field({"type": "string", "pattern": r"^\d{2}:\d{2}(:\d{2}(\.\d+)?)?$", "example": "09:30:00"})
class LocalTimeField(serializers.TimeField):
    """A wall-clock time in the team's zone: no UTC offset, so not OpenAPI's `format: time` (RFC 3339)."""


class TeamSerializer(serializers.ModelSerializer):
    role = serializers.ChoiceField(source="my_role", choices=Role.choices, read_only=True, help_text="Your role.")
    standup_time = LocalTimeField(read_only=True, help_text="Daily standup, in the team's time zone.")

    class Meta:
        model = Team
        fields = ["id", "slug", "name", "role", "timezone", "standup_time", "iteration_days", "created_at"]
        read_only_fields = fields


class MemberSerializer(serializers.ModelSerializer):
    user = serializers.IntegerField(source="user_id", read_only=True)
    username = serializers.CharField(source="user.username", read_only=True)
    name = serializers.CharField(source="user.label", read_only=True)

    class Meta:
        model = Membership
        fields = ["user", "username", "name", "role"]
        read_only_fields = fields


class TeamDetailSerializer(TeamSerializer):
    members = serializers.SerializerMethodField()

    class Meta(TeamSerializer.Meta):
        fields = [*TeamSerializer.Meta.fields, "members"]
        read_only_fields = fields

    @extend_schema_field(MemberSerializer(many=True))
    def get_members(self, team: Team) -> list[dict[str, Any]]:
        return MemberSerializer(self.context.get("members", []), many=True).data


class ColumnSerializer(serializers.ModelSerializer):
    card_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Column
        fields = ["id", "name", "position", "stage", "wip_limit", "card_count"]
        read_only_fields = fields


class BoardSerializer(serializers.ModelSerializer):
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    columns = ColumnSerializer(many=True, read_only=True)

    class Meta:
        model = Board
        fields = ["id", "team", "name", "key", "problem", "archived", "created_at", "columns"]
        read_only_fields = fields


class BoardFilterSerializer(StrictSerializer):
    team = serializers.SlugField(required=False, help_text="Only boards of this team (slug).")


# --- Cards -----------------------------------------------------------------------------------------


class CardSerializer(serializers.ModelSerializer):
    column_name = serializers.CharField(source="column.name", read_only=True)
    stage = serializers.CharField(source="column.stage", read_only=True)
    owner_name = serializers.CharField(source="owner.label", read_only=True, allow_null=True)
    tags = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    # Blank until set: the schema must allow "" as well as the choices.
    direction = serializers.ChoiceField(choices=Direction.choices, allow_blank=True, read_only=True)
    verdict = serializers.ChoiceField(choices=VerdictChoice.choices, allow_blank=True, read_only=True)

    class Meta:
        model = Card
        fields = [
            "id", "key", "board", "column", "column_name", "stage", "kind", "title", "description",
            "owner", "owner_name", "created_by", "parent", "iteration", "tags", "position", "version",
            "flagged", "flag_reason", "created_at", "updated_at", "started_at", "completed_at",
            # hypothesis
            "statement", "rationale", "metric_key", "direction", "threshold", "min_delta", "min_runs",
            "criteria_set_at", "analysis_test", "analysis_scale", "paired", "equivalence_margin", "smallest_effect",
            "failures_count", "max_failure_share", "criteria_frozen_at",
            # experiment
            "plan", "baseline_run", "baseline_value",
            # result (and a hypothesis's decided verdict)
            "verdict", "evidence", "learnings", "decided_at",
        ]
        read_only_fields = fields


class _CardFieldsSerializer(StrictSerializer):
    """Editable card fields shared by create and update; ids are resolved against the board."""

    title = serializers.CharField(max_length=200)
    description = serializers.CharField(required=False, allow_blank=True)
    owner = serializers.IntegerField(required=False, allow_null=True, help_text="User id of a team member.")
    parent = serializers.IntegerField(required=False, allow_null=True, help_text="Card id on the same board.")
    iteration = serializers.IntegerField(required=False, allow_null=True, help_text="Iteration id of the team.")
    tags = serializers.ListField(
        child=serializers.CharField(max_length=40), required=False, help_text="Tag names; replaces the card's tags."
    )
    statement = serializers.CharField(required=False, allow_blank=True)
    rationale = serializers.CharField(required=False, allow_blank=True)
    metric_key = serializers.CharField(required=False, allow_blank=True, max_length=250)
    direction = serializers.ChoiceField(
        choices=Direction.choices, required=False, allow_blank=True,
        error_messages=_choice_error("direction", Direction.values),
    )
    threshold = serializers.FloatField(required=False, allow_null=True)
    min_delta = serializers.FloatField(required=False, allow_null=True)
    min_runs = serializers.IntegerField(
        required=False, min_value=1, max_value=1000, help_text="Planned runs (distinct seeds) per arm."
    )
    analysis_test = serializers.ChoiceField(
        choices=AnalysisTest.choices, required=False, error_messages=_choice_error("analysis_test", AnalysisTest.values)
    )
    analysis_scale = serializers.ChoiceField(
        choices=AnalysisScale.choices, required=False,
        error_messages=_choice_error("analysis_scale", AnalysisScale.values),
    )
    paired = serializers.BooleanField(required=False)
    equivalence_margin = serializers.FloatField(required=False, allow_null=True)
    smallest_effect = serializers.FloatField(required=False, allow_null=True)
    failures_count = serializers.BooleanField(required=False)
    max_failure_share = serializers.FloatField(required=False, min_value=0, max_value=1)
    plan = serializers.CharField(required=False, allow_blank=True)
    baseline_value = serializers.FloatField(required=False, allow_null=True)
    verdict = serializers.ChoiceField(
        choices=VerdictChoice.choices, required=False, allow_blank=True,
        error_messages=_choice_error("verdict", VerdictChoice.values),
    )
    evidence = serializers.CharField(required=False, allow_blank=True)
    learnings = serializers.CharField(required=False, allow_blank=True)

    def _resolve_refs(self, attrs: dict[str, Any], board: Board) -> dict[str, Any]:
        errors: dict[str, str] = {}
        if attrs.get("owner") is not None:
            owner = User.objects.filter(pk=attrs["owner"], memberships__team_id=board.team_id).first()
            if owner is None:
                errors["owner"] = f"User {attrs['owner']} is not a member of team {board.team.slug}."
            attrs["owner"] = owner
        if attrs.get("parent") is not None:
            parent = Card.objects.filter(pk=attrs["parent"], board=board).first()
            if parent is None:
                errors["parent"] = f"No card with id {attrs['parent']} on board {board.key}."
            attrs["parent"] = parent
        if attrs.get("iteration") is not None:
            iteration = Iteration.objects.filter(pk=attrs["iteration"], team_id=board.team_id).first()
            if iteration is None:
                errors["iteration"] = f"No iteration with id {attrs['iteration']} on team {board.team.slug}."
            attrs["iteration"] = iteration
        if errors:
            raise serializers.ValidationError(errors)
        return attrs


def _column_help(board: Board) -> str:
    names = ", ".join(f"{c.name} (id {c.pk})" for c in board.columns.order_by("position", "id"))
    return f"Columns of board {board.key}: {names}." if names else f"Board {board.key} has no columns."


class CardCreateSerializer(_CardFieldsSerializer):
    board = serializers.IntegerField(help_text="Board id.")
    kind = serializers.ChoiceField(choices=CardKind.choices, error_messages=_choice_error("kind", CardKind.values))
    column = serializers.IntegerField(required=False, allow_null=True, help_text="Column id; default first column.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        user = self.context["request"].user
        board = Board.objects.select_related("team").filter(pk=attrs["board"], team__memberships__user=user).first()
        if board is None:
            raise serializers.ValidationError({"board": f"No board with id {attrs['board']} on your teams."})
        attrs["board"] = board
        if attrs.get("column") is not None:
            column = Column.objects.filter(pk=attrs["column"], board=board).first()
            if column is None:
                raise serializers.ValidationError(
                    {"column": f"Unknown column {attrs['column']} for this board. {_column_help(board)}"}
                )
            attrs["column"] = column
        return self._resolve_refs(attrs, board)


class CardUpdateSerializer(_CardFieldsSerializer):
    version = serializers.IntegerField(
        min_value=1, help_text="The card version you last read; a stale version is rejected with 409."
    )
    amendment_reason = serializers.CharField(
        required=False, allow_blank=True,
        help_text="Required when changing a hypothesis's criterion or plan after its first run started.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["title"].required = False

    # Every field but `version` is already optional; never treat this serializer as partial, so
    # `version` stays required (also in the OpenAPI schema, which marks PATCH bodies partial).
    @property
    def partial(self) -> bool:
        return False

    @partial.setter
    def partial(self, value: bool) -> None:
        pass

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping) and "column" in data:
            raise serializers.ValidationError(
                {"column": ["Use POST /api/cards/{id}/move/ to move a card to another column."]}
            )
        return super().to_internal_value(data)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        return self._resolve_refs(attrs, self.context["card"].board)


class CardMoveSerializer(StrictSerializer):
    column = serializers.IntegerField(help_text="Target column id (same board).")
    version = serializers.IntegerField(min_value=1, help_text="The card version you last read.")
    index = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, help_text="Position in the target column; default last."
    )
    reason = serializers.CharField(required=False, allow_blank=True, max_length=200)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        board = self.context["card"].board
        column = Column.objects.filter(pk=attrs["column"], board=board).first()
        if column is None:
            raise serializers.ValidationError(
                {"column": f"Unknown column {attrs['column']} for this card's board. {_column_help(board)}"}
            )
        attrs["column"] = column
        return attrs


class CardFilterSerializer(StrictSerializer):
    board = serializers.IntegerField(required=False, help_text="Board id.")
    kind = serializers.ChoiceField(
        choices=CardKind.choices, required=False, error_messages=_choice_error("kind", CardKind.values)
    )
    column = serializers.IntegerField(required=False, help_text="Column id.")
    owner = serializers.IntegerField(required=False, help_text="Owner user id.")
    q = serializers.CharField(required=False, max_length=200, help_text="Search title, key, description, statement.")


# Plain strings in the schema (values listed in the description): as enums they would share the
# property names "kind"/"stage" with the card and column enums and make the generated names collide.
@extend_schema_field({"type": "string", "description": "One of: " + ", ".join(EventKind.values) + "."})
class EventKindField(serializers.CharField):
    pass


@extend_schema_field(
    {"type": "string", "description": "One of: " + ", ".join(Stage.values) + "; empty when the event is not a move."}
)
class StageOrBlankField(serializers.CharField):
    pass


class CardEventSerializer(serializers.ModelSerializer):
    actor_name = serializers.CharField(source="actor.label", read_only=True, allow_null=True)
    kind = EventKindField(read_only=True)
    from_stage = StageOrBlankField(read_only=True)
    to_stage = StageOrBlankField(read_only=True)

    class Meta:
        model = CardEvent
        fields = [
            "id", "card", "kind", "actor", "actor_name", "from_column", "to_column", "from_stage", "to_stage",
            "data", "created_at",
        ]
        read_only_fields = fields


# --- Runs, params and metrics ----------------------------------------------------------------------


@extend_schema_field(METRIC_VALUE_SCHEMA)
class MetricValueField(serializers.Field):
    """Input: a JSON number, or 'NaN' / 'Infinity' / '-Infinity' (NaN/Infinity literals too)."""

    default_error_messages = {
        "invalid": "Must be a number, or one of 'NaN', 'Infinity', '-Infinity'; got {input!r}.",
    }

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool):
            self.fail("invalid", input=data)
        if isinstance(data, int | float):
            return float(data)
        if isinstance(data, str) and data.strip().lower() in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[data.strip().lower()]
        self.fail("invalid", input=data)
        raise AssertionError  # unreachable; fail() raises

    def to_representation(self, value: float) -> float | str:
        return float_to_json(value)


@extend_schema_field(METRIC_VALUE_SCHEMA)
class StoredMetricValueField(serializers.Field):
    """Output of a stored point: NaN lives in is_nan (value 0.0) because SQLite cannot store it."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(source="*", read_only=True, **kwargs)

    def to_representation(self, row: Metric | LatestMetric) -> float | str:
        return float_to_json(row.value, is_nan=row.is_nan)


class MetricPointSerializer(StrictSerializer):
    key = serializers.CharField(max_length=250)
    value = MetricValueField()
    step = serializers.IntegerField(required=False, default=0)
    timestamp = serializers.IntegerField(
        min_value=0, help_text="Milliseconds since the epoch. Required so a retried batch is recognised."
    )


class MetricBatchSerializer(StrictSerializer):
    metrics = MetricPointSerializer(many=True, allow_empty=False)

    def to_internal_value(self, data: Any) -> Any:
        # Check the size before validating each point: an oversize batch fails fast and clearly.
        if isinstance(data, Mapping) and isinstance(data.get("metrics"), list):
            if len(data["metrics"]) > MAX_METRICS_PER_BATCH:
                raise serializers.ValidationError(
                    {
                        "metrics": [
                            f"A batch holds at most {MAX_METRICS_PER_BATCH} metrics, got {len(data['metrics'])}; "
                            "split it into several requests."
                        ]
                    }
                )
        return super().to_internal_value(data)


class MetricBatchResultSerializer(serializers.Serializer):
    received = serializers.IntegerField(help_text="Points in the request.")
    added = serializers.IntegerField(help_text="Points that were new (a retried batch adds 0).")


class MetricRowSerializer(serializers.ModelSerializer):
    value = StoredMetricValueField()

    class Meta:
        model = Metric
        fields = ["key", "value", "step", "timestamp"]
        read_only_fields = fields


class LatestMetricSerializer(serializers.ModelSerializer):
    value = StoredMetricValueField()

    class Meta:
        model = LatestMetric
        fields = ["key", "value", "step", "timestamp"]
        read_only_fields = fields


class MetricHistoryFilterSerializer(StrictSerializer):
    key = serializers.CharField(max_length=250, help_text="Metric key, e.g. val/loss.")


class RunCardSerializer(serializers.Serializer):
    link = serializers.IntegerField(source="pk", read_only=True, help_text="Link id (DELETE /api/links/{id}/).")
    card = serializers.IntegerField(source="card_id", read_only=True)
    key = serializers.CharField(source="card.key", read_only=True)
    is_baseline = serializers.BooleanField(read_only=True)


class RunSerializer(serializers.ModelSerializer):
    run_uuid = serializers.CharField(source="external_id", read_only=True, help_text="MLflow run id.")
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    experiment = serializers.CharField(source="experiment.name", read_only=True, allow_null=True)
    tags = serializers.DictField(child=serializers.CharField(), read_only=True)
    metrics = LatestMetricSerializer(source="latest_metrics", many=True, read_only=True)
    cards = RunCardSerializer(source="card_links", many=True, read_only=True)
    duration_seconds = serializers.SerializerMethodField()

    class Meta:
        model = Run
        fields = [
            "id", "run_uuid", "name", "team", "experiment", "status", "start_time", "end_time", "duration_seconds",
            "user", "user_name", "source", "trigger", "code_version", "data_version", "seed", "tags", "metrics",
            "cards", "created_at", "updated_at",
        ]
        read_only_fields = fields

    def get_duration_seconds(self, run: Run) -> float | None:
        return run.duration.total_seconds() if run.duration is not None else None


class RunDetailSerializer(RunSerializer):
    params = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "params"]
        read_only_fields = fields

    @extend_schema_field({"type": "object", "additionalProperties": {"type": "string"}})
    def get_params(self, run: Run) -> dict[str, str]:
        return {p.key: p.value for p in run.params.all()}


_STATUS_ERRORS = _choice_error("status", RunStatus.values)


class RunCreateSerializer(StrictSerializer):
    team = serializers.SlugField(
        required=False,
        help_text="Team slug. Defaults to the API token's team, or to your only team.",
    )
    name = serializers.CharField(required=False, allow_blank=True, max_length=250)
    experiment = serializers.CharField(required=False, max_length=500, help_text="Tracking experiment name.")
    status = serializers.ChoiceField(
        choices=RunStatus.choices, required=False, default=RunStatus.RUNNING, error_messages=_STATUS_ERRORS
    )
    start_time = serializers.DateTimeField(required=False)
    end_time = serializers.DateTimeField(required=False, allow_null=True)
    tags = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=5000), required=False,
        help_text="Run tags; 'mlboard.card': 'CHURN-12' links the run to that card.",
    )
    params = serializers.DictField(child=serializers.CharField(allow_blank=True, max_length=6000), required=False)

    def validate_params(self, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_PARAMS_PER_REQUEST:
            raise serializers.ValidationError(f"At most {MAX_PARAMS_PER_REQUEST} params per request.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        request = self.context["request"]
        teams = Team.objects.filter(memberships__user=request.user)
        if attrs.get("team"):
            team = teams.filter(slug=attrs["team"]).first()
            if team is None:
                raise serializers.ValidationError({"team": f"You are not a member of a team '{attrs['team']}'."})
        elif isinstance(request.auth, ApiToken) and request.auth.team_id is not None:
            team = teams.filter(pk=request.auth.team_id).first()
            if team is None:
                raise serializers.ValidationError(
                    {"team": "This token's default team is no longer one of your teams; give the team slug."}
                )
        else:
            mine = list(teams[:2])
            if len(mine) != 1:
                raise serializers.ValidationError(
                    {"team": "Give the team slug: you are on several teams." if mine else "You are not on any team."}
                )
            team = mine[0]
        attrs["team"] = team
        start, end = attrs.get("start_time"), attrs.get("end_time")
        if start and end and end < start:
            raise serializers.ValidationError({"end_time": "The end time is before the start time."})
        return attrs


class RunUpdateSerializer(StrictSerializer):
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False, error_messages=_STATUS_ERRORS)
    end_time = serializers.DateTimeField(required=False)
    name = serializers.CharField(required=False, allow_blank=True, max_length=250)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            raise serializers.ValidationError("Send at least one of status, end_time, name.")
        run: Run = self.context["run"]
        end = attrs.get("end_time")
        if end and run.start_time and end < run.start_time:
            raise serializers.ValidationError({"end_time": "The end time is before the run's start time."})
        return attrs


class RunFilterSerializer(StrictSerializer):
    team = serializers.SlugField(required=False, help_text="Team slug.")
    status = serializers.ChoiceField(choices=RunStatus.choices, required=False, error_messages=_STATUS_ERRORS)
    card = serializers.IntegerField(required=False, help_text="Only runs linked to this card id.")
    since = serializers.DateTimeField(
        required=False, help_text="Only runs created or updated (status, tags, name) at or after this ISO time."
    )


class ParamsSerializer(StrictSerializer):
    params = serializers.DictField(
        child=serializers.CharField(allow_blank=True, max_length=6000), allow_empty=False,
        help_text="key -> value. Params are immutable: re-logging the same value is fine, a new value is a 400.",
    )

    def validate_params(self, value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_PARAMS_PER_REQUEST:
            raise serializers.ValidationError(f"At most {MAX_PARAMS_PER_REQUEST} params per request.")
        return value


class ParamsResultSerializer(serializers.Serializer):
    params = serializers.DictField(child=serializers.CharField(), help_text="All params of the run.")


# --- Run <-> card links ----------------------------------------------------------------------------


class LinkSerializer(serializers.ModelSerializer):
    card_key = serializers.CharField(source="card.key", read_only=True)
    run_name = serializers.CharField(source="run.name", read_only=True)

    class Meta:
        model = CardRun
        fields = ["id", "card", "card_key", "run", "run_name", "via", "is_baseline", "linked_by", "created_at"]
        read_only_fields = fields


class LinkCreateSerializer(StrictSerializer):
    card = serializers.IntegerField(help_text="Card id.")
    run = serializers.IntegerField(help_text="Run id.")
    is_baseline = serializers.BooleanField(required=False, default=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        user = self.context["request"].user
        cards = Card.objects.select_related("board").filter(board__team__memberships__user=user)
        card = cards.filter(pk=attrs["card"]).first()
        if card is None:
            raise serializers.ValidationError({"card": f"No card with id {attrs['card']} on your teams."})
        run = Run.objects.filter(pk=attrs["run"], team__memberships__user=user).first()
        if run is None:
            raise serializers.ValidationError({"run": f"No run with id {attrs['run']} on your teams."})
        if run.team_id != card.board.team_id:
            raise serializers.ValidationError({"run": "The run and the card belong to different teams."})
        attrs["card"], attrs["run"] = card, run
        return attrs


class LinkFilterSerializer(StrictSerializer):
    card = serializers.IntegerField(required=False)
    run = serializers.IntegerField(required=False)


# --- API tokens ------------------------------------------------------------------------------------


class TokenSerializer(serializers.ModelSerializer):
    team = serializers.SlugRelatedField(slug_field="slug", read_only=True, allow_null=True)
    active = serializers.SerializerMethodField()

    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "team", "created_at", "last_used_at", "revoked_at", "active"]
        read_only_fields = fields

    def get_active(self, token: ApiToken) -> bool:
        return token.revoked_at is None


class TokenCreatedSerializer(TokenSerializer):
    token = serializers.CharField(read_only=True, help_text="The secret. Shown only in this response; store it now.")

    class Meta(TokenSerializer.Meta):
        fields = [*TokenSerializer.Meta.fields, "token"]
        read_only_fields = fields


class TokenCreateSerializer(StrictSerializer):
    name = serializers.CharField(max_length=80, help_text="What the token is for, e.g. 'training cluster'.")
    team = serializers.SlugField(
        required=False, allow_null=True, help_text="Default team for runs logged with this token (slug)."
    )

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        slug = attrs.get("team")
        attrs["team"] = None
        if slug:
            team = Team.objects.filter(slug=slug, memberships__user=self.context["request"].user).first()
            if team is None:
                raise serializers.ValidationError({"team": f"You are not a member of a team '{slug}'."})
            attrs["team"] = team
        return attrs
