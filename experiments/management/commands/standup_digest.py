"""Print a team's standup digest in the terminal (nothing is stored or sent)."""

from __future__ import annotations

import json

from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from experiments.errors import DomainError
from experiments.models import Board, Team
from experiments.selectors.standup import parse_since
from experiments.services.standup import standup_digest_preview


class Command(BaseCommand):
    help = "Print the standup digest for a team: runs since the last standup window start (or --since) until now."

    def add_arguments(self, parser) -> None:
        parser.add_argument("team", help="Team slug, e.g. vision.")
        parser.add_argument("--board", type=int, help="Only this board (id).")
        parser.add_argument("--since", help="Window start: 12h, 3d, 2025-05-14 or 2025-05-14T18:00 (team timezone).")
        parser.add_argument("--json", action="store_true", help="Print the digest content as JSON instead of text.")

    def handle(self, *args, **options) -> None:
        team = Team.objects.filter(slug=options["team"]).first()
        if team is None:
            known = ", ".join(Team.objects.order_by("slug").values_list("slug", flat=True)[:20]) or "none"
            raise CommandError(f"No team with slug {options['team']!r}. Known teams: {known}.")
        board = None
        if options.get("board") is not None:
            board = Board.objects.filter(pk=options["board"], team=team).first()
            if board is None:
                raise CommandError(f"Team {team.slug} has no board with id {options['board']}.")
        now = timezone.now()
        try:
            since = parse_since(options.get("since"), team=team, now=now)
        except DomainError as exc:
            raise CommandError(exc.message) from None
        content, text = standup_digest_preview(team=team, board=board, window_start=since, window_end=now)
        if options["json"]:
            self.stdout.write(json.dumps(content, indent=2))
        else:
            self.stdout.write(text, ending="")
