from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Set up and run mlboard on embedded defaults: migrate, seed the demo team, serve on ADDRPORT."

    def add_arguments(self, parser) -> None:
        parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
        parser.add_argument("--no-serve", action="store_true", help="Set up only; do not start the server.")

    def handle(self, *args, addrport: str, no_serve: bool, **options) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        self.stdout.write("Database migrated.")
        call_command("seed_demo", stdout=self.stdout)
        if no_serve:
            return
        self.stdout.write(f"Open http://{addrport}/ (admin at /admin/, API docs at /api/docs/).")
        call_command("runserver", addrport, use_reloader=False)
