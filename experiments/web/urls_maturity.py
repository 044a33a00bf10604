from django.urls import path

from . import maturity_views

urlpatterns = [
    path("teams/<slug:team_slug>/reports/maturity/", maturity_views.maturity_overview, name="maturity"),
    path("teams/<slug:team_slug>/reports/maturity/assess/", maturity_views.maturity_assess, name="maturity_assess"),
    path("teams/<slug:team_slug>/reports/maturity/trend/", maturity_views.maturity_trend_view, name="maturity_trend"),
    path("teams/<slug:team_slug>/reports/maturity/print/", maturity_views.maturity_print, name="maturity_print"),
]
