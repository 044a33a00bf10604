from django.urls import path

from .placeholders import placeholder

urlpatterns = [
    path("account/tokens/", placeholder, name="tokens"),
]
