"""REST API views. Thin: parse with a serializer, check team access, call a service, serialize.

Scoping: every queryset is limited to the caller's teams, so other teams' objects are 404.
Writes need a manager or member role on the object's team (viewers get 403)."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from django.http import HttpRequest, JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request
from rest_framework.response import Response

from ..access import ensure_can_edit, membership_for
from ..models import ApiToken, Board, Card, CardRun, LinkVia, Run, Team
from ..services.cards import card_create, card_move, card_update
from ..services.runs import (
    MetricPoint,
    card_link_run,
    card_unlink_run,
    run_create,
    run_log_batch,
    run_update,
    tracking_experiment_get_or_create,
)
from ..services.tokens import token_create, token_revoke
from . import selectors
from .parsers import LenientJSONParser
from .serializers import (
    BoardFilterSerializer,
    BoardSerializer,
    CardCreateSerializer,
    CardEventSerializer,
    CardFilterSerializer,
    CardMoveSerializer,
    CardSerializer,
    CardUpdateSerializer,
    ErrorSerializer,
    LinkCreateSerializer,
    LinkFilterSerializer,
    LinkSerializer,
    MetricBatchResultSerializer,
    MetricBatchSerializer,
    MetricHistoryFilterSerializer,
    MetricRowSerializer,
    ParamsResultSerializer,
    ParamsSerializer,
    RunCreateSerializer,
    RunDetailSerializer,
    RunFilterSerializer,
    RunSerializer,
    RunUpdateSerializer,
    TeamDetailSerializer,
    TeamSerializer,
    TokenCreatedSerializer,
    TokenCreateSerializer,
    TokenSerializer,
)

PAGE_PARAMS = frozenset({"limit", "offset", "format"})

ERR_400 = OpenApiResponse(ErrorSerializer, description="Invalid input; `fields` says what is wrong.")
ERR_403 = OpenApiResponse(ErrorSerializer, description="Viewers cannot change anything on the team.")
ERR_404 = OpenApiResponse(ErrorSerializer, description="No such object on your teams.")
ERR_409 = OpenApiResponse(ErrorSerializer, description="Stale `version`: reload and retry with `current_version`.")
WRITE_ERRORS = {400: ERR_400, 403: ERR_403, 404: ERR_404}


class StrictLimitOffset(LimitOffsetPagination):
    """limit and offset as documented (one non-negative integer each), or a 400 naming the parameter;
    DRF's default silently ignores malformed values."""

    def _strict(self, request: Request, name: str, minimum: int) -> None:
        values = request.query_params.getlist(name)
        if not values:
            return
        value = values[0]
        if len(values) > 1 or not value.isascii() or not value.isdigit() or int(value) < minimum or len(value) > 18:
            raise serializers.ValidationError({name: [f"Must be one integer of at least {minimum}."]})

    def paginate_queryset(self, queryset, request, view=None):
        self._strict(request, self.limit_query_param, 1)
        self._strict(request, self.offset_query_param, 0)
        return super().paginate_queryset(queryset, request, view)


class Pagination(StrictLimitOffset):
    default_limit = 100
    max_limit = 1000


class HistoryPagination(StrictLimitOffset):
    default_limit = 1000
    max_limit = 10000


class ScopedViewSet(viewsets.GenericViewSet):
    pagination_class = Pagination
    lookup_value_regex = r"\d+"

    def query(self, serializer_class: type[serializers.Serializer]) -> dict[str, Any]:
        """Validate query-string filters; unknown or malformed filters are a 400, never ignored."""
        params = {k: v for k, v in self.request.query_params.items() if k not in PAGE_PARAMS}
        serializer = serializer_class(data=params, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    def validated(self, serializer_class: type[serializers.Serializer], **context: Any) -> dict[str, Any]:
        serializer = serializer_class(data=self.request.data, context={**self.get_serializer_context(), **context})
        serializer.is_valid(raise_exception=True)
        return dict(serializer.validated_data)

    def require_edit(self, team_id: int) -> None:
        ensure_can_edit(membership_for(user=self.request.user, team=team_id))

    def paginated(self, queryset: QuerySet, serializer_class: type[serializers.Serializer]) -> Response:
        page = self.paginate_queryset(queryset)
        data = serializer_class(page, many=True, context=self.get_serializer_context()).data
        return self.get_paginated_response(data)

    @property
    def schema_only(self) -> bool:
        return getattr(self, "swagger_fake_view", False)


# --- Teams and boards ------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="Teams you are on, with your role"),
    retrieve=extend_schema(summary="A team with its members", responses={200: TeamDetailSerializer, 404: ERR_404}),
)
class TeamViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, ScopedViewSet):
    serializer_class = TeamSerializer
    lookup_field = "slug"
    lookup_value_regex = r"[a-z0-9][a-z0-9-]*"

    def get_queryset(self) -> QuerySet[Team]:
        if self.schema_only:
            return Team.objects.none()
        return selectors.teams_for(user=self.request.user)

    def retrieve(self, request: Request, slug: str | None = None) -> Response:
        team = self.get_object()
        context = {**self.get_serializer_context(), "members": selectors.team_members(team=team)}
        return Response(TeamDetailSerializer(team, context=context).data)


@extend_schema_view(
    list=extend_schema(summary="Boards of your teams, with columns", parameters=[BoardFilterSerializer]),
    retrieve=extend_schema(summary="A board with its columns", responses={200: BoardSerializer, 404: ERR_404}),
)
class BoardViewSet(mixins.RetrieveModelMixin, ScopedViewSet):
    serializer_class = BoardSerializer

    def get_queryset(self) -> QuerySet[Board]:
        if self.schema_only:
            return Board.objects.none()
        return selectors.boards_for(user=self.request.user)

    def list(self, request: Request) -> Response:
        filters = self.query(BoardFilterSerializer)
        return self.paginated(selectors.boards_for(user=request.user, team_slug=filters.get("team")), BoardSerializer)


# --- Cards -----------------------------------------------------------------------------------------


class CardViewSet(mixins.RetrieveModelMixin, ScopedViewSet):
    serializer_class = CardSerializer

    def get_queryset(self) -> QuerySet[Card]:
        if self.schema_only:
            return Card.objects.none()
        cards = selectors.cards_for(user=self.request.user)
        # Only retrieve serializes the looked-up card; writes re-read it after the service call.
        return cards if self.action == "retrieve" else cards.prefetch_related(None)

    def _out(self, card: Card, *, code: int = status.HTTP_200_OK) -> Response:
        fresh = selectors.cards_for(user=self.request.user).get(pk=card.pk)
        return Response(CardSerializer(fresh, context=self.get_serializer_context()).data, status=code)

    @extend_schema(summary="Cards of your teams", parameters=[CardFilterSerializer])
    def list(self, request: Request) -> Response:
        f = self.query(CardFilterSerializer)
        cards = selectors.cards_for(
            user=request.user,
            board_id=f.get("board"),
            kind=f.get("kind"),
            column_id=f.get("column"),
            owner_id=f.get("owner"),
            q=f.get("q"),
        )
        return self.paginated(cards, CardSerializer)

    @extend_schema(
        summary="Create a card (hypothesis, experiment or result)",
        request=CardCreateSerializer,
        responses={201: CardSerializer, **WRITE_ERRORS},
    )
    def create(self, request: Request) -> Response:
        data = self.validated(CardCreateSerializer)
        board: Board = data.pop("board")
        self.require_edit(board.team_id)
        card = card_create(
            board=board,
            kind=data.pop("kind"),
            title=data.pop("title"),
            column=data.pop("column", None),
            tags=data.pop("tags", ()),
            actor=request.user,
            **data,
        )
        return self._out(card, code=status.HTTP_201_CREATED)

    @extend_schema(
        summary="Edit a card",
        description="Send the `version` you last read; if someone changed the card since, the answer is 409 "
        "with `current_version` and nothing is applied. To change column use the move action.",
        request=CardUpdateSerializer,
        responses={200: CardSerializer, **WRITE_ERRORS, 409: ERR_409},
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        card = self.get_object()
        self.require_edit(card.board.team_id)
        data = self.validated(CardUpdateSerializer, card=card)
        version = data.pop("version")
        tags = data.pop("tags", None)
        reason = data.pop("amendment_reason", "")
        card = card_update(
            card=card, actor=request.user, expected_version=version, tags=tags, amendment_reason=reason, **data
        )
        return self._out(card)

    @extend_schema(
        summary="Move a card to a column (and position)",
        request=CardMoveSerializer,
        responses={200: CardSerializer, **WRITE_ERRORS, 409: ERR_409},
    )
    @action(detail=True, methods=["post"])
    def move(self, request: Request, pk: str | None = None) -> Response:
        card = self.get_object()
        self.require_edit(card.board.team_id)
        data = self.validated(CardMoveSerializer, card=card)
        card = card_move(
            card=card,
            to_column=data["column"],
            actor=request.user,
            expected_version=data["version"],
            index=data.get("index"),
            reason=data.get("reason", ""),
        )
        return self._out(card)

    @extend_schema(summary="History of a card (oldest first)", responses=CardEventSerializer(many=True))
    @action(detail=True, methods=["get"], serializer_class=CardEventSerializer)
    def events(self, request: Request, pk: str | None = None) -> Response:
        card = self.get_object()
        return self.paginated(selectors.card_events(card=card), CardEventSerializer)


# --- Runs ------------------------------------------------------------------------------------------


class RunViewSet(mixins.RetrieveModelMixin, ScopedViewSet):
    serializer_class = RunSerializer
    parser_classes = [LenientJSONParser]

    def get_queryset(self) -> QuerySet[Run]:
        if self.schema_only:
            return Run.objects.none()
        if self.action == "retrieve":
            return selectors.runs_for(user=self.request.user, detail=True)
        # Actions only need the run itself; responses are re-read after the service call.
        return selectors.runs_for(user=self.request.user).prefetch_related(None)

    def get_serializer_class(self) -> type[serializers.Serializer]:
        return RunDetailSerializer if self.action == "retrieve" else RunSerializer

    def _out(self, run: Run, *, code: int = status.HTTP_200_OK) -> Response:
        fresh = selectors.runs_for(user=self.request.user, detail=True).get(pk=run.pk)
        return Response(RunDetailSerializer(fresh, context=self.get_serializer_context()).data, status=code)

    def _writable_run(self) -> Run:
        run = self.get_object()
        self.require_edit(run.team_id)
        return run

    @extend_schema(summary="Runs of your teams, newest first", parameters=[RunFilterSerializer])
    def list(self, request: Request) -> Response:
        f = self.query(RunFilterSerializer)
        runs = selectors.runs_for(
            user=request.user,
            team_slug=f.get("team"),
            status=f.get("status"),
            card_id=f.get("card"),
            since=f.get("since"),
        )
        return self.paginated(runs, RunSerializer)

    @extend_schema(
        summary="Start tracking a run",
        request=RunCreateSerializer,
        responses={201: RunDetailSerializer, **WRITE_ERRORS},
    )
    def create(self, request: Request) -> Response:
        data = self.validated(RunCreateSerializer)
        team: Team = data["team"]
        self.require_edit(team.pk)
        experiment = None
        if data.get("experiment"):
            experiment = tracking_experiment_get_or_create(team=team, name=data["experiment"])
        run = run_create(
            team=team,
            user=request.user,
            experiment=experiment,
            name=data.get("name", ""),
            status=data["status"],
            start_time=data.get("start_time"),
            end_time=data.get("end_time"),
            tags=data.get("tags"),
            params=data.get("params"),
        )
        return self._out(run, code=status.HTTP_201_CREATED)

    @extend_schema(summary="A run with params, tags, latest metrics and linked cards")
    def retrieve(self, request: Request, pk: str | None = None) -> Response:
        return super().retrieve(request, pk=pk)

    @extend_schema(
        summary="Update a run's status, end time or name",
        description="Terminal statuses (FINISHED, FAILED, KILLED) set the end time if it is not given; "
        "linked cards move along (all runs done -> Analyzing, a failure flags the card).",
        request=RunUpdateSerializer,
        responses={200: RunDetailSerializer, **WRITE_ERRORS},
    )
    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        run = self._writable_run()
        data = self.validated(RunUpdateSerializer, run=run)
        run = run_update(run=run, status=data.get("status"), end_time=data.get("end_time"), name=data.get("name"))
        return self._out(run)

    @extend_schema(
        summary="Log params (immutable)",
        description="Re-logging a param with the same value is accepted; a different value is a 400 and "
        "nothing in the request is applied.",
        request=ParamsSerializer,
        responses={200: ParamsResultSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def params(self, request: Request, pk: str | None = None) -> Response:
        run = self._writable_run()
        data = self.validated(ParamsSerializer)
        run_log_batch(run=run, params=data["params"])
        return Response({"params": dict(run.params.order_by("key").values_list("key", "value"))})

    @extend_schema(
        summary="Log a batch of metric points",
        description="Body: `{\"metrics\": [{key, value, step, timestamp}, ...]}` (a bare list is accepted too), "
        "at most 1000 points. Idempotent: points already stored (same key, value, step, timestamp) are not "
        "added again, so a client may safely retry a batch. NaN and +/-Infinity are kept; send them as "
        "numbers or as the strings 'NaN', 'Infinity', '-Infinity'.",
        request=MetricBatchSerializer,
        responses={200: MetricBatchResultSerializer, **WRITE_ERRORS},
    )
    @action(detail=True, methods=["post"])
    def metrics(self, request: Request, pk: str | None = None) -> Response:
        run = self._writable_run()
        body = {"metrics": request.data} if isinstance(request.data, list) else request.data
        serializer = MetricBatchSerializer(data=body, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        points = [MetricPoint(**point) for point in serializer.validated_data["metrics"]]
        added = run_log_batch(run=run, metrics=points)
        return Response({"received": len(points), "added": added})

    @extend_schema(
        summary="History of one metric (by step, then timestamp)",
        parameters=[MetricHistoryFilterSerializer],
        responses=MetricRowSerializer(many=True),
    )
    @action(
        detail=True,
        methods=["get"],
        url_path="metrics/history",
        url_name="metric-history",
        pagination_class=HistoryPagination,
        serializer_class=MetricRowSerializer,
    )
    def metric_history(self, request: Request, pk: str | None = None) -> Response:
        run = self.get_object()
        key = self.query(MetricHistoryFilterSerializer)["key"]
        return self.paginated(selectors.metric_history(run=run, key=key), MetricRowSerializer)


# --- Run <-> card links ----------------------------------------------------------------------------


@extend_schema_view(destroy=extend_schema(summary="Unlink a run from a card", responses={204: None, 403: ERR_403}))
class LinkViewSet(mixins.DestroyModelMixin, ScopedViewSet):
    serializer_class = LinkSerializer

    def get_queryset(self) -> QuerySet[CardRun]:
        if self.schema_only:
            return CardRun.objects.none()
        return selectors.links_for(user=self.request.user)

    @extend_schema(summary="Run-card links", parameters=[LinkFilterSerializer])
    def list(self, request: Request) -> Response:
        f = self.query(LinkFilterSerializer)
        return self.paginated(
            selectors.links_for(user=request.user, card_id=f.get("card"), run_id=f.get("run")), LinkSerializer
        )

    @extend_schema(
        summary="Link a run to a card",
        description="Linking an already linked pair returns the existing link with 200.",
        request=LinkCreateSerializer,
        responses={201: LinkSerializer, 200: LinkSerializer, **WRITE_ERRORS},
    )
    def create(self, request: Request) -> Response:
        data = self.validated(LinkCreateSerializer)
        card: Card = data["card"]
        self.require_edit(card.board.team_id)
        existed = CardRun.objects.filter(card=card, run=data["run"]).exists()
        link = card_link_run(
            card=card, run=data["run"], actor=request.user, via=LinkVia.MANUAL, is_baseline=data["is_baseline"]
        )
        link = selectors.links_for(user=request.user).get(pk=link.pk)
        code = status.HTTP_200_OK if existed else status.HTTP_201_CREATED
        return Response(LinkSerializer(link, context=self.get_serializer_context()).data, status=code)

    def perform_destroy(self, instance: CardRun) -> None:
        self.require_edit(instance.card.board.team_id)
        card_unlink_run(card=instance.card, run=instance.run, actor=self.request.user)


# --- API tokens ------------------------------------------------------------------------------------


@extend_schema_view(
    list=extend_schema(summary="Your API tokens (active first)"),
    destroy=extend_schema(summary="Revoke a token", responses={204: None, 404: ERR_404}),
)
class TokenViewSet(mixins.ListModelMixin, mixins.DestroyModelMixin, ScopedViewSet):
    serializer_class = TokenSerializer

    def get_queryset(self) -> QuerySet[ApiToken]:
        if self.schema_only:
            return ApiToken.objects.none()
        return selectors.tokens_for(user=self.request.user)

    @extend_schema(
        summary="Create a token",
        description="The secret is in the `token` field of this response only; it is stored hashed and "
        "cannot be shown again. Use it as `Authorization: Bearer <token>`.",
        request=TokenCreateSerializer,
        responses={201: TokenCreatedSerializer, 400: ERR_400},
    )
    def create(self, request: Request) -> Response:
        data = self.validated(TokenCreateSerializer)
        token, secret = token_create(user=request.user, name=data["name"], team=data["team"])
        token.token = secret  # type: ignore[attr-defined]
        response = Response(TokenCreatedSerializer(token).data, status=status.HTTP_201_CREATED)
        response["Cache-Control"] = "no-store"
        return response

    def perform_destroy(self, instance: ApiToken) -> None:
        token_revoke(token=instance)


# --- Index and unknown API paths -----------------------------------------------------------------------------


API_RESOURCES = ("teams", "boards", "cards", "runs", "links", "tokens")


def api_index(request: HttpRequest) -> JsonResponse:
    """Where to start: the resources, the OpenAPI schema and the interactive docs."""
    base = request.build_absolute_uri("/api/")
    return JsonResponse(
        {
            "docs": base + "docs/",
            "schema": base + "schema/",
            "authentication": "Session cookie, or 'Authorization: Bearer <token>' (Account > API tokens).",
            "resources": {name: f"{base}{name}/" for name in API_RESOURCES},
            "reports": {
                name: f"{base}teams/{{team}}/reports/{name}/" for name in ("velocity", "flow", "maturity")
            },
        }
    )


@csrf_exempt  # any method on an unknown path is a JSON 404, not a CSRF page
def not_found(request: HttpRequest, path: str = "") -> JsonResponse:
    """JSON 404 for unknown /api/ paths; hints at the trailing slash clients often forget."""
    message = f"No API endpoint at {request.path}. See /api/docs/ for the list."
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not not_found:
            message = f"No API endpoint at {request.path}; did you mean {request.path}/ (with a trailing slash)?"
    return JsonResponse({"error": {"code": "not_found", "message": message}}, status=404)

