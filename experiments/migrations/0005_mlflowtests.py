from django.db import migrations, models
from django.db.models import OuterRef, Subquery


def backfill(apps, schema_editor) -> None:
    """Models logged before the field existed take their source run's id."""
    LoggedModel = apps.get_model("experiments", "LoggedModel")
    Run = apps.get_model("experiments", "Run")
    LoggedModel.objects.filter(source_run__isnull=False).update(
        source_run_external_id=Subquery(Run.objects.filter(pk=OuterRef("source_run_id")).values("external_id")[:1])
    )


class Migration(migrations.Migration):
    dependencies = [
        ("experiments", "0004_merge_20261201_0826"),
    ]

    operations = [
        migrations.AddField(
            model_name="loggedmodel",
            name="source_run_external_id",
            field=models.CharField(blank=True, max_length=64),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
