"""Single env-driven settings module.

Embedded defaults (no env at all): SQLite file, Celery tasks run eagerly in-process,
console email. Production sets DATABASE_URL, REDIS_URL, SECRET_KEY, DEBUG=0.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "insecure-dev-key-change-me" if DEBUG else "")
if not SECRET_KEY:
    raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "*" if DEBUG else "localhost,127.0.0.1")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
CSRF_FAILURE_VIEW = "experiments.api.errors.csrf_failure"  # JSON under /api/ and /mlflow/

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI assets served locally (self-hosted, no CDN)
    "django_htmx",
    "axes",
    "experiments",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "experiments.middleware.CSPMiddleware",  # django-csp's, skipping responses with their own policy
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "experiments.middleware.HostileInputMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into the 429 lockout page
]

ROOT_URLCONF = "mlboard.urls"
WSGI_APPLICATION = "mlboard.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "csp.context_processors.nonce",
            ],
        },
    }
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=int(os.environ.get("DB_CONN_MAX_AGE", "60")),
        # A persistent connection is checked before a request reuses it, so the first request after a
        # database restart (or a dropped connection) reconnects instead of failing.
        conn_health_checks=env_bool("DB_CONN_HEALTH_CHECKS", True),
    )
}
# PostgreSQL's JIT spends ~100 ms compiling each big aggregate (chart downsampling, year-long
# reports) and only pays back on analytic queries far larger than these: off unless DB_JIT=1.
if DATABASES["default"]["ENGINE"].endswith("postgresql") and os.environ.get("DB_JIT", "0") != "1":
    DATABASES["default"].setdefault("OPTIONS", {})["options"] = "-c jit=off"
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Same backend, but a new connection waits out a database restart (mlboard/db_backends/postgresql).
    DATABASES["default"]["ENGINE"] = "mlboard.db_backends.postgresql"
DB_CONNECT_RETRY_SECONDS = float(os.environ.get("DB_CONNECT_RETRY_SECONDS", "10"))
# The fixed statements of every logging request (token lookup, metric insert) are prepared once per
# connection on PostgreSQL; 0 for a pooler in transaction mode that does not keep prepared statements.
DB_PREPARED_STATEMENTS = env_bool("DB_PREPARED_STATEMENTS", True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "experiments.User"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# django-axes first: it refuses a locked-out account or address before the password is checked.
AUTHENTICATION_BACKENDS = [
    "experiments.auth_backends.AxesBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]

# Celery: without REDIS_URL every task runs eagerly in-process (embedded mode).
REDIS_URL = os.environ.get("REDIS_URL", "")
CELERY_BROKER_URL = REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_TASK_ACKS_LATE = True
# At-least-once: a task whose worker process dies (kill -9, OOM) is put back, not acknowledged.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# The longest task may run CELERY_TASK_TIME_LIMIT seconds (long imports work in bounded chunks well
# inside it); Redis redelivers an unacknowledged message after the visibility timeout, which must be
# longer, or a task still running would be delivered a second time.
CELERY_TASK_TIME_LIMIT = int(os.environ.get("CELERY_TASK_TIME_LIMIT", "900"))
CELERY_TASK_SOFT_TIME_LIMIT = max(1, CELERY_TASK_TIME_LIMIT - max(1, CELERY_TASK_TIME_LIMIT // 10))
CELERY_VISIBILITY_TIMEOUT = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT", str(2 * CELERY_TASK_TIME_LIMIT)))
if CELERY_VISIBILITY_TIMEOUT <= CELERY_TASK_TIME_LIMIT:
    raise RuntimeError("CELERY_VISIBILITY_TIMEOUT must be longer than CELERY_TASK_TIME_LIMIT")
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_VISIBILITY_TIMEOUT,
    # Look for abandoned messages often enough that they come back soon after the timeout.
    "unacked_restore_interval": max(1, min(10, CELERY_VISIBILITY_TIMEOUT // 10)),
    "unacked_restore_throttle": 1,
}
# A long import re-enqueues itself after each chunk (cursor kept on the source row).
MLFLOW_IMPORT_CHUNK_RUNS = int(os.environ.get("MLFLOW_IMPORT_CHUNK_RUNS", "200"))
MLFLOW_IMPORT_CHUNK_SECONDS = float(os.environ.get("MLFLOW_IMPORT_CHUNK_SECONDS", str(CELERY_TASK_TIME_LIMIT / 5)))
CELERY_TIMEZONE = TIME_ZONE
CELERY_BEAT_SCHEDULE = {
    # Each team has its own standup time; this tick decides which are due.
    "standup-digests": {"task": "experiments.tasks.build_due_standup_digests", "schedule": crontab(minute="*/5")},
    "maturity-snapshots": {"task": "experiments.tasks.snapshot_all_maturity", "schedule": crontab(hour=2, minute=0)},
    "mlflow-imports": {"task": "experiments.tasks.sync_all_mlflow_sources", "schedule": crontab(minute="*/15")},
    "iteration-rollover": {"task": "experiments.tasks.roll_iterations", "schedule": crontab(minute="*/10")},
    # Teamwork: lost notification digests, stuck-card notices, Done archiving.
    "notification-digests": {
        "task": "experiments.tasks.send_pending_notification_digests", "schedule": crontab(minute="*/10"),
    },
    "stuck-card-notices": {"task": "experiments.tasks.notify_all_stuck_cards", "schedule": crontab(minute=15)},
    "archive-done-cards": {"task": "experiments.tasks.archive_all_done_cards", "schedule": crontab(hour=3, minute=30)},
}
# Notifications of one user within this many seconds go out as one email / webhook message.
NOTIFY_BATCH_SECONDS = int(os.environ.get("NOTIFY_BATCH_SECONDS", "120"))

CACHES = {
    "default": (
        # Django's Redis cache, minus a new client object per command (mlboard/cache.py).
        {"BACKEND": "mlboard.cache.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = os.environ.get("EMAIL_HOST", "localhost")
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "25"))
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "mlboard@localhost")
EMAIL_FILE_PATH = os.environ.get("EMAIL_FILE_PATH", str(BASE_DIR / "sent-mail"))  # filebased backend only
SITE_URL = os.environ.get("SITE_URL", "http://127.0.0.1:8000").rstrip("/")  # absolute links in digests

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "experiments.api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 100,
    "EXCEPTION_HANDLER": "experiments.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": ["experiments.throttles.ApiThrottle"],
    # JSON only: what the schema documents (no HTML browsable API answering ?format=api).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # JSON bodies only (forms cannot say null or nest), with the input rules of experiments/inputs.py
    # (NUL, surrogates, depth, number ranges). A view that takes uploads sets its own parser_classes.
    "DEFAULT_PARSER_CLASSES": ["experiments.api.parsers.JSONParser"],
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "mlboard API",
    "DESCRIPTION": "Hypotheses, experiments, results and the tracked runs behind them.",
    "VERSION": "1.0.0",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "experiments.api.errors.document_standard_errors",
    ],
}

# mlflow's batch limits, mirrored so the compatible endpoint rejects what mlflow rejects.
MLFLOW_MAX_METRICS_PER_BATCH = 1000
MLFLOW_MAX_PARAMS_PER_BATCH = 100
MLFLOW_MAX_TAGS_PER_BATCH = 100
MLFLOW_MAX_ENTITIES_PER_BATCH = 1000

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    # One line per task is noise in eager (embedded) mode; workers log task results themselves.
    "loggers": {"celery.app.trace": {"level": os.environ.get("CELERY_TRACE_LOG_LEVEL", "WARNING")}},
}

if not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)

# --- Hardening (issue 10): transport, headers, login lockout, throttles -----------------------------
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = int(os.environ.get("SECURE_HSTS_SECONDS", "0"))
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Behind a TLS-terminating proxy: the header it sets, e.g. HTTP_X_FORWARDED_PROTO (then "https" means TLS).
if os.environ.get("SECURE_PROXY_SSL_HEADER"):
    SECURE_PROXY_SSL_HEADER = (os.environ["SECURE_PROXY_SSL_HEADER"], "https")
SECURE_REFERRER_POLICY = "same-origin"

# Content-Security-Policy (django-csp). Scripts only from here or with the per-request nonce;
# styles allow inline because plotly.js injects <style> elements and templates use style attributes.
from csp.constants import NONCE, NONE, SELF, UNSAFE_INLINE  # noqa: E402

CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        # No 'unsafe-eval' here: only the run comparison page adds it (its WebGL parcoords compile
        # shaders with new Function), through @csp_update on that one view.
        "script-src": [SELF, NONCE],
        "style-src": [SELF, UNSAFE_INLINE],
        "img-src": [SELF, "data:", "blob:"],
        "font-src": [SELF, "data:"],
        "connect-src": [SELF],
        "worker-src": [SELF, "blob:"],
        "object-src": [NONE],
        "base-uri": [SELF],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# django-axes: lock an account, and separately an address, after repeated failed logins (site and admin).
AXES_FAILURE_LIMIT = int(os.environ.get("AXES_FAILURE_LIMIT", "5"))
AXES_COOLOFF_TIME = float(os.environ.get("AXES_COOLOFF_MINUTES", "15")) / 60  # hours
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
# Client address for lockouts and limits: REMOTE_ADDR, or behind N trusted proxies the N-th address
# from the right of X-Forwarded-For (experiments/throttles.py: client_ip).
TRUSTED_PROXY_COUNT = int(os.environ.get("TRUSTED_PROXY_COUNT", "0"))
AXES_CLIENT_IP_CALLABLE = "experiments.throttles.client_ip"

# Fixed-window request limits per minute (experiments/throttles.py), counted in the Django cache
# (Redis when REDIS_URL is set). Generous: a training job logging every step stays far below them.
MLBOARD_THROTTLE_RATES = {
    "api_user": os.environ.get("THROTTLE_API_USER", "3000/min"),
    "api_anon": os.environ.get("THROTTLE_API_ANON", "300/min"),
    "mlflow": os.environ.get("THROTTLE_MLFLOW", "12000/min"),
    "auth_failure": os.environ.get("THROTTLE_AUTH_FAILURES", "60/min"),
}
MLBOARD_THROTTLE_NAMESPACE = os.environ.get("THROTTLE_NAMESPACE", "")

# plotly.js is served from the plotly package itself (no CDN, no copied file).
import plotly as _plotly  # noqa: E402

STATICFILES_DIRS.append(("plotly", str(Path(_plotly.__file__).parent / "package_data")))

# Outbound HTTP (experiments/outbound.py): internal addresses are refused unless listed here,
# e.g. an on-prem MLflow server: OUTBOUND_ALLOWED_HOSTS=mlflow.corp.example, OUTBOUND_ALLOWED_NETWORKS=10.20.0.0/16.
OUTBOUND_ALLOWED_HOSTS = env_list("OUTBOUND_ALLOWED_HOSTS")
OUTBOUND_ALLOWED_NETWORKS = env_list("OUTBOUND_ALLOWED_NETWORKS")
import ipaddress as _ipaddress  # noqa: E402

for _network in OUTBOUND_ALLOWED_NETWORKS:
    _ipaddress.ip_network(_network, strict=False)  # fail at start-up, not at the first call
OUTBOUND_CONNECT_TIMEOUT = float(os.environ.get("OUTBOUND_CONNECT_TIMEOUT", "5"))
OUTBOUND_READ_TIMEOUT = float(os.environ.get("OUTBOUND_READ_TIMEOUT", "30"))
OUTBOUND_DEADLINE = float(os.environ.get("OUTBOUND_DEADLINE", "300"))
OUTBOUND_MAX_RESPONSE_BYTES = int(os.environ.get("OUTBOUND_MAX_RESPONSE_BYTES", str(64 * 1024 * 1024)))
# Maturity: repeated runs (same configuration, other seeds) must agree within this relative
# tolerance to count as reproduced; a team can set its own.
MATURITY_REPRO_TOLERANCE = float(os.environ.get("MATURITY_REPRO_TOLERANCE", "0.02"))

# --- Artifacts (MLflow artifact proxy: /mlflow/api/2.0/mlflow-artifacts/...) ---------------------
# A local directory by default; S3-compatible object storage (AWS S3, MinIO, ...) when a bucket is set.
ARTIFACT_ROOT = os.environ.get("ARTIFACT_ROOT", str(BASE_DIR / "artifacts"))
ARTIFACT_S3_BUCKET = os.environ.get("ARTIFACT_S3_BUCKET", "")
# Largest single artifact accepted (bytes); 0 means no limit.
ARTIFACT_MAX_FILE_SIZE = int(os.environ.get("ARTIFACT_MAX_FILE_SIZE", str(20 * 1024**3)))
# The artifact index row commits without waiting for the WAL flush (PostgreSQL): see services.artifacts._index.
# Off by default: a database crash must not drop stored files from listings (nothing lost).
ARTIFACT_INDEX_ASYNC_COMMIT = env_bool("ARTIFACT_INDEX_ASYNC_COMMIT", False)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    "artifacts": (
        {
            "BACKEND": "experiments.storage.S3ArtifactStorage",
            "OPTIONS": {
                "bucket_name": ARTIFACT_S3_BUCKET,
                "location": os.environ.get("ARTIFACT_S3_PREFIX", "").strip("/"),
                "endpoint_url": os.environ.get("ARTIFACT_S3_ENDPOINT_URL") or None,
                "region_name": os.environ.get("ARTIFACT_S3_REGION") or None,
                "access_key": os.environ.get("ARTIFACT_S3_ACCESS_KEY_ID") or None,
                "secret_key": os.environ.get("ARTIFACT_S3_SECRET_ACCESS_KEY") or None,
            },
        }
        if ARTIFACT_S3_BUCKET
        else {"BACKEND": "experiments.storage.LocalArtifactStorage", "OPTIONS": {"location": ARTIFACT_ROOT}}
    ),
}
