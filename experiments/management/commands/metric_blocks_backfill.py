from django.core.management.base import BaseCommand

from experiments.models import Run
from experiments.services.metric_blocks import metric_blocks_rebuild


class Command(BaseCommand):
    help = (
        "Recompute the chart rollups (MetricBlock) from the stored metric points: for points loaded "
        "around the ingest path (bulk SQL) or changed by hand. All runs unless --run is given."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--run", action="append", default=[], help="Run id (MLflow run_id); repeatable.")
        parser.add_argument("--key", action="append", default=[], help="Only this metric key; repeatable.")

    def handle(self, *args, run: list[str], key: list[str], **options) -> None:
        run_ids = None
        if run:
            found = dict(Run.objects.filter(external_id__in=run).values_list("pk", "external_id"))
            if missing := set(run) - set(found.values()):
                self.stderr.write(f"Runs not found: {', '.join(sorted(missing))}")
            run_ids = list(found)
        written = metric_blocks_rebuild(run_ids=run_ids, keys=key or None)
        self.stdout.write(f"{written} metric blocks written.")
