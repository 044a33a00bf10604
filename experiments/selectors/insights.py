"""Cross-card reads: the team leaderboard per metric (best runs, groups of runs by params with
mean ± std over seeds, how each param relates to the metric), the memory of what was tried (similar
earlier hypotheses and their verdicts) and the dead-ends view. Fixed query counts."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db.models import Prefetch, Q

from .. import stats
from ..models import (
    Board,
    Card,
    CardKind,
    CardRun,
    Direction,
    EvidenceSnapshot,
    LatestMetric,
    Param,
    Run,
    Tag,
    Team,
    VerdictChoice,
)
from ..services.runs import SEED_KEYS

MAX_LEADERBOARD_RUNS = 5000
MAX_EFFECT_PARAMS = 8
MAX_EFFECT_VALUES = 12


@dataclass
class BoardRow:
    run: Run
    value: float
    cards: list[Card]
    params: dict[str, str]


@dataclass
class GroupRow:
    values: tuple[str, ...]
    n: int
    mean: float
    std: float | None
    best: float
    run_ids: list[int]


@dataclass
class ParamEffect:
    key: str
    numeric: bool
    points: list[tuple[str, float]]  # (param value, metric value) per run
    levels: list[GroupRow] = field(default_factory=list)


@dataclass
class Leaderboard:
    metric: str
    direction: str
    best: list[BoardRow]
    group_by: list[str]
    groups: list[GroupRow]
    param_keys: list[str]
    effects: list[ParamEffect]
    total_runs: int


def metric_direction(*, team: Team, metric: str) -> str:
    """The direction hypotheses of this team use for the metric; maximise if none says."""
    found = (
        Card.objects.filter(board__team=team, kind=CardKind.HYPOTHESIS, metric_key=metric)
        .exclude(direction="").values_list("direction", flat=True).first()
    )
    return found or Direction.MAXIMIZE


def _group(rows: Sequence[BoardRow], keys: Sequence[str], direction: str) -> list[GroupRow]:
    buckets: dict[tuple[str, ...], list[BoardRow]] = defaultdict(list)
    for row in rows:
        buckets[tuple(row.params.get(k, "—") for k in keys)].append(row)
    groups = []
    for values, members in buckets.items():
        numbers = [m.value for m in members]
        pick = max if direction == Direction.MAXIMIZE else min
        groups.append(GroupRow(
            values=values, n=len(numbers), mean=stats.mean(numbers),
            std=stats.sample_std(numbers) if len(numbers) > 1 else None, best=pick(numbers),
            run_ids=[m.run.pk for m in members],
        ))
    groups.sort(key=lambda g: g.mean, reverse=direction == Direction.MAXIMIZE)
    return groups


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def team_leaderboard(
    *, team: Team, metric: str, direction: str | None = None, group_by: Iterable[str] = (), limit: int = 20
) -> Leaderboard:
    """Three queries: the metric's final values, the runs' params, the best runs' cards."""
    direction = direction if direction in Direction.values else metric_direction(team=team, metric=metric)
    order = "-value" if direction == Direction.MAXIMIZE else "value"
    latest = list(
        LatestMetric.objects.filter(run__team=team, run__lifecycle_stage="active", key=metric, is_nan=False)
        .select_related("run")
        .order_by(order, "run_id")[:MAX_LEADERBOARD_RUNS]
    )
    latest = [lm for lm in latest if math.isfinite(lm.value)]
    ids = [lm.run_id for lm in latest]
    params: dict[int, dict[str, str]] = defaultdict(dict)
    for run_id, key, value in Param.objects.filter(run_id__in=ids).values_list("run_id", "key", "value"):
        params[run_id][key] = value
    top_ids = ids[:limit]
    cards: dict[int, list[Card]] = defaultdict(list)
    for link in CardRun.objects.filter(run_id__in=top_ids).select_related("card").order_by("card__key"):
        cards[link.run_id].append(link.card)
    rows = [BoardRow(run=lm.run, value=lm.value, cards=cards.get(lm.run_id, []), params=params.get(lm.run_id, {}))
            for lm in latest]
    keys = sorted({k for p in params.values() for k in p} - set(SEED_KEYS))
    chosen = [k for k in group_by if k in keys]
    groups = _group(rows, chosen, direction) if chosen else []
    effects = []
    for key in keys:
        values = {r.params[key] for r in rows if key in r.params}
        if len(values) < 2:
            continue
        numeric = all(_is_number(v) for v in values)
        points = [(r.params[key], r.value) for r in rows if key in r.params]
        levels = [] if numeric and len(values) > MAX_EFFECT_VALUES else _group(
            [r for r in rows if key in r.params], [key], direction
        )
        effects.append(ParamEffect(key=key, numeric=numeric, points=points, levels=levels))
        if len(effects) >= MAX_EFFECT_PARAMS:
            break
    return Leaderboard(
        metric=metric, direction=direction, best=rows[:limit], group_by=chosen, groups=groups, param_keys=keys,
        effects=effects, total_runs=len(rows),
    )


# --- Memory of what was tried -------------------------------------------------------------------

STOPWORDS = frozenset(
    "a an and are as at be by for from has have in into is it its of on or than that the this to was were will "
    "with we our if then when more less better worse".split()
)
_WORD = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def _words(text: str) -> set[str]:
    return {w for w in _WORD.findall((text or "").lower()) if w not in STOPWORDS and len(w) > 2}


@dataclass
class SimilarCard:
    card: Card
    score: float
    shared_words: list[str]
    shared_tags: list[str]
    same_metric: bool

    @property
    def refuted(self) -> bool:
        return self.card.verdict == VerdictChoice.REFUTED


def similar_hypotheses(
    *, team: Team, text: str, tags: Iterable[str] = (), metric_key: str = "", exclude_id: int | None = None,
    limit: int = 5, scan: int = 500,
) -> list[SimilarCard]:
    """Earlier hypotheses of the team sharing words, tags or the metric (two queries: cards, tags).
    Decided ones first, refuted first among those, so last month's dead end is the first thing seen."""
    words = _words(text)
    tagset = {t.strip().lower() for t in tags if t and t.strip()}
    if not words and not tagset and not metric_key:
        return []
    qs = (
        Card.objects.filter(board__team=team, kind=CardKind.HYPOTHESIS)
        .select_related("board")
        .prefetch_related(Prefetch("tags", queryset=Tag.objects.only("id", "name")))
        .order_by("-created_at", "-id")
    )
    if exclude_id:
        qs = qs.exclude(pk=exclude_id)
    found = []
    for card in qs[:scan]:
        other = _words(f"{card.title} {card.statement}")
        shared = sorted(words & other)
        card_tags = {t.name for t in card.tags.all()}
        shared_tags = sorted(tagset & card_tags)
        same_metric = bool(metric_key) and card.metric_key == metric_key
        union = len(words | other) or 1
        score = len(shared) / union + 0.3 * len(shared_tags) + (0.2 if same_metric else 0.0)
        if len(shared) >= 2 or shared_tags or (same_metric and shared):
            found.append(SimilarCard(card=card, score=score, shared_words=shared[:8], shared_tags=shared_tags,
                                     same_metric=same_metric))
    rank = {VerdictChoice.REFUTED: 0, VerdictChoice.INCONCLUSIVE: 1, VerdictChoice.SUPPORTED: 2}
    found.sort(key=lambda s: -s.score)
    top = found[:limit]
    top.sort(key=lambda s: (rank.get(s.card.verdict, 3), -s.score))
    return top


@dataclass
class DeadEnd:
    card: Card
    result: Card | None
    snapshot_id: int | None


def dead_ends(*, board: Board) -> list[DeadEnd]:
    """Refuted and inconclusive hypotheses of a board, newest decision first, with their result card and
    evidence snapshot (two queries)."""
    cards = list(
        Card.objects.filter(board=board, kind=CardKind.HYPOTHESIS,
                            verdict__in=[VerdictChoice.REFUTED, VerdictChoice.INCONCLUSIVE])
        .select_related("owner")
        .prefetch_related(Prefetch("tags", queryset=Tag.objects.only("id", "name")))
        .order_by("-decided_at", "-id")
    )
    results: dict[int, Card] = {}
    snaps: dict[int, int] = {}
    for result in (
        Card.objects.filter(Q(parent__in=cards), kind=CardKind.RESULT).select_related("evidence_snapshot")
        .order_by("-created_at")
    ):
        results.setdefault(result.parent_id, result)
    for result in results.values():
        snap = getattr(result, "evidence_snapshot", None)
        if isinstance(snap, EvidenceSnapshot):
            snaps[result.parent_id] = snap.pk
    return [DeadEnd(card=c, result=results.get(c.pk), snapshot_id=snaps.get(c.pk)) for c in cards]
