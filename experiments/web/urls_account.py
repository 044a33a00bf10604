from django.urls import path

from . import account_views

urlpatterns = [
    path("account/tokens/", account_views.tokens_page, name="tokens"),
    path("account/tokens/<int:token_id>/revoke/", account_views.token_revoke_view, name="token_revoke"),
]
