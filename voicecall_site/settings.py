"""Django settings for Voicecall.

Two ways to run, chosen by the environment (django-environ):

* Embedded default (nothing set): SQLite under ``var/``, the in-memory channel layer, and Celery on
  kombu's filesystem transport under ``var/celery`` so a newcomer needs nothing installed but Python.
* Scaled out: ``DATABASE_URL`` (PostgreSQL) and ``REDIS_URL`` (Celery broker + channels-redis).

The voice-call behaviour itself is configured by the JSON5 file at ``$VOICECALL_CONFIG`` (see
``calls/config/``), not here.
"""

from __future__ import annotations

import os
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()

VAR_DIR = Path(env.str("VOICECALL_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)
# prometheus_client's multi-process mode (calls/metrics.py): every daphne and Celery process of this
# installation writes its samples here, and GET /metrics adds them up.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "metrics"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

DEBUG = env.bool("DJANGO_DEBUG", default=False)


def _secret_key() -> str:
    """A per-installation key kept in var/ so sessions survive restarts without committing a secret."""
    configured = env.str("DJANGO_SECRET_KEY", default="")
    if configured:
        return configured
    key_file = VAR_DIR / "django-secret-key"
    if not key_file.exists():
        import secrets

        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _secret_key()

# Webhooks arrive with the public Host of a tunnel or proxy; calls/apps.py extends this list with the
# publicUrl host and webhookSecurity.allowedHosts once the voice-call config is loaded.
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "calls",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves admin CSS/JS from STATIC_ROOT under daphne, so the embedded setup needs no web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "voicecall_site.urls"

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
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "voicecall_site.asgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'voicecall.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (daphne, worker, beat, CLI) share the file: wait for locks instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update({"timeout": 20, "transaction_mode": "IMMEDIATE"})
else:
    # No persistent connections (Django's advice under ASGI). Django runs each sync view in a thread of
    # its own, so a kept connection is never reused: it stays open until the garbage collector frees
    # the dead thread's state, and under load PostgreSQL runs out of slots ("too many clients
    # already", found by bench/webhook_bench.py). ``?conn_max_age=N`` in DATABASE_URL still overrides.
    DATABASES["default"].setdefault("CONN_MAX_AGE", 0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
    # ASGI server processes (voicecall_site/asgi.py sets VOICECALL_DB_POOL=1) borrow connections from
    # Django's psycopg pool instead: a new PostgreSQL session per request cost PostgreSQL about as much
    # CPU as the whole request cost daphne (bench/README.md, webhooks). Celery's prefork children and
    # the CLI keep one short-lived connection each (a pool must not be inherited across fork).
    if env.bool("VOICECALL_DB_POOL", default=False) and DATABASES["default"]["CONN_MAX_AGE"] == 0:
        DATABASES["default"].setdefault("OPTIONS", {}).setdefault("application_name", "voicecall-web")
        DATABASES["default"]["OPTIONS"]["pool"] = {
            "min_size": 1,
            "max_size": env.int("VOICECALL_DB_POOL_MAX_SIZE", default=16),
            "timeout": 10,  # seconds a request waits for a free connection before it fails
        }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)

REDIS_URL = env.str("REDIS_URL", default="")

# redis-py 8's asyncio pool defaults clash with channels-redis: (1) a 5 s socket timeout races
# channels-redis' 5 s BZPOPMIN, so every idle consumer's receive dies with "Timeout reading from ...";
# (2) at most 100 connections, and the pool raises instead of waiting, so 128 media streams joining
# their groups at once fail with "Too many connections". Both set explicitly here.
CHANNEL_LAYER_REDIS_HOST_OPTIONS = {"socket_timeout": 15, "max_connections": 2000}

if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [{"address": REDIS_URL, **CHANNEL_LAYER_REDIS_HOST_OPTIONS}]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

# Celery: JSON only, bounded task time, acks after the task ran so a killed worker's task is redelivered
# (place_call is idempotent, so redelivery can never dial twice).
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL or "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    _celery_dir = VAR_DIR / "celery"
    for _sub in ("out", "processed", "control"):
        (_celery_dir / _sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_celery_dir / "out"),
        "data_folder_out": str(_celery_dir / "out"),
        "data_folder_processed": str(_celery_dir / "processed"),
        "control_folder": str(_celery_dir / "control"),
        "store_processed": False,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://")):
    # Redis has no acks: a task a worker took but never acknowledged (the worker was SIGKILLed) is
    # handed out again once ``visibility_timeout`` seconds have passed since it was taken. A live
    # worker also holds countdown/ETA tasks unacknowledged until they run, so the timeout must exceed
    # the longest countdown we schedule -- ``enforce_max_duration`` waits maxDurationSeconds (300 s by
    # default) -- or those tasks run twice. Tests set it to a few seconds to see a redelivery.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("VOICECALL_BROKER_VISIBILITY_TIMEOUT", default=3600),
    }
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
CELERY_TASK_ALWAYS_EAGER = env.bool("VOICECALL_CELERY_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "reap-stale-calls": {"task": "calls.tasks.reap_stale_calls", "schedule": 30.0},
    "prune-old-records": {"task": "calls.tasks.prune_old_records", "schedule": 3600.0},
    # The transactional outbox: effects whose dispatch failed at commit (calls.services.effects).
    "dispatch-pending-effects": {"task": "calls.tasks.dispatch_pending_effects",
                                 "schedule": env.float("VOICECALL_OUTBOX_REDISPATCH_SECONDS", default=10.0)},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "calls": {"handlers": ["console"], "level": env.str("VOICECALL_LOG_LEVEL", default="INFO")},
        "providers": {"handlers": ["console"], "level": env.str("VOICECALL_LOG_LEVEL", default="INFO")},
    },
}

# Tests that start a real daphne or Celery process need a database file the child can open too,
# so the SQLite test database lives on disk (PostgreSQL test databases are shared anyway).
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-voicecall.sqlite3")}
