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
from django.db.models import F, Q
from django.db.models.functions import Coalesce
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
    # Maturity: relative tolerance within which repeated runs must agree to count as reproduced.
    maturity_repro_tolerance = models.FloatField(
        null=True, blank=True, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="Empty: the site default (MATURITY_REPRO_TOLERANCE).",
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
    # With an equivalence margin: the effect is demonstrably smaller than what matters (TOST).
    NO_EFFECT = "no_effect", "No meaningful effect"


class AnalysisTest(models.TextChoices):
    T = "t", "t-test"
    BOOTSTRAP = "bootstrap", "Bootstrap interval"
    PERMUTATION = "permutation", "Permutation test"


class AnalysisScale(models.TextChoices):
    RAW = "raw", "Raw values"
    LOG = "log", "Log scale (ratios; for skewed losses and latencies)"


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
    # Hypothesis analysis plan (verdicts). min_runs is the planned number of runs (distinct seeds) per arm.
    analysis_test = models.CharField(max_length=12, choices=AnalysisTest.choices, default=AnalysisTest.T)
    analysis_scale = models.CharField(max_length=4, choices=AnalysisScale.choices, default=AnalysisScale.RAW)
    paired = models.BooleanField(default=True, help_text="Pair candidate and baseline runs by seed when seeds match.")
    equivalence_margin = models.FloatField(
        null=True, blank=True, help_text="Effects smaller than this do not matter (equivalence test, TOST)."
    )
    smallest_effect = models.FloatField(
        null=True, blank=True, help_text="Smallest improvement that matters; used for sample size and power."
    )
    failures_count = models.BooleanField(
        default=True, help_text="Failed and diverged (NaN/Inf) runs count as failures of the hypothesis."
    )
    max_failure_share = models.FloatField(
        default=0.2, validators=[MinValueValidator(0.0), MaxValueValidator(1.0)],
        help_text="More failing runs than this share block 'supported'.",
    )
    criteria_frozen_at = models.DateTimeField(
        null=True, blank=True, help_text="Criterion and plan froze when the first linked run started."
    )

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
    AMENDED = "amended", "Criterion amended"


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
        indexes = [
            models.Index(fields=["team", "end_time"]),
            models.Index(fields=["team", "status"]),
            # Maturity's window: runs by the time they started (or arrived, without a start time).
            models.Index(F("team"), Coalesce("start_time", "created_at"), name="run_team_started_or_created"),
            # Scale: the runs list's default order (newest first, runs without a start last) also
            # has an index, PostgreSQL-only (SQLite has no NULLS LAST in indexes): migration 0002_scale.
        ]

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
        indexes = [
            models.Index(fields=["key", "run"]),
            # Scale: runs ordered by a metric (runs list, MLflow search_runs order_by) in value order.
            models.Index(fields=["key", "value", "run"], name="latest_metric_key_value_idx"),
        ]

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


# --- Delivery and import state (outbound) ---------------------------------------------------------


class DigestDelivery(models.Model):
    """One channel of one digest. Marked sent only after the send succeeded; the key travels with
    every attempt (Idempotency-Key header, email Message-ID) so a retry after an unrecorded success
    is recognisable by the receiver, and a recorded success is never sent again."""

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        WEBHOOK = "webhook", "Webhook"

    digest = models.ForeignKey(StandupDigest, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    key = models.UUIDField(unique=True)
    attempts = models.PositiveIntegerField(default=0)
    sent_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["digest", "channel"], name="uniq_digest_channel")]

    def __str__(self) -> str:
        return f"Digest {self.digest_id} {self.channel}"


class ImportedRunArtifacts(models.Model):
    """The artifacts of one imported run, copied from its MLflow server (through the artifact proxy, or
    the run-scoped tracking API for stores the server does not proxy) into mlboard's artifact storage.
    Pending until every file is copied (done_at); files already stored with the same size are skipped,
    so an interrupted copy resumes where it stopped."""

    source = models.ForeignKey(MlflowSource, on_delete=models.CASCADE, related_name="artifact_copies")
    run = models.OneToOneField(Run, on_delete=models.CASCADE, related_name="imported_artifacts")
    remote_root = models.CharField(
        max_length=1000, blank=True,
        help_text="Path on the server's mlflow-artifacts API; empty: read through the run-scoped tracking API.",
    )
    files = models.PositiveIntegerField(default=0)
    size = models.BigIntegerField(default=0)
    done_at = models.DateTimeField(null=True, blank=True)
    error = models.CharField(max_length=300, blank=True)

    class Meta:
        indexes = [models.Index(fields=["source", "done_at"])]

    def __str__(self) -> str:
        return f"Artifacts of run {self.run_id}"


# --- Verdicts: pre-registration ------------------------------------------------------------------


class CriterionAmendment(models.Model):
    """A change to a hypothesis's criterion or plan after it froze (its first linked run started).

    runs_started is how many evidence runs had started when it was made; an amendment with
    runs_started > 0 makes later verdicts exploratory and counts as post-hoc in maturity.
    """

    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="amendments")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    field = models.CharField(max_length=40)
    old_value = models.JSONField(null=True, blank=True)
    new_value = models.JSONField(null=True, blank=True)
    reason = models.TextField()
    runs_started = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["card", "created_at"])]

    def __str__(self) -> str:
        return f"{self.card_id} {self.field}: {self.old_value} -> {self.new_value}"


# --- MLflow datasets, logged models and model registry (mlmodels) ------------------------------


class RunDataset(models.Model):
    """A dataset a run consumed (MLflow log_inputs), with the input's tags (mlflow.data.context=...)."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=500)
    digest = models.CharField(max_length=36)
    source_type = models.CharField(max_length=36)
    source = models.TextField()
    schema = models.TextField(blank=True)
    profile = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [models.UniqueConstraint(fields=["run", "name", "digest"], name="uniq_run_dataset")]

    def __str__(self) -> str:
        return f"{self.name} ({self.digest})"

    @property
    def context(self) -> str:
        """What the run used it for: MLflow's mlflow.data.context input tag (training, eval...)."""
        return str((self.tags or {}).get("mlflow.data.context", ""))


class LoggedModelStatus(models.TextChoices):
    PENDING = "LOGGED_MODEL_PENDING", "Pending"
    READY = "LOGGED_MODEL_READY", "Ready"
    FAILED = "LOGGED_MODEL_UPLOAD_FAILED", "Upload failed"


class LoggedModel(models.Model):
    """An MLflow 3 logged model: a model's files (artifacts under artifact_location), params,
    tags and metrics, usually produced by a source run."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="logged_models")
    experiment = models.ForeignKey(TrackingExperiment, on_delete=models.CASCADE, related_name="logged_models")
    model_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=500)
    source_run = models.ForeignKey(
        Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="logged_models"
    )
    status = models.CharField(max_length=32, choices=LoggedModelStatus.choices, default=LoggedModelStatus.PENDING)
    status_message = models.TextField(blank=True)
    model_type = models.CharField(max_length=500, blank=True)
    artifact_location = models.CharField(max_length=1000)
    params = models.JSONField(default=dict, blank=True)
    tags = models.JSONField(default=dict, blank=True)
    lifecycle_stage = models.CharField(max_length=10, default="active")
    creator = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "model_id"]
        indexes = [models.Index(fields=["team", "experiment", "created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.model_id})"


class LoggedModelMetric(models.Model):
    """A metric point logged against a model (log_metric(..., model_id=...)); NaN as for run metrics,
    +/-Inf clamped to the largest double as MLflow's SQL store does."""

    model = models.ForeignKey(LoggedModel, on_delete=models.CASCADE, related_name="metrics")
    run_external_id = models.CharField(max_length=64, blank=True)
    key = models.CharField(max_length=250)
    value = models.FloatField()
    is_nan = models.BooleanField(default=False)
    step = models.BigIntegerField(default=0)
    timestamp = models.BigIntegerField()
    dataset_name = models.CharField(max_length=500, blank=True)
    dataset_digest = models.CharField(max_length=36, blank=True)

    class Meta:
        ordering = ["key", "step", "timestamp"]
        constraints = [
            models.UniqueConstraint(
                fields=["model", "key", "step", "timestamp", "run_external_id", "dataset_name", "dataset_digest"],
                name="uniq_logged_model_metric",
            )
        ]

    def __str__(self) -> str:
        return f"{self.model_id} {self.key}@{self.step}"


class RunModelIO(models.Model):
    """A logged model a run used (input) or produced (output, at a step): MLflow's RunInputs.model_inputs
    and RunOutputs.model_outputs."""

    INPUT = "input"
    OUTPUT = "output"

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="model_io")
    model = models.ForeignKey(LoggedModel, on_delete=models.CASCADE, related_name="run_io")
    direction = models.CharField(max_length=6, choices=[(INPUT, "Input"), (OUTPUT, "Output")])
    step = models.BigIntegerField(default=0)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["run", "model", "direction"], name="uniq_run_model_io")]

    def __str__(self) -> str:
        return f"{self.run_id} {self.direction} {self.model_id}"


class RegisteredModel(models.Model):
    """A named model in the team's registry; its versions point at logged models or run artifacts."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="registered_models")
    name = models.CharField(max_length=256)
    description = models.TextField(blank=True)
    tags = models.JSONField(default=dict, blank=True)
    # alias -> version number (MLflow: an alias names exactly one version of one model).
    aliases = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["team", "name"], name="uniq_registered_model")]

    def __str__(self) -> str:
        return self.name


class ModelVersion(models.Model):
    registered_model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True)
    source = models.CharField(max_length=1000)
    run_external_id = models.CharField(max_length=64, blank=True)
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions")
    logged_model = models.ForeignKey(
        LoggedModel, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_versions"
    )
    run_link = models.CharField(max_length=500, blank=True)
    storage_location = models.CharField(max_length=1000, blank=True)
    status = models.CharField(max_length=20, default="READY")
    status_message = models.TextField(blank=True)
    current_stage = models.CharField(max_length=20, default="None")
    tags = models.JSONField(default=dict, blank=True)
    user_id = models.CharField(max_length=150, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["registered_model", "-version"]
        constraints = [models.UniqueConstraint(fields=["registered_model", "version"], name="uniq_model_version")]

    def __str__(self) -> str:
        return f"{self.registered_model_id} v{self.version}"


# --- Teamwork: comments, watches, notifications, evidence snapshots -----------------------------


class TeamworkSettings(models.Model):
    """Team settings for board polish, kept beside Team so other areas' Team edits never collide."""

    team = models.OneToOneField(Team, on_delete=models.CASCADE, related_name="teamwork")
    wip_strict = models.BooleanField(
        default=False, help_text="Ask before a card is dropped onto a column already at its WIP limit."
    )
    archive_done_after_days = models.PositiveIntegerField(
        null=True, blank=True, default=14, help_text="Archive Done cards after this many days; empty keeps them."
    )

    def __str__(self) -> str:
        return f"Teamwork settings of {self.team_id}"


class CardArchive(models.Model):
    """A Done card taken off the board after its age limit; deleting the row restores it."""

    card = models.OneToOneField(Card, on_delete=models.CASCADE, related_name="archive")
    archived_at = models.DateTimeField(default=timezone.now)
    archived_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)

    def __str__(self) -> str:
        return f"{self.card_id} archived"


class Comment(models.Model):
    """A Markdown comment on a card or a run (exactly one of them)."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="comments")
    card = models.ForeignKey(Card, null=True, blank=True, on_delete=models.CASCADE, related_name="comments")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="comments")
    author = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+")
    body = models.TextField()
    mentions = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="mentioned_in")
    created_at = models.DateTimeField(default=timezone.now)
    edited_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(card__isnull=False, run__isnull=True) | Q(card__isnull=True, run__isnull=False)),
                name="comment_on_card_or_run",
            )
        ]
        indexes = [models.Index(fields=["card", "created_at"]), models.Index(fields=["run", "created_at"])]

    def __str__(self) -> str:
        return f"Comment {self.pk} by {self.author_id}"


class CommentRevision(models.Model):
    """The text a comment had before an edit (its edit history)."""

    comment = models.ForeignKey(Comment, on_delete=models.CASCADE, related_name="revisions")
    body = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"Revision of comment {self.comment_id}"


class Watch(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="watches")
    card = models.ForeignKey(Card, on_delete=models.CASCADE, related_name="watches")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "card"], name="uniq_watch")]

    def __str__(self) -> str:
        return f"{self.user_id} watches {self.card_id}"


class NotificationKind(models.TextChoices):
    MENTION = "mention", "Mentioned you"
    COMMENT = "comment", "New comment"
    VERDICT_PROPOSED = "verdict_proposed", "Verdict proposed"
    VERDICT_DECIDED = "verdict_decided", "Verdict decided"
    RUN_FAILED = "run_failed", "Linked run failed"
    CARD_STUCK = "card_stuck", "Your card is stuck"


class Notification(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notifications")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=20, choices=NotificationKind.choices)
    card = models.ForeignKey(Card, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    comment = models.ForeignKey(Comment, null=True, blank=True, on_delete=models.CASCADE, related_name="+")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    text = models.CharField(max_length=300)
    # One notification per (user, event): a retried task or a repeated signal adds nothing.
    dedupe_key = models.CharField(max_length=120)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    # Set when the digest task has handled it (sent or skipped by preference).
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["user", "dedupe_key"], name="uniq_notification")]
        indexes = [
            models.Index(fields=["user", "read_at"]),
            models.Index(fields=["user", "delivered_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.user_id}"


class NotificationPreference(models.Model):
    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notification_pref")
    email = models.BooleanField(default=True)
    webhook_url = models.URLField(blank=True, help_text="Personal Slack-compatible incoming webhook.")
    # Kinds the user does not want at all (in-app, email or webhook).
    muted_kinds = models.JSONField(default=list, blank=True)

    def __str__(self) -> str:
        return f"Notification preferences of {self.user_id}"


class EvidenceSnapshot(models.Model):
    """Frozen bundle of what a verdict was decided on; stored once and never changed."""

    card = models.OneToOneField(Card, on_delete=models.CASCADE, related_name="evidence_snapshot")
    hypothesis = models.ForeignKey(Card, null=True, on_delete=models.SET_NULL, related_name="+")
    proposal = models.ForeignKey(VerdictProposal, null=True, on_delete=models.SET_NULL, related_name="+")
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"Evidence for {self.card_id}"

    def save(self, *args: object, **kwargs: object) -> None:
        if self.pk is not None and not kwargs.get("force_insert"):
            raise ValueError("Evidence snapshots are immutable.")
        super().save(*args, **kwargs)  # type: ignore[arg-type]


# --- Artifacts ---------------------------------------------------------------------------------


class ArtifactFile(models.Model):
    """Index of one stored artifact (the bytes are in the artifact storage under `path`).

    Listings, the run page's tree and the card page's images read this table, so they cost a
    fixed number of queries on any storage backend instead of one storage round-trip per run."""

    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="artifact_files")
    run = models.ForeignKey(Run, null=True, blank=True, on_delete=models.SET_NULL, related_name="artifact_files")
    path = models.CharField(max_length=1024, unique=True, help_text="Storage key: teams/<team id>/...")
    size = models.BigIntegerField()
    content_type = models.CharField(max_length=100, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["run", "path"]), models.Index(fields=["team", "path"])]

    def __str__(self) -> str:
        return self.path


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
