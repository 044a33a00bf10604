"""ML process maturity: the model definitions (no database access here).

Two views of the same grid, after Amershi et al. 2019, "Software Engineering for Machine
Learning: A Case Study" (ICSE-SEIP, Microsoft): nine workflow stages x six maturity
attributes, each cell on a 1-5 scale.

* Self-assessed: members answer a Likert questionnaire (1-5 per stage x attribute). The
  Activity Maturity Index (AMI) is the mean of the answers, per stage and overall.
* Evidence: shares computed from what mlboard actually holds (runs, hypotheses, experiments,
  verdicts), each scored on the same 1-5 scale and mapped to the cells it informs
  (EVIDENCE_METRICS below is the documented mapping). A cell's evidence score is the mean of
  the scores of its metrics that have enough data; cells whose metrics all lack data are
  "insufficient evidence" (never zero), cells no metric informs are "not observable".

On top of the evidence, two published level scales are computed from explicit gates:
Google's MLOps levels 0-2 and Azure's MLOps maturity model 0-4. A level is reached when all
gates of that level and every level below it are met; a gate whose metric lacks data is not
met and says so.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# --- Grid -----------------------------------------------------------------------------------------

STAGES: tuple[tuple[str, str, str], ...] = (
    ("model_requirements", "Model requirements", "Deciding which features are feasible with ML and which models fit."),
    ("data_collection", "Data collection", "Finding, integrating and versioning the data sets."),
    ("data_cleaning", "Data cleaning", "Removing inaccurate or noisy records from the data."),
    ("data_labeling", "Data labeling", "Assigning ground-truth labels to the records."),
    ("feature_engineering", "Feature engineering", "Extracting and selecting the features the model uses."),
    ("model_training", "Model training", "Training and tuning models on the prepared data."),
    ("model_evaluation", "Model evaluation", "Measuring models against metrics, baselines and criteria."),
    ("model_deployment", "Model deployment", "Shipping the model into the product or a service."),
    ("model_monitoring", "Model monitoring", "Watching the deployed model and retraining it when needed."),
)

ATTRIBUTES: tuple[tuple[str, str, str], ...] = (
    ("goals_defined", "Goals defined", "The work in this stage has clear, agreed goals."),
    ("consistent", "Consistent", "The stage is carried out the same way every time."),
    ("documented", "Documented", "How the stage is done, and what it produced, is written down."),
    ("automated", "Automated", "The stage runs without manual steps."),
    ("measured_tracked", "Measured and tracked", "The stage's outcomes are measured and tracked over time."),
    ("continuously_improved", "Continuously improved", "The stage is reviewed and improved routinely."),
)

STAGE_KEYS: tuple[str, ...] = tuple(s[0] for s in STAGES)
ATTRIBUTE_KEYS: tuple[str, ...] = tuple(a[0] for a in ATTRIBUTES)
STAGE_LABELS: dict[str, str] = {s[0]: s[1] for s in STAGES}
ATTRIBUTE_LABELS: dict[str, str] = {a[0]: a[1] for a in ATTRIBUTES}

LIKERT_MIN, LIKERT_MAX = 1, 5

# What each answer means, per attribute; the questionnaire shows these next to every choice.
LEVEL_WORDING: dict[str, tuple[str, str, str, str, str]] = {
    "goals_defined": (
        "No goals: work starts without a stated aim.",
        "Ad hoc: goals live in people's heads, or exist for some work only.",
        "Defined: goals are written down for most work.",
        "Agreed: every piece of work has written, agreed goals before it starts.",
        "Quantified: goals carry measurable success criteria, set up front and revisited.",
    ),
    "consistent": (
        "Different every time; depends on who does it.",
        "Some shared habits, but the steps vary between people.",
        "A common procedure is followed most of the time.",
        "Everyone follows the same procedure; deviations are rare and noted.",
        "Standardised and enforced (shared code, templates); results are repeatable.",
    ),
    "documented": (
        "Nothing is written down.",
        "Scattered notes that are hard to find or out of date.",
        "The main steps and outputs are documented and findable.",
        "Documented and kept current; a new member can follow it alone.",
        "Records are produced automatically as the work happens.",
    ),
    "automated": (
        "Entirely manual.",
        "Some scripts, started and glued together by hand.",
        "Scripted end to end, started on request.",
        "Runs automatically on triggers (schedule, new data, commit).",
        "Fully automated with built-in checks; people handle only exceptions.",
    ),
    "measured_tracked": (
        "Not measured.",
        "Measured occasionally; results are not kept.",
        "Key measures are recorded for most work.",
        "Measures are tracked over time and compared with baselines.",
        "Tracked continuously; dashboards or alerts drive action.",
    ),
    "continuously_improved": (
        "Never revisited.",
        "Improved only after something breaks.",
        "Reviewed now and then; some improvements are made.",
        "Reviewed regularly (e.g. retrospectives) and improvements are tracked.",
        "Improvement is routine: measurements feed back into the process.",
    ),
}
LEVEL_SHORT: tuple[str, ...] = ("Not at all", "Ad hoc", "Partly", "Mostly", "Fully")

# --- Evidence -------------------------------------------------------------------------------------

# Samples below these sizes are "insufficient evidence": a share of 2 runs says nothing.
MIN_RUNS = 10
MIN_CARDS = 3
MIN_DECISIONS = 3
WINDOW_DAYS = 90
# Default relative tolerance within which repeated runs of one configuration must agree
# (settings.MATURITY_REPRO_TOLERANCE and Team.maturity_repro_tolerance override it).
REPRO_REL_TOL = 0.02
# Decision latency scores 5 at or under a day and 1 at or over two weeks (log scale between).
LATENCY_BEST_HOURS = 24.0
LATENCY_WORST_HOURS = 24.0 * 14

# Gap flags between self-assessed and evidence cells.
GAP_ABS = 1.5
GAP_SELF_HIGH = 4.0
GAP_EVIDENCE_LOW = 2.5

Cell = tuple[str, str]
SINGULAR = {"runs": "run", "finished runs": "finished run", "hypotheses": "hypothesis",
            "experiments": "experiment", "decisions": "decision"}


@dataclass(frozen=True)
class EvidenceMetric:
    key: str
    label: str
    question: str  # what the number is, in one sentence
    sample: str  # "runs", "finished runs", "hypotheses", "experiments", "decisions"
    min_sample: int
    cells: tuple[Cell, ...]
    advice: str  # the concrete step that improves it
    unit: str = "share"  # "share" (0..1) or "hours"
    target: float = 1.0  # share that scores 5; lower targets for things not every run needs


# The mapping from evidence to grid cells (stage, attribute). Only cells the data can speak for
# are listed; data labeling, for example, leaves no trace in mlboard and stays "not observable".
EVIDENCE_METRICS: tuple[EvidenceMetric, ...] = (
    EvidenceMetric(
        "code_version", "Code version recorded", "Share of runs that record the commit of the code they ran.",
        "runs", MIN_RUNS,
        (("feature_engineering", "documented"), ("feature_engineering", "consistent"),
         ("model_training", "documented")),
        "Log the git commit on every run (MLflow does it for git checkouts; or set tag “mlboard.code_version”).",
    ),
    EvidenceMetric(
        "data_version", "Data version recorded", "Share of runs that record the version of the data they used.",
        "runs", MIN_RUNS,
        (("data_collection", "documented"), ("data_collection", "consistent"), ("data_cleaning", "documented"),
         ("data_cleaning", "consistent"), ("model_training", "documented")),
        "Version the training data (DVC, lakeFS, a dated snapshot) and set tag “mlboard.data_version” on each run.",
    ),
    EvidenceMetric(
        "seed", "Seed recorded", "Share of runs that record their random seed.",
        "runs", MIN_RUNS,
        (("model_training", "consistent"),),
        "Fix and log the random seed (param “seed”) in the training entry point.",
    ),
    EvidenceMetric(
        "environment", "Environment recorded", "Share of runs that record their software environment.",
        "runs", MIN_RUNS,
        (("model_training", "documented"), ("model_training", "consistent"), ("model_deployment", "consistent")),
        "Record the environment on each run (tags “mlboard.env.*”, e.g. image digest or lock-file hash).",
    ),
    EvidenceMetric(
        "metrics_logged", "Metrics logged", "Share of runs that logged at least one metric.",
        "runs", MIN_RUNS,
        (("model_training", "measured_tracked"), ("model_evaluation", "measured_tracked")),
        "Log evaluation metrics from every run, not only from the ones that look promising.",
    ),
    EvidenceMetric(
        "automated", "Automated runs", "Share of runs started by a schedule or by CI rather than by hand.",
        "runs", MIN_RUNS,
        (("model_training", "automated"), ("model_evaluation", "automated")),
        "Start training from a pipeline (scheduler or CI) and tag runs “mlboard.trigger=scheduled” or “ci”.",
        target=0.8,
    ),
    EvidenceMetric(
        "scheduled", "Continuous training", "Share of runs started by a schedule (continuous training).",
        "runs", MIN_RUNS,
        (("model_monitoring", "automated"), ("model_monitoring", "continuously_improved")),
        "Retrain on a schedule or on new data and tag those runs “mlboard.trigger=scheduled”.",
        target=0.5,
    ),
    EvidenceMetric(
        "ci", "CI-triggered runs", "Share of runs started by CI (pipeline code is built and tested on change).",
        "runs", MIN_RUNS,
        (("model_deployment", "automated"),),
        "Run the training pipeline from CI on every change and tag those runs “mlboard.trigger=ci”.",
        target=0.5,
    ),
    EvidenceMetric(
        "reproduced", "Reproduced runs",
        "Share of finished runs whose code, data and params were run with at least two seeds "
        "and whose results agree within the team's tolerance.",
        "finished runs", MIN_RUNS,
        (("model_training", "consistent"), ("model_evaluation", "consistent")),
        "Repeat promising configurations with a second seed before deciding on them.",
        target=0.5,
    ),
    EvidenceMetric(
        "criteria_first", "Criteria before runs",
        "Share of hypotheses whose success criteria were set before their first run started "
        "and not amended after it.",
        "hypotheses", MIN_CARDS,
        (("model_requirements", "goals_defined"), ("model_requirements", "documented"),
         ("model_evaluation", "goals_defined")),
        "Write the metric, direction and threshold on the hypothesis before linking its first run, "
        "and leave them unchanged once runs are in.",
    ),
    EvidenceMetric(
        "baseline", "Experiments with a baseline",
        "Share of experiments with a baseline value or a baseline run.",
        "experiments", MIN_CARDS,
        (("model_requirements", "measured_tracked"), ("model_evaluation", "goals_defined"),
         ("model_evaluation", "consistent"), ("model_evaluation", "measured_tracked")),
        "Give every experiment a baseline value or link a baseline run before comparing results.",
    ),
    EvidenceMetric(
        "decision_latency", "Decision latency",
        "Median hours from the last run finishing to the verdict being decided.",
        "decisions", MIN_DECISIONS,
        (("model_requirements", "continuously_improved"), ("model_evaluation", "continuously_improved")),
        "Review finished runs daily (the standup) and confirm or override the proposed verdict the same day.",
        unit="hours",
    ),
)
METRICS_BY_KEY: dict[str, EvidenceMetric] = {m.key: m for m in EVIDENCE_METRICS}


def cell_metrics() -> dict[Cell, tuple[str, ...]]:
    """Inverse mapping: which metrics inform each cell (empty tuple: not observable)."""
    mapping: dict[Cell, list[str]] = {(s, a): [] for s in STAGE_KEYS for a in ATTRIBUTE_KEYS}
    for metric in EVIDENCE_METRICS:
        for cell in metric.cells:
            mapping[cell].append(metric.key)
    return {cell: tuple(keys) for cell, keys in mapping.items()}


CELL_METRICS = cell_metrics()


def score_share(share: float, *, target: float = 1.0) -> float:
    """Share 0..1 to the 1-5 scale; reaching `target` scores 5."""
    ratio = max(0.0, min(1.0, share / target)) if target > 0 else 1.0
    return round(1.0 + 4.0 * ratio, 2)


def score_latency(hours: float) -> float:
    """Median decision latency to 1-5: <= a day is 5, >= two weeks is 1, log-linear in between."""
    if hours <= LATENCY_BEST_HOURS:
        return 5.0
    if hours >= LATENCY_WORST_HOURS:
        return 1.0
    span = math.log(LATENCY_WORST_HOURS / LATENCY_BEST_HOURS)
    return round(5.0 - 4.0 * math.log(hours / LATENCY_BEST_HOURS) / span, 2)


@dataclass
class MetricValue:
    """One evidence metric as measured: value is a share (0..1) or hours; None without data."""

    key: str
    sample: int
    count: int | None = None  # numerator for shares
    value: float | None = None

    @property
    def definition(self) -> EvidenceMetric:
        return METRICS_BY_KEY[self.key]

    @property
    def sufficient(self) -> bool:
        return self.value is not None and self.sample >= self.definition.min_sample

    @property
    def score(self) -> float | None:
        if not self.sufficient or self.value is None:
            return None
        if self.definition.unit == "hours":
            return score_latency(self.value)
        return score_share(self.value, target=self.definition.target)

    @property
    def display(self) -> str:
        if self.value is None:
            return "no data"
        if self.definition.unit == "hours":
            return f"{self.value:.1f} h" if self.value < 48 else f"{self.value / 24:.1f} d"
        return f"{self.value * 100:.0f}%"

    @property
    def shortfall(self) -> str:
        """Why the metric is insufficient, e.g. '4 runs (needs 10)'."""
        d = self.definition
        noun = SINGULAR.get(d.sample, d.sample) if self.sample == 1 else d.sample
        return f"{self.sample} {noun} (needs {d.min_sample})"

    def as_dict(self) -> dict[str, Any]:
        return {"sample": self.sample, "count": self.count, "value": self.value, "score": self.score,
                "sufficient": self.sufficient}


def share(key: str, count: int, sample: int) -> MetricValue:
    return MetricValue(key=key, sample=sample, count=count, value=(count / sample) if sample else None)


@dataclass
class CellScore:
    stage: str
    attribute: str
    score: float | None
    state: str  # "scored", "insufficient", "not_observable" (evidence) / "scored", "unanswered" (self)
    detail: str = ""
    metrics: tuple[str, ...] = ()


def evidence_grid(metrics: Mapping[str, MetricValue]) -> dict[Cell, CellScore]:
    grid: dict[Cell, CellScore] = {}
    for (stage, attribute), keys in CELL_METRICS.items():
        if not keys:
            grid[stage, attribute] = CellScore(stage, attribute, None, "not_observable",
                                               "mlboard holds no data about this.")
            continue
        scored = [metrics[k] for k in keys if metrics[k].sufficient]
        if not scored:
            short = "; ".join(f"{metrics[k].definition.label}: {metrics[k].shortfall}" for k in keys)
            grid[stage, attribute] = CellScore(stage, attribute, None, "insufficient",
                                               f"Insufficient evidence — {short}.", keys)
            continue
        value = round(statistics.fmean(m.score for m in scored if m.score is not None), 2)
        detail = "; ".join(f"{m.definition.label} {m.display} → {m.score:.1f}" for m in scored)
        grid[stage, attribute] = CellScore(stage, attribute, value, "scored", detail, keys)
    return grid


def grid_index(grid: Mapping[Cell, CellScore]) -> float | None:
    scores = [c.score for c in grid.values() if c.score is not None]
    return round(statistics.fmean(scores), 2) if scores else None


# --- Questionnaire (AMI) --------------------------------------------------------------------------

def answers_errors(answers: Any) -> dict[str, str]:
    """Every problem with a questionnaire, keyed 'stage.attribute' (empty when valid)."""
    if not isinstance(answers, Mapping):
        return {"answers": "Answers must map each stage to its attributes."}
    errors: dict[str, str] = {}
    for stage in answers:
        if stage not in STAGE_KEYS:
            errors[str(stage)] = f"Unknown stage {stage!r}."
    for stage in STAGE_KEYS:
        row = answers.get(stage)
        if row is not None and not isinstance(row, Mapping):
            errors[stage] = f"{STAGE_LABELS[stage]}: answers must map attributes to 1-5."
            continue
        row = row or {}
        for attribute in row:
            if attribute not in ATTRIBUTE_KEYS:
                errors[f"{stage}.{attribute}"] = f"Unknown attribute {attribute!r}."
        for attribute in ATTRIBUTE_KEYS:
            where = f"{STAGE_LABELS[stage]} — {ATTRIBUTE_LABELS[attribute]}"
            value = row.get(attribute)
            if value is None or value == "":
                errors[f"{stage}.{attribute}"] = f"{where}: choose an answer from 1 to 5."
            elif isinstance(value, bool) or not isinstance(value, int) or not LIKERT_MIN <= value <= LIKERT_MAX:
                errors[f"{stage}.{attribute}"] = f"{where}: {value!r} is not between 1 and 5."
    return errors


def ami_by_stage(answers: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """Activity Maturity Index per stage: mean of its six answers."""
    return {stage: round(statistics.fmean(answers[stage][a] for a in ATTRIBUTE_KEYS), 2) for stage in STAGE_KEYS}


def ami_overall(answers: Mapping[str, Mapping[str, int]]) -> float:
    """Overall AMI: mean of all 54 answers."""
    return round(statistics.fmean(answers[s][a] for s in STAGE_KEYS for a in ATTRIBUTE_KEYS), 2)


def self_grid(answer_sets: list[Mapping[str, Mapping[str, int]]]) -> dict[Cell, CellScore]:
    """Team view of the questionnaire: each cell is the mean over respondents."""
    grid: dict[Cell, CellScore] = {}
    for stage in STAGE_KEYS:
        for attribute in ATTRIBUTE_KEYS:
            values = [a[stage][attribute] for a in answer_sets]
            if values:
                detail = f"Mean of {len(values)} answer{'s' if len(values) != 1 else ''}: " + ", ".join(
                    str(v) for v in values)
                grid[stage, attribute] = CellScore(stage, attribute, round(statistics.fmean(values), 2),
                                                   "scored", detail)
            else:
                grid[stage, attribute] = CellScore(stage, attribute, None, "unanswered", "No answers yet.")
    return grid


@dataclass
class Gap:
    stage: str
    attribute: str
    self_score: float
    evidence_score: float
    reason: str

    @property
    def diff(self) -> float:
        return round(self.self_score - self.evidence_score, 2)

    @property
    def stage_label(self) -> str:
        return STAGE_LABELS[self.stage]

    @property
    def attribute_label(self) -> str:
        return ATTRIBUTE_LABELS[self.attribute]


def gaps(self_cells: Mapping[Cell, CellScore], evidence_cells: Mapping[Cell, CellScore]) -> list[Gap]:
    found: list[Gap] = []
    for cell, mine in self_cells.items():
        ev = evidence_cells[cell]
        if mine.score is None or ev.score is None:
            continue
        if mine.score >= GAP_SELF_HIGH and ev.score <= GAP_EVIDENCE_LOW:
            reason = "Self-assessed high, but the evidence is low."
        elif abs(mine.score - ev.score) >= GAP_ABS:
            reason = ("Self-assessment is well above the evidence." if mine.score > ev.score
                      else "The evidence is well above the self-assessment.")
        else:
            continue
        found.append(Gap(cell[0], cell[1], mine.score, ev.score, reason))
    found.sort(key=lambda g: -abs(g.diff))
    return found


# --- Reproduction ---------------------------------------------------------------------------------

def repeats_agree(values: Sequence[float], tolerance: float) -> bool:
    """Repeated results agree when their range is within `tolerance` of the largest magnitude.

    Relative to max |x| rather than the mean, so a further repeat inside the range already seen
    can never turn agreement into disagreement. NaN or Inf never agrees."""
    if len(values) < 2 or not all(math.isfinite(v) for v in values):
        return False
    return max(values) - min(values) <= tolerance * max(abs(v) for v in values)


@dataclass(frozen=True)
class RunRecord:
    """A finished run with code and data versions, as the reproduction check sees it."""

    run_id: int
    config: tuple[Any, ...]  # code version, data version, params other than the seed
    seed: int | None
    metrics: Mapping[str, float]  # latest values; NaN for NaN
    primary: frozenset[str] = frozenset()  # metric keys of the hypotheses the run is evidence for


def reproduced_runs(records: Iterable[RunRecord], tolerance: float) -> set[int]:
    """Runs of configurations that ran with at least two seeds and whose results agree.

    Compared on the metric the configuration's hypotheses are judged on, or, for runs not linked
    to a hypothesis, on every metric all its runs logged. Every run of the configuration must
    agree (a same-seed duplicate too), and each compared metric must be logged by all of them."""
    groups: dict[tuple[Any, ...], list[RunRecord]] = defaultdict(list)
    for record in records:
        groups[record.config].append(record)
    out: set[int] = set()
    for members in groups.values():
        if len({r.seed for r in members} - {None}) < 2:
            continue
        keys: set[str] = set().union(*(r.primary for r in members))
        if not keys:
            keys = set.intersection(*(set(r.metrics) for r in members))
        if not keys:
            continue
        if all(all(k in r.metrics for r in members) and repeats_agree([r.metrics[k] for r in members], tolerance)
               for k in keys):
            out.update(r.run_id for r in members)
    return out


# --- Weekly evidence ------------------------------------------------------------------------------

@dataclass
class WeekTally:
    """What one local calendar week holds; gates are judged week by week from these counts."""

    runs: int = 0
    code_version: int = 0
    data_version: int = 0
    seed: int = 0
    environment: int = 0
    metrics_logged: int = 0
    automated: int = 0
    scheduled: int = 0
    ci: int = 0
    finished: int = 0
    reproduced: int = 0
    hypotheses: int = 0  # hypotheses whose first run started this week
    criteria_first: int = 0
    experiments: int = 0  # experiments created this week
    baseline: int = 0
    decision_hours: list[float] = field(default_factory=list)

    def metrics(self) -> dict[str, MetricValue]:
        out = {key: share(key, getattr(self, key), self.runs) for key in RUN_SHARE_KEYS}
        out["reproduced"] = share("reproduced", self.reproduced, self.finished)
        out["criteria_first"] = share("criteria_first", self.criteria_first, self.hypotheses)
        out["baseline"] = share("baseline", self.baseline, self.experiments)
        hours = self.decision_hours
        out["decision_latency"] = MetricValue("decision_latency", sample=len(hours),
                                              value=round(statistics.median(hours), 2) if hours else None)
        return out


RUN_SHARE_KEYS = ("code_version", "data_version", "seed", "environment", "metrics_logged", "automated",
                  "scheduled", "ci")


def window_metrics(weeks: Iterable[WeekTally]) -> dict[str, MetricValue]:
    """The whole window's metrics: the weekly tallies added up."""
    total = WeekTally()
    for week in weeks:
        for name in (*RUN_SHARE_KEYS, "runs", "finished", "reproduced", "hypotheses", "criteria_first",
                     "experiments", "baseline"):
            setattr(total, name, getattr(total, name) + getattr(week, name))
        total.decision_hours.extend(week.decision_hours)
    return total.metrics()


# --- Levels ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Gate:
    """A practice the level needs, judged per week: a week shows it with at least `min_count`
    matching items (runs, hypotheses, experiments, decisions) and, for shares, at least `threshold`
    of that week's items; latency gates need the week's median at most `threshold` hours.

    Counts are absolute, so more good evidence never takes a week below a gate, and the level needs
    the practice in several weeks (Level.weeks), so one sitting cannot reach it."""

    key: str
    metric: str
    op: str  # ">=" for shares and counts, "<=" for latency
    threshold: float  # share (0 for a pure count) or hours
    label: str
    min_count: int = 1

    def describe_threshold(self) -> str:
        if METRICS_BY_KEY[self.metric].unit == "hours":
            return f"median ≤ {self.threshold:g} h in a week with decisions"
        noun = METRICS_BY_KEY[self.metric].sample
        if self.threshold <= 0:
            return f"≥ {self.min_count} a week"
        return f"≥ {self.threshold * 100:.0f}% of a week's {noun}, at least {self.min_count}"

    def week_meets(self, value: MetricValue) -> bool:
        if value.value is None:
            return False
        if self.op == "<=":
            return value.sample >= self.min_count and value.value <= self.threshold
        return (value.count or 0) >= self.min_count and value.value >= self.threshold


@dataclass(frozen=True)
class Level:
    number: int
    name: str
    summary: str
    gates: tuple[Gate, ...] = ()
    weeks: int = 0  # weeks (local calendar weeks in the window) in which every gate must be shown


@dataclass(frozen=True)
class LevelModel:
    key: str
    name: str
    source: str
    levels: tuple[Level, ...]


GOOGLE_MLOPS = LevelModel(
    "google", "Google MLOps levels", "Google Cloud, “MLOps: Continuous delivery and automation pipelines in ML”",
    (
        Level(0, "Manual process", "Data science is manual and script-driven; models are trained by hand."),
        Level(1, "ML pipeline automation", "The training pipeline runs automatically (continuous training), "
              "with metadata tracked and models validated against criteria.", (
            Gate("g1_automated", "automated", ">=", 0.5, "Training runs come from a pipeline, not by hand", 3),
            Gate("g1_ct", "scheduled", ">=", 0, "Continuous training: runs retrain on a schedule", 1),
            Gate("g1_code", "code_version", ">=", 0.9, "Metadata: code version on runs", 3),
            Gate("g1_data", "data_version", ">=", 0.9, "Metadata: data version on runs", 3),
            Gate("g1_validation", "baseline", ">=", 0.8, "Model validation against a baseline", 1),
        ), weeks=3),
        Level(2, "CI/CD pipeline automation", "The pipeline itself is built, tested and deployed by CI/CD; "
              "runs are reproducible and decisions follow quickly.", (
            Gate("g2_ci", "ci", ">=", 0, "CI builds and runs the pipeline on change", 1),
            Gate("g2_env", "environment", ">=", 0.9, "Environment recorded for every run", 3),
            Gate("g2_repro", "reproduced", ">=", 0, "Results are reproduced (runs of agreeing seeds)", 2),
            Gate("g2_latency", "decision_latency", "<=", 48, "Decisions follow runs within two days", 1),
        ), weeks=4),
    ),
)

AZURE_MLOPS = LevelModel(
    "azure", "Azure MLOps maturity",
    "Microsoft Azure Architecture Center, “Machine Learning operations maturity model”",
    (
        Level(0, "No MLOps", "Hard to manage the full model lifecycle; manual builds, training and deployment."),
        Level(1, "DevOps but no MLOps", "Code is versioned and builds are repeatable, but training is manual.", (
            Gate("a1_code", "code_version", ">=", 0.8, "Code under version control, recorded on runs", 3),
            Gate("a1_env", "environment", ">=", 0.5, "Build environment recorded", 3),
        ), weeks=2),
        Level(2, "Automated training", "Training is automated, fully traceable and centrally tracked.", (
            Gate("a2_automated", "automated", ">=", 0.5, "Training runs are automated", 3),
            Gate("a2_data", "data_version", ">=", 0.9, "Data version on runs", 3),
            Gate("a2_env", "environment", ">=", 0.9, "Environment recorded for every run", 3),
            Gate("a2_seed", "seed", ">=", 0.8, "Seeds recorded", 3),
            Gate("a2_metrics", "metrics_logged", ">=", 0.9, "Metrics tracked centrally", 3),
        ), weeks=3),
        Level(3, "Automated model deployment", "Releases go through CI/CD; models are compared with a "
              "baseline against criteria agreed beforehand.", (
            Gate("a3_ci", "ci", ">=", 0, "CI runs the pipeline", 1),
            Gate("a3_baseline", "baseline", ">=", 0.8, "Experiments compared with a baseline", 1),
            Gate("a3_criteria", "criteria_first", ">=", 0.8, "Success criteria set before the first run", 1),
            Gate("a3_repro", "reproduced", ">=", 0, "Results are reproduced (runs of agreeing seeds)", 2),
        ), weeks=4),
        Level(4, "Full MLOps automated operations", "The system retrains itself on triggers and the team "
              "acts on results quickly.", (
            Gate("a4_ct", "scheduled", ">=", 0, "Continuous training on a schedule", 2),
            Gate("a4_repro", "reproduced", ">=", 0, "Results are reproduced every week", 4),
            Gate("a4_latency", "decision_latency", "<=", 24, "Decisions follow runs within a day", 1),
        ), weeks=6),
    ),
)

LEVEL_MODELS: tuple[LevelModel, ...] = (GOOGLE_MLOPS, AZURE_MLOPS)


@dataclass
class GateResult:
    gate: Gate
    state: str  # "met", "unmet", "insufficient"
    metric: MetricValue  # over the whole window, for display
    weeks_met: int = 0
    weeks_needed: int = 0
    weeks_with_data: int = 0

    @property
    def current(self) -> str:
        return f"shown in {self.weeks_met} of {self.weeks_needed} weeks needed (window: {self.metric.display})"

    @property
    def shortfall(self) -> str:
        noun = "week" if self.weeks_with_data == 1 else "weeks"
        return f"{self.weeks_with_data} {noun} with {self.metric.definition.sample} (needs {self.weeks_needed})"

    @property
    def next_step(self) -> str:
        d = self.metric.definition
        if self.state == "insufficient":
            return (f"Insufficient evidence for “{self.gate.label}”: {self.shortfall}. "
                    f"Keep logging {d.sample} week after week so this can be judged.")
        return (f"{self.gate.label}: {self.gate.describe_threshold()} in {self.weeks_needed} weeks; "
                f"now {self.weeks_met}. {d.advice}")


@dataclass
class LevelResult:
    model: LevelModel
    level: int
    gates: dict[int, list[GateResult]] = field(default_factory=dict)

    @property
    def current(self) -> Level:
        return self.model.levels[self.level]

    @property
    def next(self) -> Level | None:
        return self.model.levels[self.level + 1] if self.level + 1 < len(self.model.levels) else None

    @property
    def next_steps(self) -> list[GateResult]:
        """Unmet gates of the next level, insufficient ones last."""
        if self.next is None:
            return []
        pending = [g for g in self.gates[self.next.number] if g.state != "met"]
        return sorted(pending, key=lambda g: g.state == "insufficient")

    @property
    def max_level(self) -> int:
        return len(self.model.levels) - 1


def gate_evaluate(gate: Gate, weeks: Sequence[Mapping[str, MetricValue]], *, needed: int,
                  window: MetricValue | None = None) -> GateResult:
    """Met when the gate is shown in at least `needed` weeks; insufficient when fewer weeks than
    that hold any data for it at all (nothing to judge yet)."""
    values = [w[gate.metric] for w in weeks]
    met = sum(1 for v in values if gate.week_meets(v))
    with_data = sum(1 for v in values if v.sample > 0)
    if window is None:
        window = MetricValue(gate.metric, sample=0)
    state = "met" if met >= needed else ("insufficient" if with_data < needed else "unmet")
    return GateResult(gate, state, window, weeks_met=met, weeks_needed=needed, weeks_with_data=with_data)


def level_evaluate(model: LevelModel, weeks: Sequence[Mapping[str, MetricValue]],
                   window: Mapping[str, MetricValue] | None = None) -> LevelResult:
    """The highest level whose gates, and those of every level below, are all met."""
    result = LevelResult(model, 0)
    reached = True
    for level in model.levels[1:]:
        results = [gate_evaluate(g, weeks, needed=level.weeks, window=(window or {}).get(g.metric))
                   for g in level.gates]
        result.gates[level.number] = results
        if reached and all(r.state == "met" for r in results):
            result.level = level.number
        else:
            reached = False
    return result
