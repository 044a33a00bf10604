"""Import experiments, runs and metric histories from an MLflow tracking server into a team.

    python manage.py import_mlflow vision http://mlflow.internal:5000 --experiment churn --token "$TOKEN"

Safe to re-run: the source remembers where it stopped and only new or changed runs are fetched.
"""

from __future__ import annotations

import os
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from experiments.errors import DomainError
from experiments.models import Team
from experiments.services.mlflow_import import (
    MlflowImportError,
    default_source_name,
    mlflow_source_sync,
    mlflow_source_upsert,
)


class _TqdmProgress:
    """One progress bar per experiment, written to stderr so stdout stays a clean summary."""

    def __init__(self, stream: Any, *, enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self.bar: tqdm | None = None

    def experiment_started(self, name: str, total_runs: int) -> None:
        self.bar = tqdm(
            total=total_runs, desc=name[:40], unit="run", file=self.stream, disable=not self.enabled,
            dynamic_ncols=True, mininterval=0.2,
        )

    def run_done(self, run_id: str, outcome: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(outcome, refresh=False)
            self.bar.update(1)

    def experiment_finished(self, name: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str("done", refresh=False)
            self.bar.close()
            self.bar = None


class Command(BaseCommand):
    help = "Import (incrementally) experiments, runs and metric histories from an MLflow tracking server."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("team", help="Slug of the team that receives the runs.")
        parser.add_argument("tracking_uri", help="MLflow tracking URI, e.g. http://mlflow.internal:5000")
        parser.add_argument(
            "--token", default=None,
            help="Bearer token for the server (default: $MLFLOW_TRACKING_TOKEN; kept on the source for re-syncs).",
        )
        parser.add_argument(
            "--experiment", action="append", default=None, dest="experiments", metavar="NAME",
            help="Experiment to import (repeatable). Default: all experiments, or the source's saved list.",
        )
        parser.add_argument(
            "--source-name", default=None,
            help="Name of this source in mlboard (default: the server's host:port). Runs get source import:<name>.",
        )
        parser.add_argument(
            "--full", action="store_true",
            help="List every run instead of only those started or ended since the last sync (picks up tags "
            "added later to old runs). Unchanged runs are still skipped cheaply.",
        )
        parser.add_argument("--no-progress", action="store_true", help="Do not draw progress bars.")

    def handle(self, *args: Any, **options: Any) -> None:
        team = Team.objects.filter(slug=options["team"]).first()
        if team is None:
            known = ", ".join(Team.objects.order_by("slug").values_list("slug", flat=True)[:20]) or "none yet"
            raise CommandError(f"No team with slug {options['team']!r}. Known teams: {known}.")
        uri = options["tracking_uri"]
        token = options["token"] if options["token"] is not None else os.environ.get("MLFLOW_TRACKING_TOKEN")
        name = options["source_name"] or default_source_name(uri)
        try:
            source = mlflow_source_upsert(
                team=team, name=name, tracking_uri=uri, token=token, experiment_names=options["experiments"]
            )
        except DomainError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(f"Importing from {source.tracking_uri} into team {team.slug} as source {name!r}…")
        # The raw stream: Django's OutputWrapper appends a newline to every write, which breaks tqdm's \r redraws.
        progress = _TqdmProgress(getattr(self.stderr, "_out", self.stderr), enabled=not options["no_progress"])
        try:
            summary = mlflow_source_sync(source=source, progress=progress, full=options["full"])
        except MlflowImportError as exc:
            raise CommandError(f"Import failed: {exc.message}") from None
        finally:
            progress.experiment_finished("")
        self.stdout.write(self.style.SUCCESS(f"Imported: {summary.as_text()}"))
        for problem in summary.problems:
            self.stderr.write(self.style.WARNING(f"  {problem}"))
        if summary.problems:
            raise CommandError(
                f"{len(summary.problems)} run(s) could not be imported (details above); the next run retries them."
            )
