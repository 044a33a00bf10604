"""Read side of the team settings pages: members and MLflow sources, each in one query."""

from __future__ import annotations

from django.db.models import Case, Count, IntegerField, OuterRef, QuerySet, Subquery, Value, When
from django.db.models.functions import Coalesce, Concat, Lower

from ..models import Membership, MlflowSource, Role, Run

ROLE_ORDER = Case(
    When(role=Role.MANAGER, then=Value(0)),
    When(role=Role.MEMBER, then=Value(1)),
    default=Value(2),
    output_field=IntegerField(),
)


def team_memberships(*, team_id: int) -> QuerySet[Membership]:
    """Managers first, then members, then viewers; alphabetical within a role."""
    return (
        Membership.objects.filter(team_id=team_id)
        .select_related("user")
        .annotate(role_rank=ROLE_ORDER)
        .order_by("role_rank", Lower("user__username"), "pk")
    )


def team_mlflow_sources(*, team_id: int) -> QuerySet[MlflowSource]:
    """Sources with how many runs each has imported (runs are labelled import:<source name>)."""
    imported = (
        Run.objects.filter(team_id=OuterRef("team_id"), source=Concat(Value("import:"), OuterRef("name")))
        .order_by()
        .values("team_id")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        MlflowSource.objects.filter(team_id=team_id)
        .annotate(imported_runs=Coalesce(Subquery(imported, output_field=IntegerField()), Value(0)))
        .order_by(Lower("name"), "pk")
    )
