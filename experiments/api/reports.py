"""Read-only report endpoints: velocity, flow and maturity for one team, as JSON.

Thin over the selectors the report pages use (experiments/selectors/velocity.py, flow.py, maturity.py):
nothing is computed here except reshaping. Query parameters are validated strictly (unknown or
malformed ones are a 400 naming the parameter) and then handed to the same `parse_report_params` the
pages use, so defaults, week alignment and the team's time zone are identical to what people see.
Team scoping as everywhere: non-members get a 404, every role (viewers included) can read.
Times are ISO 8601 in the team's time zone; durations are hours.
"""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .. import maturity as mm
from ..access import get_membership_or_404
from ..models import Board, Membership, Team
from ..selectors.flow import KIND_LABELS, PERCENTILES, STAGE_ORDER, FlowItem, FlowReport, flow_report
from ..selectors.maturity import MaturityReport, maturity_report, maturity_trend
from ..selectors.velocity import (
    GROUPS,
    MAX_RANGE_DAYS,
    ReportParams,
    VelocityRow,
    local_today,
    parse_report_params,
    velocity_report,
)
from .serializers import ErrorSerializer, StrictSerializer

IGNORED_PARAMS = frozenset({"format"})  # DRF's renderer override, not a report filter

ERR_400 = OpenApiResponse(ErrorSerializer, description="Invalid query parameter; `fields` names it.")
ERR_404 = OpenApiResponse(ErrorSerializer, description="No such team among yours.")


# --- Query parameters ------------------------------------------------------------------------------


def _choices(what: str, values: Any) -> dict[str, str]:
    return {"invalid_choice": f'"{{input}}" is not a valid {what}; use one of: {", ".join(values)}.'}


_DATE_ERRORS = {"invalid": "Not a valid date; use YYYY-MM-DD."}


class VelocityQuerySerializer(StrictSerializer):
    group = serializers.ChoiceField(
        choices=list(GROUPS), required=False, error_messages=_choices("grouping", GROUPS),
        help_text="Periods: day (default), week (whole ISO weeks) or iteration (iterations starting in the range).",
    )
    start = serializers.DateField(
        required=False, input_formats=["iso-8601"], error_messages=_DATE_ERRORS,
        help_text="First day, YYYY-MM-DD in the team's time zone. Default: a grouping-dependent span before `end`.",
    )
    end = serializers.DateField(
        required=False, input_formats=["iso-8601"], error_messages=_DATE_ERRORS,
        help_text=f"Last day (inclusive), YYYY-MM-DD. Default: today. At most {MAX_RANGE_DAYS} days after `start`.",
    )
    board = serializers.IntegerField(required=False, help_text="Only this board of the team (board id).")


class FlowQuerySerializer(VelocityQuerySerializer):
    kind = serializers.ChoiceField(
        choices=list(KIND_LABELS), required=False, error_messages=_choices("card kind", KIND_LABELS),
        help_text="work (hypotheses and experiments, default), hypothesis or experiment.",
    )


class NoQuerySerializer(StrictSerializer):
    pass


class SnapshotQuerySerializer(StrictSerializer):
    limit = serializers.IntegerField(
        required=False, min_value=1, max_value=366, default=366, help_text="Most recent snapshots to return."
    )


def _query(request: Request, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
    data = {k: v for k, v in request.query_params.items() if k not in IGNORED_PARAMS}
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


def report_params(team: Team, query: dict[str, Any], *, kinds: tuple[str, ...]) -> ReportParams:
    """Strict checks the page can afford to correct silently, then the page's own parser."""
    problems: dict[str, list[str]] = {}
    boards: list[Board] = []
    if "board" in query:
        boards = list(Board.objects.filter(team=team, pk=query["board"]))
        if not boards:
            problems["board"] = [f"No board with id {query['board']} on this team."]
    start, end = query.get("start"), query.get("end") or local_today(team.zone)
    if start is not None and start > end:
        problems["start"] = [f"The start date {start} is after the end date {end}."]
    elif start is not None and (end - start).days + 1 > MAX_RANGE_DAYS:
        problems["start"] = [f"Ranges are limited to {MAX_RANGE_DAYS} days; this one has {(end - start).days + 1}."]
    if problems:
        raise serializers.ValidationError(problems)
    data = {"group": query.get("group"), "from": start and start.isoformat(), "to": end.isoformat(),
            "board": query.get("board"), "kind": query.get("kind")}
    params = parse_report_params(
        team=team, data={k: str(v) for k, v in data.items() if v is not None}, boards=boards, kinds=kinds
    )
    if params.errors:  # a case the checks above missed: still an error, never a silent fallback
        raise serializers.ValidationError({"non_field_errors": params.errors})
    return params


def _params_out(team: Team, params: ReportParams) -> dict[str, Any]:
    return {"group": params.group, "start": params.date_from, "end": params.date_to,
            "board": params.board.pk if params.board else None, "kind": params.kind, "timezone": team.timezone}


class ReportParamsSerializer(serializers.Serializer):
    group = serializers.CharField(help_text="day, week or iteration.")
    start = serializers.DateField(help_text="First day covered (weeks are widened to whole ISO weeks).")
    end = serializers.DateField(help_text="Last day covered, inclusive.")
    board = serializers.IntegerField(allow_null=True, help_text="Board id, or null for all the team's boards.")
    kind = serializers.CharField(help_text="Card kinds counted: work (hypotheses and experiments), hypothesis "
                                           "or experiment.")
    timezone = serializers.CharField(help_text="The team's time zone; periods and times follow it.")


# --- Velocity ------------------------------------------------------------------------------------


class ReportIterationSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="pk")
    name = serializers.CharField()
    state = serializers.CharField(help_text="planned, active or closed.")


class HypothesesResolvedSerializer(serializers.Serializer):
    total = serializers.IntegerField(source="hypotheses_resolved")
    supported = serializers.IntegerField()
    refuted = serializers.IntegerField()
    inconclusive = serializers.IntegerField()


class VelocityRowSerializer(serializers.Serializer):
    key = serializers.CharField(source="period.key", help_text="2025-03-04, 2025-W10, iteration-12 or total.")
    label = serializers.CharField(source="period.label")
    start = serializers.DateTimeField(source="period.start")
    end = serializers.DateTimeField(source="period.end")
    iteration = ReportIterationSerializer(source="period.iteration", allow_null=True,
                                          help_text="The iteration (iteration grouping only).")
    committed = serializers.IntegerField(allow_null=True, help_text="Cards committed to iterations that "
                                         "started in the period; null when none started.")
    committed_closed = serializers.IntegerField(help_text="The part of `committed` in closed iterations.")
    completed = serializers.IntegerField(allow_null=True, help_text="Committed cards done at close; null when "
                                         "no iteration of the period is closed yet.")
    carried_over = serializers.IntegerField(allow_null=True)
    completion_rate = serializers.FloatField(allow_null=True, help_text="completed / committed_closed (0..1).")
    open_iterations = serializers.IntegerField()
    hypotheses_resolved = HypothesesResolvedSerializer(source="*", help_text="Verdicts decided in the period.")
    experiments_completed = serializers.IntegerField(help_text="Experiments that first reached Done.")
    runs_finished = serializers.IntegerField()
    runs_failed = serializers.IntegerField(help_text="Runs that ended FAILED or KILLED.")
    time_to_first_signal_hours = serializers.FloatField(
        source="first_signal_median", allow_null=True,
        help_text="Median hours from a card starting to its first finished run.",
    )
    first_signal_cards = serializers.SerializerMethodField(help_text="Cards behind that median.")
    decision_latency_hours = serializers.FloatField(
        source="decision_median", allow_null=True,
        help_text="Median hours from the last run before a verdict to the verdict.",
    )
    decisions_timed = serializers.SerializerMethodField(help_text="Verdicts behind that median.")

    def get_first_signal_cards(self, row: VelocityRow) -> int:
        return len(row.first_signal_hours)

    def get_decisions_timed(self, row: VelocityRow) -> int:
        return len(row.decision_hours)


class VelocityReportSerializer(serializers.Serializer):
    team = serializers.CharField(help_text="Team slug.")
    params = ReportParamsSerializer()
    has_data = serializers.BooleanField()
    periods = VelocityRowSerializer(many=True)
    totals = VelocityRowSerializer()
    outside_iterations = serializers.IntegerField(
        help_text="Events that fell between iterations (iteration grouping only); counted in no period."
    )


# --- Flow ------------------------------------------------------------------------------------------


class ThroughputPeriodSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    start = serializers.DateTimeField()
    end = serializers.DateTimeField()
    done = serializers.IntegerField(help_text="Cards that became done in the period.")


class ThroughputSerializer(serializers.Serializer):
    total = serializers.IntegerField(help_text="Cards done in the range.")
    per_period = serializers.FloatField(allow_null=True, help_text="Mean done per period.")
    periods = ThroughputPeriodSerializer(many=True)


class PercentilesSerializer(serializers.Serializer):
    p50 = serializers.FloatField(allow_null=True)
    p85 = serializers.FloatField(allow_null=True)
    p95 = serializers.FloatField(allow_null=True)
    count = serializers.IntegerField(help_text="Cards measured.")


class WipSerializer(serializers.Serializer):
    now = serializers.IntegerField(help_text="Cards in Running or Analyzing now.")
    oldest_age_hours = serializers.FloatField(allow_null=True)


class CfdDaySerializer(serializers.Serializer):
    date = serializers.DateField()
    backlog = serializers.IntegerField()
    ready = serializers.IntegerField()
    running = serializers.IntegerField()
    analyzing = serializers.IntegerField()
    done = serializers.IntegerField()
    wip = serializers.IntegerField(help_text="running + analyzing.")


class FlowItemSerializer(serializers.Serializer):
    id = serializers.IntegerField(source="item.pk")
    key = serializers.CharField(source="item.key")
    title = serializers.CharField(source="item.title")
    kind = serializers.CharField(source="item.kind")
    board = serializers.CharField(source="item.board_key", help_text="Board key.")
    stage = serializers.CharField(source="item.stage")
    column = serializers.CharField(source="item.column")
    created_at = serializers.DateTimeField(source="item.created_at")
    started_at = serializers.DateTimeField(source="item.started_at", allow_null=True)
    done_at = serializers.DateTimeField(source="item.done_at", allow_null=True)
    cycle_time_hours = serializers.FloatField(source="item.cycle_hours", allow_null=True)
    lead_time_hours = serializers.FloatField(source="item.lead_hours", allow_null=True)
    age_hours = serializers.FloatField(allow_null=True, help_text="For cards in progress.")


class FlowReportSerializer(serializers.Serializer):
    team = serializers.CharField()
    params = ReportParamsSerializer()
    now = serializers.DateTimeField()
    throughput = ThroughputSerializer()
    cycle_time_hours = PercentilesSerializer(help_text="Started -> done, nearest-rank percentiles.")
    lead_time_hours = PercentilesSerializer(help_text="Created -> done, nearest-rank percentiles.")
    without_cycle_time = serializers.IntegerField(help_text="Done cards that skipped the in-progress stages.")
    wip = WipSerializer()
    cfd = CfdDaySerializer(many=True, help_text="Cards per stage at the end of each day (cumulative flow).")
    done = FlowItemSerializer(many=True, help_text="Cards done in the range, oldest first.")
    in_progress = FlowItemSerializer(many=True, help_text="Cards in progress, oldest first (work-item age).")


def _percentiles(values: dict[int, float | None], count: int) -> dict[str, Any]:
    return {**{f"p{p}": values[p] for p in PERCENTILES}, "count": count}


def _item(item: FlowItem, age: float | None = None) -> dict[str, Any]:
    return {"item": item, "age_hours": age}


def flow_data(team: Team, report: FlowReport) -> dict[str, Any]:
    stats = report.stats
    wip = report.wip
    return {
        "team": team.slug,
        "params": _params_out(team, report.params),
        "now": report.now,
        "throughput": {
            "total": stats["throughput"],
            "per_period": stats["throughput_per_period"],
            "periods": [{"key": p.key, "label": p.label, "start": p.start, "end": p.end, "done": n}
                        for p, n in zip(report.periods, report.throughput, strict=True)],
        },
        "cycle_time_hours": _percentiles(stats["cycle"], len(report.cycle_hours)),
        "lead_time_hours": _percentiles(stats["lead"], len(report.lead_hours)),
        "without_cycle_time": stats["without_cycle"],
        "wip": {"now": stats["wip_now"], "oldest_age_hours": stats["oldest_age"]},
        "cfd": [{"date": day, **{s.value: report.cfd[s][i] for s in STAGE_ORDER}, "wip": wip[i]}
                for i, day in enumerate(report.days)],
        "done": [_item(i) for i in report.done],
        "in_progress": [_item(i, age) for i, age in report.aging],
    }


# --- Maturity --------------------------------------------------------------------------------------


class EvidenceMetricSerializer(serializers.Serializer):
    key = serializers.CharField()
    label = serializers.CharField()
    question = serializers.CharField(help_text="What the number is.")
    unit = serializers.CharField(help_text="share (0..1) or hours.")
    value = serializers.FloatField(allow_null=True)
    display = serializers.CharField(help_text="The value as the page shows it.")
    count = serializers.IntegerField(allow_null=True, help_text="Numerator, for shares.")
    sample = serializers.IntegerField()
    sample_of = serializers.CharField(help_text="What the sample counts: runs, hypotheses...")
    min_sample = serializers.IntegerField()
    sufficient = serializers.BooleanField()
    score = serializers.FloatField(allow_null=True, help_text="1-5; null when the evidence is insufficient.")
    advice = serializers.CharField(help_text="The concrete step that improves it.")
    cells = serializers.ListField(child=serializers.CharField(), help_text="stage.attribute cells it informs.")


class CellSerializer(serializers.Serializer):
    stage = serializers.CharField()
    attribute = serializers.CharField()
    score = serializers.FloatField(allow_null=True, help_text="1-5.")
    state = serializers.CharField(help_text="scored, insufficient, not_observable (evidence) or unanswered (self).")
    detail = serializers.CharField(allow_blank=True)


class GridSerializer(serializers.Serializer):
    index = serializers.FloatField(allow_null=True, help_text="Mean of the scored cells (1-5).")
    by_stage = serializers.DictField(child=serializers.FloatField(allow_null=True), help_text="stage -> mean score.")
    cells = CellSerializer(many=True)


class EvidenceSerializer(GridSerializer):
    as_of = serializers.DateTimeField()
    window_start = serializers.DateTimeField()
    window_days = serializers.IntegerField()
    insufficient_cells = serializers.IntegerField()
    metrics = EvidenceMetricSerializer(many=True)


class SelfAssessmentSerializer(GridSerializer):
    respondents = serializers.IntegerField(help_text="Members whose latest questionnaire is counted.")


class GapSerializer(serializers.Serializer):
    stage = serializers.CharField()
    stage_label = serializers.CharField()
    attribute = serializers.CharField()
    attribute_label = serializers.CharField()
    self_score = serializers.FloatField()
    evidence_score = serializers.FloatField()
    diff = serializers.FloatField(help_text="self_score - evidence_score.")
    reason = serializers.CharField()


class LevelRefSerializer(serializers.Serializer):
    number = serializers.IntegerField()
    name = serializers.CharField()
    summary = serializers.CharField()


class GateSerializer(serializers.Serializer):
    key = serializers.CharField(source="gate.key")
    label = serializers.CharField(source="gate.label")
    metric = serializers.CharField(source="gate.metric")
    threshold = serializers.CharField(source="gate.describe_threshold")
    state = serializers.CharField(help_text="met, unmet or insufficient.")
    weeks_met = serializers.IntegerField(help_text="Local calendar weeks of the window in which the gate was shown.")
    weeks_needed = serializers.IntegerField(help_text="Weeks the level needs it in (sustained, not one sitting).")
    current = serializers.CharField()
    next_step = serializers.CharField()


class LevelGatesSerializer(serializers.Serializer):
    level = serializers.IntegerField()
    gates = GateSerializer(many=True)


class LevelSerializer(serializers.Serializer):
    model = serializers.CharField(source="model.key", help_text="google or azure.")
    name = serializers.CharField(source="model.name")
    source = serializers.CharField(source="model.source")
    level = serializers.IntegerField()
    max_level = serializers.IntegerField()
    current = LevelRefSerializer()
    next = LevelRefSerializer(allow_null=True)
    next_steps = GateSerializer(many=True, help_text="Unmet gates of the next level, insufficient ones last.")
    gates = serializers.SerializerMethodField()

    @extend_schema_field(LevelGatesSerializer(many=True))
    def get_gates(self, result: mm.LevelResult) -> list[dict[str, Any]]:
        return [{"level": n, "gates": GateSerializer(g, many=True).data} for n, g in sorted(result.gates.items())]


class MaturityReportSerializer(serializers.Serializer):
    team = serializers.CharField()
    evidence = EvidenceSerializer(help_text="Scores from the team's own runs and cards over the window.")
    self_assessment = SelfAssessmentSerializer(help_text="Mean of each member's latest questionnaire (1-5).")
    gaps = GapSerializer(many=True, help_text="Cells where self-assessment and evidence disagree, largest first.")
    levels = LevelSerializer(many=True, help_text="Google and Azure MLOps levels with the next steps.")


def _cells(cells: dict[mm.Cell, mm.CellScore]) -> list[mm.CellScore]:
    return [cells[s, a] for s in mm.STAGE_KEYS for a in mm.ATTRIBUTE_KEYS]


def _metric(value: mm.MetricValue) -> dict[str, Any]:
    d = value.definition
    return {
        "key": d.key, "label": d.label, "question": d.question, "unit": d.unit, "value": value.value,
        "display": value.display, "count": value.count, "sample": value.sample, "sample_of": d.sample,
        "min_sample": d.min_sample, "sufficient": value.sufficient, "score": value.score, "advice": d.advice,
        "cells": [f"{s}.{a}" for s, a in d.cells],
    }


def maturity_data(report: MaturityReport) -> dict[str, Any]:
    evidence = report.evidence
    return {
        "team": report.team.slug,
        "evidence": {
            "as_of": evidence.as_of, "window_start": evidence.window_start, "window_days": evidence.window_days,
            "index": report.evidence_index, "by_stage": report.evidence_by_stage,
            "cells": _cells(report.evidence_cells), "insufficient_cells": report.insufficient_count,
            "metrics": [_metric(evidence.metrics[m.key]) for m in mm.EVIDENCE_METRICS],
        },
        "self_assessment": {
            "index": report.self_index, "by_stage": report.self_by_stage, "cells": _cells(report.self_cells),
            "respondents": len(report.assessments),
        },
        "gaps": report.gaps,
        "levels": report.levels,
    }


class SnapshotSerializer(serializers.Serializer):
    date = serializers.DateField()
    evidence_index = serializers.FloatField(source="data.evidence_index", allow_null=True, default=None)
    self_index = serializers.FloatField(source="data.self_index", allow_null=True, default=None)
    google_level = serializers.IntegerField(source="data.google_level", allow_null=True, default=None)
    azure_level = serializers.IntegerField(source="data.azure_level", allow_null=True, default=None)
    respondents = serializers.IntegerField(source="data.respondents", allow_null=True, default=None)
    gaps = serializers.IntegerField(source="data.gaps", allow_null=True, default=None)
    data = serializers.DictField(help_text="Everything the snapshot kept: metrics and cell scores by stage.attribute.")


class SnapshotListSerializer(serializers.Serializer):
    team = serializers.CharField()
    snapshots = SnapshotSerializer(many=True, help_text="Oldest first (one per day at most).")


# --- Views -----------------------------------------------------------------------------------------


class TeamReportView(APIView):
    """Resolves the team (404 for non-members) and renders times in the team's time zone."""

    def membership(self, slug: str) -> Membership:
        return get_membership_or_404(user=self.request.user, team_slug=slug)

    def respond(self, serializer_class: type[serializers.Serializer], data: Any, team: Team) -> Response:
        with timezone.override(team.zone):
            return Response(serializer_class(data).data)


def _report_schema(summary: str, query: type[serializers.Serializer] | None,
                   response: type[serializers.Serializer], description: str = "") -> Any:
    return extend_schema(
        summary=summary, description=description, parameters=[query] if query else [], tags=["reports"],
        responses={200: response, 400: ERR_400, 404: ERR_404},
    )


class VelocityReportView(TeamReportView):
    @_report_schema(
        "Velocity per day, week or iteration", VelocityQuerySerializer, VelocityReportSerializer,
        "What the team got done per period: committed vs completed iteration items, hypotheses resolved by "
        "verdict, experiments completed, runs finished/failed, time to first signal and decision latency "
        "(medians in hours), plus totals. The same numbers as the Velocity page and its CSV.",
    )
    def get(self, request: Request, slug: str) -> Response:
        team = self.membership(slug).team
        params = report_params(team, _query(request, VelocityQuerySerializer), kinds=("work",))
        report = velocity_report(team=team, params=params)
        data = {"team": team.slug, "params": _params_out(team, params), "has_data": report.has_data,
                "periods": report.rows, "totals": report.totals, "outside_iterations": report.outside_iterations}
        return self.respond(VelocityReportSerializer, data, team)


class FlowReportView(TeamReportView):
    @_report_schema(
        "Flow: throughput, cycle and lead time, WIP, cumulative flow", FlowQuerySerializer, FlowReportSerializer,
        "Kanban metrics replayed from the card history, as on the Flow page: throughput per period, "
        "cycle/lead time percentiles (50/85/95, hours), WIP and work-item age, and the daily cumulative flow.",
    )
    def get(self, request: Request, slug: str) -> Response:
        team = self.membership(slug).team
        params = report_params(team, _query(request, FlowQuerySerializer), kinds=tuple(KIND_LABELS))
        return self.respond(FlowReportSerializer, flow_data(team, flow_report(team=team, params=params)), team)


class MaturityReportView(TeamReportView):
    @_report_schema(
        "ML maturity: evidence, self-assessment, gaps and MLOps levels", None,
        MaturityReportSerializer,
        "The Maturity page as JSON: stage x attribute scores (1-5) from the team's runs and cards and from "
        "the questionnaire, the cells where they disagree, and the Google/Azure MLOps levels with the gates "
        "to meet next.",
    )
    def get(self, request: Request, slug: str) -> Response:
        team = self.membership(slug).team
        _query(request, NoQuerySerializer)
        return self.respond(MaturityReportSerializer, maturity_data(maturity_report(team=team)), team)


class MaturitySnapshotsView(TeamReportView):
    @_report_schema(
        "ML maturity trend (daily snapshots)", SnapshotQuerySerializer, SnapshotListSerializer,
        "Snapshots are taken nightly (and on demand from the Trend page).",
    )
    def get(self, request: Request, slug: str) -> Response:
        team = self.membership(slug).team
        limit = _query(request, SnapshotQuerySerializer)["limit"]
        data = {"team": team.slug, "snapshots": maturity_trend(team=team, limit=limit)}
        return self.respond(SnapshotListSerializer, data, team)
