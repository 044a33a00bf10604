from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from . import models as m
from .services import purge


def _purge_action(service, argument: str, label: str):
    """An admin action that hard-deletes the selected objects with everything hanging off them, logged
    as PurgeRecords. Superusers only; the ordinary delete is refused by the PROTECT foreign keys."""

    @admin.action(description=f"Purge selected {label} permanently, with their history (logged)")
    def action(modeladmin, request, queryset):
        if not request.user.is_superuser:
            modeladmin.message_user(request, "Only superusers can purge.", level=messages.ERROR)
            return
        done = [service(**{argument: obj, "actor": request.user, "reason": "admin action"}) for obj in queryset]
        modeladmin.message_user(request, f"Purged {len(done)} {label}; see Purge records.", level=messages.WARNING)

    action.__name__ = f"purge_{argument}"
    return action


@admin.register(m.User)
class UserAdmin(BaseUserAdmin):
    fieldsets = (*BaseUserAdmin.fieldsets, ("mlboard", {"fields": ("display_name",)}))


class MembershipInline(admin.TabularInline):
    model = m.Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(m.Team)
class TeamAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "standup_time", "iteration_days")
    search_fields = ("name", "slug")
    inlines = [MembershipInline]
    actions = [_purge_action(purge.team_purge, "team", "teams")]


@admin.register(m.Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "team", "role")
    list_filter = ("role", "team")


@admin.register(m.Tag)
class TagAdmin(admin.ModelAdmin):
    list_display = ("name", "team")
    list_filter = ("team",)


class ColumnInline(admin.TabularInline):
    model = m.Column
    extra = 0


@admin.register(m.Board)
class BoardAdmin(admin.ModelAdmin):
    list_display = ("name", "key", "team", "archived")
    list_filter = ("team", "archived")
    inlines = [ColumnInline]


@admin.register(m.Column)
class ColumnAdmin(admin.ModelAdmin):
    list_display = ("name", "board", "stage", "position", "wip_limit")
    list_filter = ("board",)


class CardAdminBase(admin.ModelAdmin):
    list_display = ("key", "title", "kind", "column", "owner", "verdict", "version", "updated_at")
    list_filter = ("kind", "board", "verdict")
    search_fields = ("key", "title", "statement")
    raw_id_fields = ("parent", "baseline_run", "iteration")
    filter_horizontal = ("tags",)
    list_select_related = ("column", "owner")
    actions = [_purge_action(purge.card_purge, "card", "cards")]


@admin.register(m.Card)
class CardAdmin(CardAdminBase):
    pass


@admin.register(m.Hypothesis)
class HypothesisAdmin(CardAdminBase):
    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind=m.CardKind.HYPOTHESIS)


@admin.register(m.Experiment)
class ExperimentAdmin(CardAdminBase):
    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind=m.CardKind.EXPERIMENT)


@admin.register(m.Result)
class ResultAdmin(CardAdminBase):
    def get_queryset(self, request):
        return super().get_queryset(request).filter(kind=m.CardKind.RESULT)


@admin.register(m.CardEvent)
class CardEventAdmin(admin.ModelAdmin):
    list_display = ("card", "kind", "actor", "from_stage", "to_stage", "created_at")
    list_filter = ("kind", "board")
    raw_id_fields = ("card",)
    list_select_related = ("card", "actor")


class IterationItemInline(admin.TabularInline):
    model = m.IterationItem
    extra = 0
    raw_id_fields = ("card",)


@admin.register(m.Iteration)
class IterationAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "start", "end", "state")
    list_filter = ("team", "state")
    inlines = [IterationItemInline]
    actions = [_purge_action(purge.iteration_purge, "iteration", "iterations")]


@admin.register(m.IterationItem)
class IterationItemAdmin(admin.ModelAdmin):
    list_display = ("iteration", "card", "completed", "carried_over")
    raw_id_fields = ("card", "iteration")


@admin.register(m.ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "team", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "digest")


@admin.register(m.TrackingExperiment)
class TrackingExperimentAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "source", "lifecycle_stage")
    list_filter = ("team", "source")
    actions = [_purge_action(purge.tracking_experiment_purge, "experiment", "tracking experiments")]


class ParamInline(admin.TabularInline):
    model = m.Param
    extra = 0


@admin.register(m.Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("__str__", "team", "status", "start_time", "end_time", "trigger", "source")
    list_filter = ("status", "team", "trigger", "source")
    search_fields = ("name", "external_id")
    inlines = [ParamInline]
    actions = [_purge_action(purge.run_purge, "run", "runs")]


@admin.register(m.Param)
class ParamAdmin(admin.ModelAdmin):
    list_display = ("run", "key", "value")
    raw_id_fields = ("run",)


@admin.register(m.Metric)
class MetricAdmin(admin.ModelAdmin):
    list_display = ("run", "key", "step", "value", "is_nan", "timestamp")
    raw_id_fields = ("run",)


@admin.register(m.LatestMetric)
class LatestMetricAdmin(admin.ModelAdmin):
    list_display = ("run", "key", "step", "value", "is_nan")
    raw_id_fields = ("run",)


@admin.register(m.CardRun)
class CardRunAdmin(admin.ModelAdmin):
    list_display = ("card", "run", "via", "is_baseline", "created_at")
    raw_id_fields = ("card", "run")


@admin.register(m.VerdictProposal)
class VerdictProposalAdmin(admin.ModelAdmin):
    list_display = ("card", "proposed", "decided", "status", "created_at", "decided_by")
    list_filter = ("status", "proposed")
    raw_id_fields = ("card",)


@admin.register(m.StandupDigest)
class StandupDigestAdmin(admin.ModelAdmin):
    list_display = ("team", "board", "window_start", "window_end", "email_sent_at", "webhook_sent_at")
    list_filter = ("team",)


@admin.register(m.MaturityAssessment)
class MaturityAssessmentAdmin(admin.ModelAdmin):
    list_display = ("team", "respondent", "created_at")


@admin.register(m.MaturitySnapshot)
class MaturitySnapshotAdmin(admin.ModelAdmin):
    list_display = ("team", "date")


@admin.register(m.MlflowSource)
class MlflowSourceAdmin(admin.ModelAdmin):
    list_display = ("name", "team", "tracking_uri", "enabled", "last_synced_at")


@admin.register(m.PurgeRecord)
class PurgeRecordAdmin(admin.ModelAdmin):
    list_display = ("created_at", "object_type", "object_repr", "team_slug", "actor_name", "reason")
    list_filter = ("object_type",)
    readonly_fields = [f.name for f in m.PurgeRecord._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(m.Invitation)
class InvitationAdmin(admin.ModelAdmin):
    list_display = ("email", "team", "role", "created_at", "expires_at", "accepted_at", "revoked_at")
    list_filter = ("team", "role")
    readonly_fields = ("digest",)
