"""Board forms. They only parse input (types, choices); the domain rules live in the services,
whose DomainError.errors are put back on the matching fields by `apply_domain_error`."""

from __future__ import annotations

from typing import Any

from django import forms

from ..errors import DomainError
from ..models import AnalysisScale, AnalysisTest, Board, Card, CardKind, Column, Direction, Stage, User, VerdictChoice
from ..selectors.board import owner_choices, parent_choices


def apply_domain_error(form: forms.Form, error: DomainError) -> None:
    """Show a service error next to its field (or at the top when no field matches)."""
    errors: dict[str, str] = getattr(error, "errors", None) or {error.field or "__all__": error.message}
    for name, message in errors.items():
        form.add_error(name if name in form.fields else None, message)


class OwnerChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: User) -> str:
        return f"{obj} (@{obj.username})" if str(obj) != obj.username else obj.username


class ColumnChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Column) -> str:
        return obj.name


class ParentChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Card) -> str:
        return f"{obj.key} · {obj.get_kind_display()} · {obj.title}"


def parse_tags(raw: str) -> list[str]:
    return [t.strip().lower() for t in (raw or "").split(",") if t.strip()]


class CardForm(forms.Form):
    """Common fields; subclasses add the kind-specific ones. Required-ness is left to the services
    so the messages are the domain's, while the browser still gets `required` hints."""

    kind: str = ""
    kind_fields: tuple[str, ...] = ()

    title = forms.CharField(max_length=200, required=False, widget=forms.TextInput(attrs={"required": True}))
    description = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    owner = OwnerChoiceField(queryset=User.objects.none(), required=False, empty_label="Unassigned")
    tags = forms.CharField(
        required=False,
        help_text="Comma-separated, e.g. features, xgboost",
        widget=forms.TextInput(attrs={"placeholder": "features, xgboost"}),
    )
    column = ColumnChoiceField(queryset=Column.objects.none(), required=False, empty_label=None)
    version = forms.IntegerField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args: Any, board: Board, card: Card | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.board = board
        self.card = card
        self.fields["owner"].queryset = owner_choices(board.team_id)
        if card is None:
            self.fields["column"].queryset = board.columns.order_by("position", "id")
            del self.fields["version"]
        else:
            del self.fields["column"]
            self.fields["version"].required = True
        if "parent" in self.fields:
            self.fields["parent"].queryset = parent_choices(
                board=board, kind=self.kind, exclude_id=card.pk if card else None
            )

    def clean_tags(self) -> list[str]:
        tags = parse_tags(self.cleaned_data.get("tags", ""))
        too_long = [t for t in tags if len(t) > 40]
        if too_long:
            raise forms.ValidationError(f"Each tag is at most 40 characters; “{too_long[0][:20]}…” is longer.")
        return tags

    def service_fields(self) -> dict[str, Any]:
        """Editable card fields for card_create / card_update (tags, column, version separate)."""
        data = self.cleaned_data
        fields: dict[str, Any] = {
            "title": data.get("title") or "",
            "description": data.get("description") or "",
            "owner": data.get("owner"),
        }
        for name in self.kind_fields:
            value = data.get(name)
            if isinstance(self.fields[name], forms.CharField | forms.ChoiceField) and not isinstance(
                self.fields[name], forms.ModelChoiceField
            ):
                value = value or ""
            fields[name] = value
        return fields

    @classmethod
    def initial_for(cls, card: Card) -> dict[str, Any]:
        initial: dict[str, Any] = {
            "title": card.title,
            "description": card.description,
            "owner": card.owner_id,
            "tags": ", ".join(t.name for t in card.tags.all()),
            "version": card.version,
        }
        for name in cls.kind_fields:
            initial[name] = getattr(card, f"{name}_id" if name == "parent" else name)
        return initial


class HypothesisForm(CardForm):
    kind = CardKind.HYPOTHESIS
    kind_fields = (
        "statement", "rationale", "metric_key", "direction", "threshold", "min_delta", "min_runs", "analysis_test",
        "analysis_scale", "paired", "equivalence_margin", "smallest_effect", "failures_count", "max_failure_share",
    )

    statement = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "placeholder": "We believe that … will improve … because …"}),
    )
    rationale = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    metric_key = forms.CharField(
        label="Metric", max_length=250, required=False, widget=forms.TextInput(attrs={"placeholder": "val_auc"})
    )
    direction = forms.ChoiceField(choices=[("", "—"), *Direction.choices], required=False)
    threshold = forms.FloatField(required=False, help_text="The metric must reach this absolute value …")
    min_delta = forms.FloatField(
        label="Minimum delta over baseline", required=False, help_text="… or improve on the baseline by this much."
    )
    min_runs = forms.IntegerField(
        label="Minimum runs (seeds)",
        min_value=1,
        max_value=1000,
        initial=3,
        error_messages={"required": "Say how many runs (seeds) a verdict needs; at least 1."},
    )
    # The analysis plan; it freezes with the criterion when the first linked run starts.
    analysis_test = forms.ChoiceField(
        label="Test", choices=AnalysisTest.choices, initial=AnalysisTest.T, required=False
    )
    analysis_scale = forms.ChoiceField(
        label="Scale", choices=AnalysisScale.choices, initial=AnalysisScale.RAW, required=False
    )
    paired = forms.BooleanField(
        label="Pair with baseline runs by seed", required=False, initial=True,
        help_text="A paired test on seed-matched differences whenever the seeds match.",
    )
    smallest_effect = forms.FloatField(
        label="Smallest effect that matters", required=False,
        help_text="Used to suggest the number of runs (80% power) and to report the power achieved.",
    )
    equivalence_margin = forms.FloatField(
        label="Equivalence margin", required=False,
        help_text="Optional: an effect within ± this is 'no meaningful effect' rather than inconclusive.",
    )
    failures_count = forms.BooleanField(
        label="Failed and diverged runs count as failures", required=False, initial=True,
    )
    max_failure_share = forms.FloatField(
        label="Failure share that blocks 'supported'", min_value=0, max_value=1, initial=0.2, required=False,
    )
    amendment_reason = forms.CharField(
        label="Reason for changing the criterion", required=False,
        widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Required once runs have started: the change is recorded as an amendment.",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.card is None or self.card.criteria_frozen_at is None:
            del self.fields["amendment_reason"]

    def service_fields(self) -> dict[str, Any]:
        fields = super().service_fields()
        # Fields a client left out keep the plan's defaults.
        fields["analysis_test"] = fields["analysis_test"] or AnalysisTest.T
        fields["analysis_scale"] = fields["analysis_scale"] or AnalysisScale.RAW
        if fields["max_failure_share"] is None:
            fields["max_failure_share"] = 0.2
        return fields


class ExperimentForm(CardForm):
    kind = CardKind.EXPERIMENT
    kind_fields = ("parent", "plan", "baseline_value")

    parent = ParentChoiceField(
        label="Hypothesis", queryset=Card.objects.none(), required=False, empty_label="Choose a hypothesis…"
    )
    plan = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}))
    baseline_value = forms.FloatField(required=False, help_text="Metric value of the baseline to beat.")


class ResultForm(CardForm):
    kind = CardKind.RESULT
    kind_fields = ("parent", "verdict", "evidence", "learnings")

    parent = ParentChoiceField(
        label="Result of",
        queryset=Card.objects.none(),
        required=False,
        empty_label="Choose an experiment or hypothesis…",
    )
    verdict = forms.ChoiceField(choices=[("", "Not decided yet"), *VerdictChoice.choices], required=False)
    evidence = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))
    learnings = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}))


CARD_FORMS: dict[str, type[CardForm]] = {
    CardKind.HYPOTHESIS: HypothesisForm,
    CardKind.EXPERIMENT: ExperimentForm,
    CardKind.RESULT: ResultForm,
}


class ColumnForm(forms.Form):
    name = forms.CharField(max_length=60, required=False, widget=forms.TextInput(attrs={"required": True}))
    wip_limit = forms.IntegerField(
        label="WIP limit", min_value=1, max_value=999, required=False, help_text="Empty means no limit."
    )
    stage = forms.ChoiceField(choices=Stage.choices)

    def __init__(self, *args: Any, form_id: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if form_id:
            # Settings rows are table rows: inputs join their <form> through the form attribute.
            for bound in self.fields.values():
                bound.widget.attrs["form"] = form_id


class BoardForm(forms.Form):
    name = forms.CharField(max_length=120, required=False, widget=forms.TextInput(attrs={"required": True}))
    key = forms.CharField(
        max_length=10,
        required=False,
        help_text="Prefix of card keys: 1 to 10 uppercase letters or digits, e.g. CHURN.",
        widget=forms.TextInput(attrs={"required": True, "placeholder": "CHURN", "autocapitalize": "characters"}),
    )
    problem = forms.CharField(
        label="ML problem", required=False, widget=forms.Textarea(attrs={"rows": 3}),
        help_text="What this board works on, e.g. predict churn 30 days ahead.",
    )
