from django.core.management.base import BaseCommand

from experiments.demo import DEMO_PASSWORD, DEMO_USERS, demo_seed


class Command(BaseCommand):
    help = "Create the demo team (idempotent): boards, hypotheses, experiments, runs with metric curves."

    def handle(self, *args, **options) -> None:
        team = demo_seed()
        self.stdout.write(self.style.SUCCESS(f"Demo team '{team.name}' ready: {team.runs.count()} runs."))
        logins = ", ".join(f"{name} ({role})" for name, _full, role in DEMO_USERS)
        self.stdout.write(f"Log in as {logins} — password '{DEMO_PASSWORD}'.")
