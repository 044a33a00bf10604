"""mlboard domain model.

Cards are hypotheses, experiments and results; runs are the evidence behind them.
All kinds of card share one table so the board is a single query; kind-specific
fields are nullable and validated by the services.
"""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone


class User(AbstractUser):
    """Custom user from the first migration so profile fields never need a swap."""

    display_name = models.CharField(max_length=150, blank=True)

    def __str__(self) -> str:
        return self.display_name or self.get_full_name() or self.username

    @property
    def label(self) -> str:
        return str(self)


class Role(models.TextChoices):
    MANAGER = "manager", "Manager"
    MEMBER = "member", "Member"
    VIEWER = "viewer", "Viewer"


slug_validator = RegexValidator(r"^[a-z0-9][a-z0-9-]*$", "Use lowercase letters, digits and dashes.")
key_validator = RegexValidator(r"^[A-Z][A-Z0-9]{0,9}$", "Use 1-10 uppercase letters or digits, starting with a letter.")


class Team(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=60, unique=True, validators=[slug_validator])
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="teams")
    # Standup: the review window runs from window_start yesterday to the standup time today.
    standup_time = models.TimeField(default=dt.time(9, 30))
    standup_window_start = models.TimeField(default=dt.time(18, 0))
    timezone = models.CharField(max_length=64, default="UTC")
    stuck_after_hours = models.PositiveIntegerField(default=24)
    digest_emails = models.TextField(blank=True, help_text="Extra recipients, one per line.")
    webhook_url = models.URLField(blank=True, help_text="Slack-compatible incoming webhook.")
    iteration_days = models.PositiveSmallIntegerField(
        default=1, validators=[MinValueValidator(1), MaxValueValidator(90)]
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def zone(self) -> dt.tzinfo:
        """The team's time zone; UTC if the stored name is unknown to this system."""
        try:
            return ZoneInfo(self.timezone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            return dt.UTC


class Membership(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    joined_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="uniq_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def can_edit(self) -> bool:
        return self.role in (Role.MANAGER, Role.MEMBER)


class Tag(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="tags")
    name = models.CharField(max_length=40)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="uniq_tag")]

    def __str__(self) -> str:
        return self.name


class Board(models.Model):
    """One board per ML problem."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="boards")
    name = models.CharField(max_length=120)
    key = models.CharField(max_length=10, validators=[key_validator], help_text="Prefix of card keys, e.g. CHURN.")
    problem = models.TextField(blank=True, help_text="The ML problem this board works on.")
    next_number = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True)
    archived = models.BooleanField(default=False)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "key"], name="uniq_board_key")]

    def __str__(self) -> str:
        return self.name


class Stage(models.TextChoices):
    """What a column means, so run events can move cards without knowing column names."""

    BACKLOG = "backlog", "Backlog"
    READY = "ready", "Ready"
    RUNNING = "running", "Running"
    ANALYZING = "analyzing", "Analyzing"
    DONE = "done", "Done"


class Column(models.Model):
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="columns")
    name = models.CharField(max_length=60)
    position = models.PositiveSmallIntegerField(default=0)
    wip_limit = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Empty means no limit.")
    stage = models.CharField(max_length=10, choices=Stage.choices, default=Stage.BACKLOG)

    class Meta:
        ordering = ["board", "position", "id"]

    def __str__(self) -> str:
        return f"{self.board.name} / {self.name}"


class CardKind(models.TextChoices):
    HYPOTHESIS = "hypothesis", "Hypothesis"
    EXPERIMENT = "experiment", "Experiment"
    RESULT = "result", "Result"


class Direction(models.TextChoices):
    MAXIMIZE = "maximize", "Higher is better"
    MINIMIZE = "minimize", "Lower is better"


class VerdictChoice(models.TextChoices):
    SUPPORTED = "supported", "Supported"
    REFUTED = "refuted", "Refuted"
    INCONCLUSIVE = "inconclusive", "Inconclusive"


class Card(models.Model):
    board = models.ForeignKey(Board, on_delete=models.CASCADE, related_name="cards")
    column = models.ForeignKey(Column, on_delete=models.PROTECT, related_name="cards")
    kind = models.CharField(max_length=10, choices=CardKind.choices)
    number = models.PositiveIntegerField()
    key = models.CharField(max_length=24, db_index=True)
    title = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="owned_cards"
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="created_cards"
    )
    tags = models.ManyToManyField(Tag, blank=True, related_name="cards")
    # Experiments belong to a hypothesis; results to an experiment (or directly to a hypothesis).
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="children")
    iteration = models.ForeignKey(
        "Iteration", null=True, blank=True, on_delete=models.SET_NULL, related_name="cards"
    )
    position = models.FloatField(default=0, help_text="Order within the column.")
    version = models.PositiveIntegerField(default=1, help_text="Optimistic concurrency token.")
    flagged = models.BooleanField(default=False)
    flag_reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    # Hypothesis
    statement = models.TextField(blank=True)
    rationale = models.TextField(blank=True)
    metric_key = models.CharField(max_length=250, blank=True)
    direction = models.CharField(max_length=8, choices=Direction.choices, blank=True)
    threshold = models.FloatField(null=True, blank=True, help_text="Absolute value the metric must reach.")
    min_delta = models.FloatField(null=True, blank=True, help_text="Improvement required over the baseline.")
    min_runs = models.PositiveSmallIntegerField(default=3, validators=[MinValueValidator(1)])
    criteria_set_at = models.DateTimeField(null=True, blank=True)

    # Experiment
    plan = models.TextField(blank=True)
    baseline_run = models.ForeignKey(
        "Run", null=True, blank=True, on_delete=models.SET_NULL, related_name="baseline_for"
    )
    baseline_value = models.FloatField(null=True, blank=True)

    # Result (and a hypothesis's confirmed verdict)
    verdict = models.CharField(max_length=12, choices=VerdictChoice.choices, blank=True)
    evidence = models.TextField(blank=True)
    learnings = models.TextField(blank=True)
    decided_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["column__position", "position", "id"]
        constraints = [
            models.UniqueConstraint(fields=["board", "number"], name="uniq_card_number"),
        ]
        indexes = [models.Index(fields=["board", "column", "position"])]

    def __str__(self) -> str:
        return f"{self.key} {self.title}"

    @property
    def team_id(self) -> int:
        return self.board.team_id


class Hypothesis(Card):
    class Meta:
        proxy = True
        verbose_name_plural = "hypotheses"


class Experiment(Card):
    class Meta:
        proxy = True


class Result(Card):
    class Meta:
        proxy = True


class EventKind(models.TextChoices):
    CREATED = "created", "Created"
    MOVED = "moved", "Moved"
    EDITED = "edited", "Edited"
    STATUS = "status", "Status changed"
    LINKED = "linked", "Run linked"
    UNLINKED = "unlinked", "Run unlinked"
    VERDICT_PROPOSED = "verdict_proposed", "Verdict proposed"
    VERDICT_DECIDED = "verdict_decided", "Verdict decided"
    NOTE = "note", "Note"
    FLAGGED = "flagged", "Flagged"


class CardEvent(models.Model):
    """Append-only log of everything that happened to a card; reports are built from it."""

    # Evidence: PROTECT, so only an explicit, logged purge (services/purge.py) removes it.
    card = models.ForeignKey(Card, on_delete=models.PROTECT, related_name="events")
    board = models.ForeignKey(Board, on_delete=models.PROTECT, related_name="events")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    kind = models.CharField(max_length=20, choices=EventKind.choices)
    from_column = models.ForeignKey(Column, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    to_column = models.ForeignKey(Column, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    from_stage = models.CharField(max_length=10, choices=Stage.choices, blank=True)
    to_stage = models.CharField(max_length=10, choices=Stage.choices, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["board", "created_at"])]

    def __str__(self) -> str:
        return f"{self.card_id} {self.kind} @ {self.created_at:%Y-%m-%d %H:%M}"


class IterationState(models.TextChoices):
    PLANNED = "planned", "Planned"
    ACTIVE = "active", "Active"
    CLOSED = "closed", "Closed"


class Iteration(models.Model):
    """Time-box; 1 day by default (code by day, train overnight, analyse in the morning)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="iterations")
    name = models.CharField(max_length=80)
    goal = models.TextField(blank=True)
    start = models.DateTimeField()
    end = models.DateTimeField()
    state = models.CharField(max_length=8, choices=IterationState.choices, default=IterationState.PLANNED)
    closed_at = models.DateTimeField(null=True, blank=True)
    # Frozen at close so carried-over work stays visible after cards move on.
    summary = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-start"]
        constraints = [
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="iteration_end_after_start"),
        ]
        indexes = [models.Index(fields=["team", "start"])]

    def __str__(self) -> str:
        return self.name


class IterationItem(models.Model):
    """A card committed to an iteration, and how it stood when the iteration closed."""

    iteration = models.ForeignKey(Iteration, on_delete=models.PROTECT, related_name="items")
    card = models.ForeignKey(Card, on_delete=models.PROTECT, related_name="iteration_items")
    committed_at = models.DateTimeField(default=timezone.now)
    completed = models.BooleanField(null=True, blank=True, help_text="Set at close; null while open.")
    carried_over = models.BooleanField(default=False)
    stage_at_close = models.CharField(max_length=10, choices=Stage.choices, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["iteration", "card"], name="uniq_iteration_item")]

    def __str__(self) -> str:
        return f"{self.card} in {self.iteration}"


class ApiToken(models.Model):
    """Personal API token; only a SHA-256 digest is stored, the secret is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens",
        help_text="Default team for MLflow-compatible logging.",
    )
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=12, db_index=True)
    digest = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class TrackingExperiment(models.Model):
    """An MLflow-style experiment: a named group of runs (not a board card)."""

    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="tracking_experiments")
    name = models.CharField(max_length=500)
    source = models.CharField(max_length=100, default="mlboard")
    external_id = models.CharField(max_length=64, blank=True, db_index=True)
    artifact_location = models.CharField(max_length=1000, blank=True)
    lifecycle_stage = models.CharField(max_length=10, default="active")
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "source", "name"], name="uniq_tracking_experiment")]

    def __str__(self) -> str:
        return self.name


class RunStatus(models.TextChoices):
    RUNNING = "RUNNING", "Running"
    SCHEDULED = "SCHEDULED", "Scheduled"
    FINISHED = "FINISHED", "Finished"
    FAILED = "FAILED", "Failed"
    KILLED = "KILLED", "Killed"


TERMINAL_STATUSES = (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED)


class Trigger(models.TextChoices):
    MANUAL = "manual", "Manual"
    SCHEDULED = "scheduled", "Scheduled"
    CI = "ci", "CI"


class Run(models.Model):
    team = models.ForeignKey(Team, on_delete=models.PROTECT, related_name="runs")
    experiment = models.ForeignKey(
        TrackingExperiment, null=True, blank=True, on_delete=models.PROTECT, related_name="runs"
    )
    source = models.CharField(max_length=100, default="mlboard", help_text="mlboard, or import:<source name>.")
    external_id = models.CharField(max_length=64, db_index=True)
    name = models.CharField(max_length=250, blank=True)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.RUNNING, db_index=True)
    start_time = models.DateTimeField(null=True, blank=True)
    end_time = models.DateTimeField(null=True, blank=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    user_name = models.CharField(max_length=150, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    code_version = models.CharField(max_length=64, blank=True)
    data_version = models.CharField(max_length=200, blank=True)
    seed = models.BigIntegerField(null=True, blank=True)
    environment = models.JSONField(default=dict, blank=True)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.MANUAL)
    artifact_uri = models.CharField(max_length=1000, blank=True)
    lifecycle_stage = models.CharField(max_length=10, default="active")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True, db_index=True)

    class Meta:
        ordering = ["-start_time", "-id"]
        constraints = [models.UniqueConstraint(fields=["team", "source", "external_id"], name="uniq_run_external")]
        indexes = [models.Index(fields=["team", "end_time"]), models.Index(fields=["team", "status"])]

    def __str__(self) -> str:
        return self.name or self.external_id

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def duration(self) -> dt.timedelta | None:
        if self.start_time and self.end_time:
            return self.end_time - self.start_time
        return None


class Param(models.Model):
    """Run parameter; immutable once logged (mlflow semantics)."""

    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="params")
    key = models.CharField(max_length=250)
    value = models.TextField()

    class Meta:
        ordering = ["key"]
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="uniq_param")]

    def __str__(self) -> str:
        return f"{self.key}={self.value}"


class Metric(models.Model):
    """One point of a metric series. NaN is stored as is_nan with value 0 (SQLite has no NaN);
    +/-Inf are stored as is. The full tuple is unique so a retried batch adds nothing."""

    # No separate run index: the unique index below starts with (run, key, step) and serves
    # every lookup, and one index fewer halves the index work per ingested point.
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="metrics", db_index=False)
    key = models.CharField(max_length=250)
    value = models.FloatField()
    is_nan = models.BooleanField(default=False)
    step = models.BigIntegerField(default=0)
    timestamp = models.BigIntegerField(help_text="Milliseconds since epoch.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "key", "step", "timestamp", "value", "is_nan"], name="uniq_metric_point"
            )
        ]

    def __str__(self) -> str:
        return f"{self.key}@{self.step}={'NaN' if self.is_nan else self.value}"


class LatestMetric(models.Model):
    """Latest value per (run, key): the value at the highest step, then timestamp."""

    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="latest_metrics")
    key = models.CharField(max_length=250)
    value = models.FloatField()
    is_nan = models.BooleanField(default=False)
    step = models.BigIntegerField(default=0)
    timestamp = models.BigIntegerField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["run", "key"], name="uniq_latest_metric")]
        indexes = [models.Index(fields=["key", "run"])]

    def __str__(self) -> str:
        return f"{self.key}={'NaN' if self.is_nan else self.value} (step {self.step})"


class LinkVia(models.TextChoices):
    TAG = "tag", "mlboard.card tag"
    MANUAL = "manual", "Linked by hand"


class CardRun(models.Model):
    card = models.ForeignKey(Card, on_delete=models.PROTECT, related_name="run_links")
    run = models.ForeignKey(Run, on_delete=models.PROTECT, related_name="card_links")
    via = models.CharField(max_length=6, choices=LinkVia.choices, default=LinkVia.MANUAL)
    linked_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    is_baseline = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["card", "run"], name="uniq_card_run")]

    def __str__(self) -> str:
        return f"{self.card_id} <- run {self.run_id}"


class VerdictStatus(models.TextChoices):
    PROPOSED = "proposed", "Waiting for decision"
    CONFIRMED = "confirmed", "Confirmed"
    OVERRIDDEN = "overridden", "Overridden"
    SUPERSEDED = "superseded", "Superseded"


class VerdictProposal(models.Model):
    """Verdict computed from linked runs; a person confirms or overrides it."""

    card = models.ForeignKey(Card, on_delete=models.PROTECT, related_name="verdict_proposals")
    proposed = models.CharField(max_length=12, choices=VerdictChoice.choices)
    decided = models.CharField(max_length=12, choices=VerdictChoice.choices, blank=True)
    status = models.CharField(max_length=10, choices=VerdictStatus.choices, default=VerdictStatus.PROPOSED)
    stats = models.JSONField(default=dict, blank=True, help_text="n, mean, std, CI, baseline, delta.")
    explanation = models.TextField(blank=True)
    run_fingerprint = models.CharField(max_length=64, blank=True, help_text="Runs evaluated; idempotency.")
    created_at = models.DateTimeField(default=timezone.now)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    decided_at = models.DateTimeField(null=True, blank=True)
    note = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["card", "status"])]

    def __str__(self) -> str:
        return f"{self.proposed} ({self.status}) for card {self.card_id}"


class StandupDigest(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="standup_digests")
    board = models.ForeignKey(Board, null=True, blank=True, on_delete=models.CASCADE, related_name="standup_digests")
    window_start = models.DateTimeField()
    window_end = models.DateTimeField()
    created_at = models.DateTimeField(default=timezone.now)
    content = models.JSONField(default=dict)
    text = models.TextField(blank=True)
    email_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_sent_at = models.DateTimeField(null=True, blank=True)
    webhook_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-window_end"]
        constraints = [
            models.UniqueConstraint(fields=["team", "window_end"], condition=Q(board=None), name="uniq_team_digest"),
            models.UniqueConstraint(fields=["team", "board", "window_end"], name="uniq_board_digest"),
        ]

    def __str__(self) -> str:
        return f"Standup {self.team_id} until {self.window_end:%Y-%m-%d %H:%M}"


class MaturityAssessment(models.Model):
    """Self-assessment questionnaire: answers[stage][attribute] = 1..5 (Likert)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="maturity_assessments")
    respondent = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    answers = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Assessment by {self.respondent_id} on {self.created_at:%Y-%m-%d}"


class MaturitySnapshot(models.Model):
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="maturity_snapshots")
    date = models.DateField()
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-date"]
        constraints = [models.UniqueConstraint(fields=["team", "date"], name="uniq_maturity_snapshot")]

    def __str__(self) -> str:
        return f"Maturity {self.team_id} {self.date}"


class MlflowSource(models.Model):
    """An existing MLflow tracking server that mlboard imports from incrementally."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="mlflow_sources")
    name = models.CharField(max_length=80)
    tracking_uri = models.CharField(max_length=500)
    token = models.CharField(max_length=500, blank=True)
    experiment_names = models.TextField(blank=True, help_text="One per line; empty imports all experiments.")
    enabled = models.BooleanField(default=True)
    cursor = models.JSONField(default=dict, blank=True, help_text="Per experiment: last seen update time.")
    last_synced_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="uniq_mlflow_source")]

    def __str__(self) -> str:
        return self.name


# --- Hardening (inputsec): invitations and the purge log ------------------------------------------


class Invitation(models.Model):
    """An emailed, single-use link for someone without an account to join a team with a role.
    Only a SHA-256 digest of the link's secret is stored."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    digest = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["team", "created_at"])]

    def __str__(self) -> str:
        return f"Invitation of {self.email} to {self.team_id}"


class PurgeRecord(models.Model):
    """Audit log of hard deletes of evidence (cards, runs, tracking experiments, iterations, teams)."""

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_name = models.CharField(max_length=150, blank=True)
    team_slug = models.CharField(max_length=60, blank=True)
    object_type = models.CharField(max_length=60)
    object_id = models.BigIntegerField()
    object_repr = models.CharField(max_length=250)
    counts = models.JSONField(default=dict, help_text="Rows deleted per model.")
    reason = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Purged {self.object_type} {self.object_repr}"
