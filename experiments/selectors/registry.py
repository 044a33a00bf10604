"""Reads for the Models page and the run page's datasets and models: a fixed number of queries
whatever the number of models, versions, runs or cards."""

from __future__ import annotations

from dataclasses import dataclass, field

from django.db.models import Prefetch, Q

from ..models import CardRun, LoggedModel, ModelVersion, RegisteredModel, Run, RunDataset, Team
from ..services.runs import ACTIVE


@dataclass
class VersionRow:
    version: ModelVersion
    aliases: list[str]
    cards: list[CardRun] = field(default_factory=list)


@dataclass
class ModelRow:
    model: RegisteredModel
    versions: list[VersionRow]
    aliases: list[tuple[str, int]]


def _card_links() -> Prefetch:
    return Prefetch("run__card_links", queryset=CardRun.objects.select_related("card").order_by("card__key"))


def team_registered_models(*, team: Team) -> list[ModelRow]:
    """Every registered model of the team with its versions (newest first), each with the run and
    the cards that run is evidence for. Three queries."""
    versions = (
        ModelVersion.objects.select_related("run", "logged_model")
        .prefetch_related(_card_links())
        .order_by("-version")
    )
    models = list(
        RegisteredModel.objects.filter(team=team).prefetch_related(Prefetch("versions", queryset=versions))
    )
    rows = []
    for model in models:
        by_version: dict[int, list[str]] = {}
        for alias, number in sorted(model.aliases.items()):
            by_version.setdefault(number, []).append(alias)
        version_rows = [
            VersionRow(
                version=v,
                aliases=by_version.get(v.version, []),
                cards=list(v.run.card_links.all()) if v.run is not None else [],
            )
            for v in model.versions.all()
        ]
        rows.append(ModelRow(model=model, versions=version_rows, aliases=sorted(model.aliases.items())))
    return rows


@dataclass
class RunModels:
    datasets: list[RunDataset]
    models: list[LoggedModel]


def run_models(run: Run) -> RunModels:
    """Datasets the run used and the logged models it produced (as source run or as outputs), with
    the registry versions made from them. Three queries."""
    datasets = list(run.datasets.order_by("created_at", "pk"))
    models = list(
        LoggedModel.objects.filter(Q(source_run=run) | Q(run_io__run=run, run_io__direction="output"))
        .filter(lifecycle_stage=ACTIVE)
        .distinct()
        .prefetch_related(
            Prefetch(
                "model_versions",
                queryset=ModelVersion.objects.select_related("registered_model").order_by("version"),
            )
        )
        .order_by("created_at", "pk")
    )
    return RunModels(datasets=datasets, models=models)
