"""Settings for every role (web, worker, relay, bridge, scheduler, log sink).

Each value comes from the environment with a typed default. A bad value fails at start-up
with ImproperlyConfigured naming the variable. Production (`DJANGO_ENV=production`) has no
fallbacks for secrets or hosts.
"""

from __future__ import annotations

import re

from django.core.exceptions import ImproperlyConfigured

from config.env import BASE_DIR, DATA_DIR, dev_secret_key, env, load_env_file

load_env_file()

# --- Core -------------------------------------------------------------------------------
DJANGO_ENV = env.str("DJANGO_ENV", default="dev")
if DJANGO_ENV not in ("dev", "production"):
    raise ImproperlyConfigured(f"DJANGO_ENV must be 'dev' or 'production', not {DJANGO_ENV!r}")
PRODUCTION = DJANGO_ENV == "production"

DEBUG = env.bool("DJANGO_DEBUG", default=False)
if PRODUCTION:
    SECRET_KEY = env.str("DJANGO_SECRET_KEY")  # required: raises naming the variable
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS")
else:
    SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or dev_secret_key()
    ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "jobs",
    "orchestration",
    "logs",
    "metrics",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

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

# --- Engines ----------------------------------------------------------------------------
# Unset URLs are filled from `.data/env` (written by `make run`) by load_env_file() above.
DATABASES = {"default": env.db_url("DATABASE_URL")}
DATABASES["default"].update(
    {
        # Roles are long-lived; keep connections but check them after a PostgreSQL restart.
        "CONN_MAX_AGE": env.int("DB_CONN_MAX_AGE", default=60),
        "CONN_HEALTH_CHECKS": True,
    }
)
REDIS_URL = env.str("REDIS_URL")
KAFKA_BOOTSTRAP_SERVERS = env.str("KAFKA_BOOTSTRAP_SERVERS", default="")
CLICKHOUSE_URL = env.str("CLICKHOUSE_URL", default="")

CACHES = {
    "default": {
        # Shared by every web process, so throttling and idempotency hints hold across them.
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="orch"),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Auth -------------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "/admin/login/"

# --- Internationalisation ---------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

# --- Static files -----------------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serve straight from app dirs in dev, so no collectstatic step is needed before `make run`.
WHITENOISE_USE_FINDERS = WHITENOISE_AUTOREFRESH = not PRODUCTION

# --- Security ---------------------------------------------------------------------------
# Bodies above this are refused with 413 before they are parsed (a bulk of 1,000 jobs with
# modest payloads fits comfortably).
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("API_MAX_BODY_BYTES", default=10 * 1024 * 1024)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
    # TLS usually ends at the load balancer; turn these on once it is HTTPS end to end.
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)

# --- API --------------------------------------------------------------------------------
API_RATE_LIMIT = env.str("API_RATE_LIMIT", default="100/s")
if not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", API_RATE_LIMIT):
    raise ImproperlyConfigured(f"API_RATE_LIMIT must look like '100/s' or '6000/m', not {API_RATE_LIMIT!r}")

API_THROTTLE_PREFIX = env.str("API_THROTTLE_PREFIX", default="throttle")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_THROTTLE_CLASSES": ["config.rest.PerUserThrottle"],
    "DEFAULT_THROTTLE_RATES": {"user": API_RATE_LIMIT, "anon": API_RATE_LIMIT},
    "DEFAULT_RENDERER_CLASSES": [
        "config.rest.ORJSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_PARSER_CLASSES": ["config.rest.ORJSONParser"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "config.rest.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Job orchestration API",
    "DESCRIPTION": "Submit jobs and workflows, inspect their state and logs.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.JobStatus",
        "AttemptStatusEnum": "jobs.models.AttemptStatus",
    },
}

# --- Jobs -------------------------------------------------------------------------------
JOBS_BULK_MAX = env.int("JOBS_BULK_MAX", default=1000)
# Modules imported at start-up so their @handler registrations exist in every role.
JOB_HANDLER_MODULES = env.list("JOB_HANDLER_MODULES", default=["orchestration.builtin_handlers"])

# --- Logging ----------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
}

DATA_DIR = DATA_DIR

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True  # results live on the job row in PostgreSQL
