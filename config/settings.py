"""Settings for every role (web, worker, relay, bridge, scheduler, log sink).

Each value comes from the environment with a typed default. A bad value fails at start-up
with ImproperlyConfigured naming the variable. Production (`DJANGO_ENV=production`) has no
fallbacks for secrets or hosts.
"""

from __future__ import annotations

import importlib.util
import re
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from config import key_rates, queues
from config.env import BASE_DIR, DATA_DIR, dev_secret_key, env, load_env_file

load_env_file()

# --- Core -------------------------------------------------------------------------------
DJANGO_ENV = env.str("DJANGO_ENV", default="dev")
if DJANGO_ENV not in ("dev", "production"):
    raise ImproperlyConfigured(f"DJANGO_ENV must be 'dev' or 'production', not {DJANGO_ENV!r}")
PRODUCTION = DJANGO_ENV == "production"

DEBUG = env.bool("DJANGO_DEBUG", default=False)
if PRODUCTION and DEBUG:
    # Debug pages show settings, SQL and tracebacks to anyone who can make a request fail.
    raise ImproperlyConfigured("DJANGO_DEBUG must not be true when DJANGO_ENV is 'production'")
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
    "django.contrib.postgres",  # ArrayField (Django 6 checks that the app is installed)
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "django_prometheus",
    # Ours, by their AppConfig: the installed distribution names them under its own root.
    "dashboard.apps.DashboardConfig",
    "jobs.apps.JobsConfig",
    "workflows.apps.WorkflowsConfig",
    "orchestration.apps.OrchestrationConfig",
    "logs.apps.LogsConfig",
    "metrics.apps.MetricsConfig",
]
if importlib.util.find_spec("django.tasks") is None:
    # Django 5.2: the Tasks framework comes from the django-tasks backport (Django 6 has it built in).
    INSTALLED_APPS.append("django_tasks")
if not PRODUCTION and (BASE_DIR / "devtools").is_dir():  # the checkout's, not an installed copy's
    INSTALLED_APPS.append("devtools.apps.DevtoolsConfig")  # tooling: `manage.py bench`, `manage.py chaos`

MIDDLEWARE = [
    # Request counts and latencies by view and status (django-prometheus), around everything.
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every request acts in an audit context (its source and request id): jobs.audit.
    "jobs.audit.AuditContext",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
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
                "dashboard.context_processors.links",
            ],
            "builtins": ["dashboard.templatetags.dashboard_tags"],
        },
    },
]

# --- Engines ----------------------------------------------------------------------------
# Unset URLs are filled from `.data/env` (written by `make run`) by load_env_file() above.
DATABASES = {"default": env.db_url("DATABASE_URL")}
# Every connection has limits, so a hung server, a dropped link or one slow statement fails a
# request, a tick or a round instead of hanging a role for good: a statement runs at most
# DB_STATEMENT_TIMEOUT_SECONDS (`manage.py migrate` lifts it: an index built concurrently on
# a large table takes longer), a transaction may sit idle at most
# DB_IDLE_IN_TRANSACTION_SECONDS, a connect waits DB_CONNECT_TIMEOUT_SECONDS, and data sent
# that the server does not acknowledge within DB_SOCKET_TIMEOUT_SECONDS closes the connection
# (TCP keepalives find a silent peer meanwhile). 0 turns each off.
DB_STATEMENT_TIMEOUT_SECONDS = env.float("DB_STATEMENT_TIMEOUT_SECONDS", default=30.0)
DB_IDLE_IN_TRANSACTION_SECONDS = env.float("DB_IDLE_IN_TRANSACTION_SECONDS", default=60.0)
DB_CONNECT_TIMEOUT_SECONDS = env.int("DB_CONNECT_TIMEOUT_SECONDS", default=5)
DB_SOCKET_TIMEOUT_SECONDS = env.float("DB_SOCKET_TIMEOUT_SECONDS", default=30.0)
for _name, _value in (
    ("DB_STATEMENT_TIMEOUT_SECONDS", DB_STATEMENT_TIMEOUT_SECONDS),
    ("DB_IDLE_IN_TRANSACTION_SECONDS", DB_IDLE_IN_TRANSACTION_SECONDS),
    ("DB_CONNECT_TIMEOUT_SECONDS", DB_CONNECT_TIMEOUT_SECONDS),
    ("DB_SOCKET_TIMEOUT_SECONDS", DB_SOCKET_TIMEOUT_SECONDS),
):  # fmt: skip
    if _value < 0:
        raise ImproperlyConfigured(f"{_name} must be 0 (off) or more, not {_value}")
DATABASES["default"].update(
    {
        # Roles are long-lived; keep connections but check them after a PostgreSQL restart.
        "CONN_MAX_AGE": env.int("DB_CONN_MAX_AGE", default=60),
        "CONN_HEALTH_CHECKS": True,
        "OPTIONS": {
            **DATABASES["default"].get("OPTIONS", {}),
            "connect_timeout": DB_CONNECT_TIMEOUT_SECONDS,
            "options": f"-c statement_timeout={int(DB_STATEMENT_TIMEOUT_SECONDS * 1000)}"
            f" -c idle_in_transaction_session_timeout={int(DB_IDLE_IN_TRANSACTION_SECONDS * 1000)}",
            "keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
            "tcp_user_timeout": int(DB_SOCKET_TIMEOUT_SECONDS * 1000),
        },
    }
)  # fmt: skip
# The planner's price of a random page read for our sessions (SET at connect; 0: the
# server's own). PostgreSQL's default of 4 is for spinning disks: with it, a seq scan of a
# 20,000-row jobs table looked cheaper than 128 primary-key probes and a batch statement
# took 4 times as long (tests/jobs/test_plans.py). 1.1 is the usual value for SSDs and for
# tables that fit in memory, as the live jobs do.
DB_RANDOM_PAGE_COST = env.float("DB_RANDOM_PAGE_COST", default=1.1)
if DB_RANDOM_PAGE_COST < 0:
    raise ImproperlyConfigured(f"DB_RANDOM_PAGE_COST must be 0 (the server's) or positive, not {DB_RANDOM_PAGE_COST}")
REDIS_URL = env.str("REDIS_URL")
KAFKA_BOOTSTRAP_SERVERS = env.str("KAFKA_BOOTSTRAP_SERVERS", default="")
# librdkafka debug contexts for every client (e.g. "cgrp,topic"): for diagnosing group joins.
KAFKA_DEBUG = env.str("KAFKA_DEBUG", default="")
CLICKHOUSE_URL = env.str("CLICKHOUSE_URL", default="")

# Every Redis client of ours comes from this one pool per process (django-redis): the cache
# API and `config.broker.client()` (django_redis.get_redis_connection, raw keys: no KEY_PREFIX).
# A command (or a connect) waits at most this long, so a hung Redis fails a request, a beat or
# a tick instead of hanging it; 0 waits forever. The pool refuses ("Too many connections")
# beyond REDIS_MAX_CONNECTIONS at once in one process (redis-py's own default is 100).
REDIS_SOCKET_TIMEOUT = env.float("REDIS_SOCKET_TIMEOUT", default=5.0)
REDIS_CONNECT_TIMEOUT = env.float("REDIS_CONNECT_TIMEOUT", default=5.0)
REDIS_MAX_CONNECTIONS = env.int("REDIS_MAX_CONNECTIONS", default=100)
CACHES = {
    "default": {
        # Shared by every process. Nothing of ours caches through it today (the throttle
        # counts with raw INCRs, idempotency is a PostgreSQL unique index); it carries the pool.
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="orch"),
        "OPTIONS": {
            "SOCKET_TIMEOUT": REDIS_SOCKET_TIMEOUT,
            "SOCKET_CONNECT_TIMEOUT": REDIS_CONNECT_TIMEOUT,
            "CONNECTION_POOL_KWARGS": {"max_connections": REDIS_MAX_CONNECTIONS},
            # Not IGNORE_EXCEPTIONS: a Redis outage raises, as Django's own RedisCache did.
        },
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
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = PRODUCTION
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])
    # TLS usually ends at the load balancer; turn these on once it is HTTPS end to end.
    SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=False)
    SECURE_HSTS_SECONDS = env.int("DJANGO_SECURE_HSTS_SECONDS", default=0)

# --- Limits at the API boundary ------------------------------------------------------------
# Each error that enforces one names its variable; the OpenAPI schema states them all.
# Bodies above this are refused with 413 while they are read (a bulk of 1,000 jobs with
# modest payloads fits comfortably). Django's name for it guards its own forms too.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("API_MAX_BODY_BYTES", default=10 * 1024 * 1024)
# Objects and arrays in a JSON body nest at most this deep (400 beyond). orjson writes at most
# 254 levels, and every job payload is wrapped again on its way to a worker.
API_JSON_MAX_DEPTH = env.int("API_JSON_MAX_DEPTH", default=64)
# A job's payload (jobs, bulk, schedules, workflow tasks and compensations), as JSON.
JOB_PAYLOAD_MAX_BYTES = env.int("JOB_PAYLOAD_MAX_BYTES", default=2 * 1024 * 1024)
# A log record's `message` and `exception` (characters) and `extra` (bytes as JSON) in
# `POST logs/`: over them is a 400. The platform's own records are never refused for their
# size: the log shipper cuts them to these limits with a marker (logs.shipping).
LOG_MESSAGE_MAX_CHARS = env.int("LOG_MESSAGE_MAX_CHARS", default=64 * 1024)
LOG_EXTRA_MAX_BYTES = env.int("LOG_EXTRA_MAX_BYTES", default=64 * 1024)
for _name, _value in (
    ("API_MAX_BODY_BYTES", DATA_UPLOAD_MAX_MEMORY_SIZE), ("API_JSON_MAX_DEPTH", API_JSON_MAX_DEPTH),
    ("JOB_PAYLOAD_MAX_BYTES", JOB_PAYLOAD_MAX_BYTES), ("LOG_MESSAGE_MAX_CHARS", LOG_MESSAGE_MAX_CHARS),
    ("LOG_EXTRA_MAX_BYTES", LOG_EXTRA_MAX_BYTES),
):  # fmt: skip
    if _value < 1:
        raise ImproperlyConfigured(f"{_name} must be at least 1, not {_value}")

# --- API --------------------------------------------------------------------------------
API_RATE_LIMIT = env.str("API_RATE_LIMIT", default="100/s")
if not re.fullmatch(r"\d+/(s|sec|second|m|min|minute|h|hour|d|day)", API_RATE_LIMIT):
    raise ImproperlyConfigured(f"API_RATE_LIMIT must look like '100/s' or '6000/m', not {API_RATE_LIMIT!r}")

API_THROTTLE_PREFIX = env.str("API_THROTTLE_PREFIX", default="throttle")
# Reverse proxies in front of the web (load balancer, ingress) that append the address they saw
# to X-Forwarded-For. 0 (the default): the header is ignored and REMOTE_ADDR is the client, as
# when clients reach the web directly. n: the n-th address from the right is the client.
# Anything left of it is written by the client, so a higher number than the real count of
# proxies lets anyone dodge the per-IP throttle of `auth/token/` by rotating the header.
API_TRUSTED_PROXIES = env.int("API_TRUSTED_PROXIES", default=0)
if API_TRUSTED_PROXIES < 0:
    raise ImproperlyConfigured(f"API_TRUSTED_PROXIES must be 0 or more, not {API_TRUSTED_PROXIES}")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated", "jobs.permissions.LooksOnly"],
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
    "NUM_PROXIES": API_TRUSTED_PROXIES,  # DRF's own client address agrees with our throttle's
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Job orchestration API",
    "DESCRIPTION": (
        "Submit jobs and workflows, inspect their state and logs.\n\n"
        f"Every request body is at most {DATA_UPLOAD_MAX_MEMORY_SIZE:,} bytes (API_MAX_BODY_BYTES; 413 beyond) "
        f"and nests objects and arrays at most {API_JSON_MAX_DEPTH} levels deep (API_JSON_MAX_DEPTH; 400 beyond). "
        "No text anywhere in a body, keys included, may hold NUL (U+0000) or a lone surrogate (400). "
        "The other limits are stated on the fields they apply to; every error names its setting."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.JobStatus",
        "AttemptStatusEnum": "jobs.models.AttemptStatus",
    },
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.schema.add_error_responses",
    ],
}

# --- Jobs -------------------------------------------------------------------------------
JOBS_BULK_MAX = env.int("JOBS_BULK_MAX", default=1000)
# Modules imported at start-up so their @handler registrations exist in every role.
JOB_HANDLER_MODULES = env.list("JOB_HANDLER_MODULES", default=[])
# Django tasks (jobs/task_backend.py): the modules whose @task functions every role imports
# and workers run, each as jobs of type "<module>.<function>". Only these: a job's type never
# makes a process import anything.
JOB_TASK_MODULES = env.list("JOB_TASK_MODULES", default=["orchestration.demo_tasks"])
TASKS = {
    "default": {
        "BACKEND": "jobs.task_backend.JobsBackend",
        # Whose jobs enqueued tasks become: a login-less account made on first use by default.
        "OPTIONS": {"OWNER": env.str("TASKS_OWNER", default="tasks")},
    }
}
# `jobs/?log_contains=` asks ClickHouse for the matching job ids first; more than this is an
# error asking for a narrower filter rather than a huge IN list.
JOBS_LOG_CONTAINS_MAX = env.int("JOBS_LOG_CONTAINS_MAX", default=10_000)
# Where the dashboard links to Flower (its own port in the dev stack).
FLOWER_URL = env.str("FLOWER_URL", default=f"http://127.0.0.1:{env.int('FLOWER_PORT', default=5555)}/")
# Where a job's page links its trace, e.g. Jaeger's "http://localhost:16686/trace/{trace_id}"
# (empty: the page shows the trace id only). Tracing itself is set by the OTEL_* variables
# (config/tracing.py).
TRACE_UI_URL = env.str("TRACE_UI_URL", default="")
if TRACE_UI_URL and "{trace_id}" not in TRACE_UI_URL:
    raise ImproperlyConfigured(
        f"TRACE_UI_URL must contain {{trace_id}}, e.g. http://localhost:16686/trace/{{trace_id}}, not {TRACE_UI_URL!r}"
    )
LOGIN_URL = "/login/"
LOGIN_REDIRECT_URL = "/"

# Role heartbeats in Redis (metrics/heartbeat.py).
HEARTBEAT_SECONDS = env.float("HEARTBEAT_SECONDS", default=5.0)
HEARTBEAT_PREFIX = env.str("HEARTBEAT_PREFIX", default="heartbeat")
# The scheduler leader counts jobs per state, bridge lag and breakers this often (metrics).
SCHEDULER_STATS_SECONDS = env.float("SCHEDULER_STATS_SECONDS", default=15.0)
# /metrics needs `Authorization: Bearer <METRICS_TOKEN>` when set (production).
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")
if PRODUCTION and not METRICS_TOKEN:
    raise ImproperlyConfigured("METRICS_TOKEN must be set in production: /metrics is not public")

# Circuit breakers per job type (orchestration/breaker.py).
BREAKER_ENABLED = env.bool("BREAKER_ENABLED", default=True)
BREAKER_WINDOW_SECONDS = env.float("BREAKER_WINDOW_SECONDS", default=60.0)
BREAKER_MIN_CALLS = env.int("BREAKER_MIN_CALLS", default=20)
BREAKER_FAILURE_RATIO = env.float("BREAKER_FAILURE_RATIO", default=0.5)
BREAKER_OPEN_SECONDS = env.float("BREAKER_OPEN_SECONDS", default=30.0)
BREAKER_PROBE_SECONDS = env.float("BREAKER_PROBE_SECONDS", default=300.0)  # a probe's result is awaited this long
BREAKER_FLUSH_SECONDS = env.float("BREAKER_FLUSH_SECONDS", default=1.0)
BREAKER_CACHE_SECONDS = env.float("BREAKER_CACHE_SECONDS", default=1.0)
BREAKER_PREFIX = env.str("BREAKER_PREFIX", default="breaker")
WORKFLOW_MAX_TASKS = env.int("WORKFLOW_MAX_TASKS", default=10_000)
WORKFLOW_MAP_MAX_WIDTH = env.int("WORKFLOW_MAP_MAX_WIDTH", default=10_000)  # children of one map step, at most
JOB_FAILED_LOG_LINES = env.int("JOB_FAILED_LOG_LINES", default=10)  # shown per failed attempt in jobs/{id}

# --- Logging ----------------------------------------------------------------------------
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
KAFKA_LOGS_TOPIC = env.str("KAFKA_LOGS_TOPIC", default="logs")
KAFKA_LOGS_DLQ_TOPIC = env.str("KAFKA_LOGS_DLQ_TOPIC", default=f"{KAFKA_LOGS_TOPIC}.dlq")
KAFKA_LOGS_PARTITIONS = env.int("KAFKA_LOGS_PARTITIONS", default=4)
KAFKA_LOG_SINK_GROUP = env.str("KAFKA_LOG_SINK_GROUP", default="orchestration-log-sink")
# Every role ships its records to Kafka `logs` (logs.shipping) when Kafka is configured.
LOG_SHIPPING = env.bool("LOG_SHIPPING", default=bool(KAFKA_BOOTSTRAP_SERVERS))
LOG_SHIPPING_LEVEL = env.str("LOG_SHIPPING_LEVEL", default=LOG_LEVEL)
LOG_HANDLER_QUEUE_SIZE = env.int("LOG_HANDLER_QUEUE_SIZE", default=10_000)
LOG_HANDLER_FLUSH_SECONDS = env.float("LOG_HANDLER_FLUSH_SECONDS", default=0.2)
# The sink inserts when it holds this many records or the oldest has waited this long.
# A job that logged waits (at most this long) for its lines to reach Kafka before its outcome
# is recorded, so a worker killed at that moment loses none of a finished job's lines.
LOG_FLUSH_BEFORE_OUTCOME_SECONDS = env.float("LOG_FLUSH_BEFORE_OUTCOME_SECONDS", default=5.0)
LOG_SINK_BATCH_SIZE = env.int("LOG_SINK_BATCH_SIZE", default=20_000)
LOG_SINK_BATCH_SECONDS = env.float("LOG_SINK_BATCH_SECONDS", default=0.5)
LOG_RETENTION_DAYS = env.int("LOG_RETENTION_DAYS", default=30)
LOGS_INGEST_MAX = env.int("LOGS_INGEST_MAX", default=1000)
CLICKHOUSE_LOGS_TABLE = env.str("CLICKHOUSE_LOGS_TABLE", default="logs")
# Whole seconds: clickhouse-connect takes integers.
CLICKHOUSE_CONNECT_TIMEOUT = env.int("CLICKHOUSE_CONNECT_TIMEOUT", default=2)
CLICKHOUSE_QUERY_TIMEOUT = env.int("CLICKHOUSE_QUERY_TIMEOUT", default=30)

LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"()": "logs.formatting.KeyValueFormatter", "format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        # One line per task received and per task finished is noise at hundreds of jobs a
        # second; our own job.* records say what happened to each job.
        "celery.app.trace": {"level": "WARNING"},
        "celery.worker.strategy": {"level": "WARNING"},
    },
}
if LOG_SHIPPING:
    LOGGING["handlers"]["kafka"] = {
        "()": "logs.shipping.KafkaLogHandler",
        "bootstrap_servers": KAFKA_BOOTSTRAP_SERVERS,
        "topic": KAFKA_LOGS_TOPIC,
        "queue_size": LOG_HANDLER_QUEUE_SIZE,
        "flush_interval": LOG_HANDLER_FLUSH_SECONDS,
        "level": LOG_SHIPPING_LEVEL,
        "message_max_chars": LOG_MESSAGE_MAX_CHARS,
        "extra_max_bytes": LOG_EXTRA_MAX_BYTES,
    }
    LOGGING["root"]["handlers"].append("kafka")

DATA_DIR = DATA_DIR

# --- Dispatch: relay, bridge, worker ------------------------------------------------------
KAFKA_JOBS_TOPIC = env.str("KAFKA_JOBS_TOPIC", default="jobs")
KAFKA_JOBS_DLQ_TOPIC = env.str("KAFKA_JOBS_DLQ_TOPIC", default=f"{KAFKA_JOBS_TOPIC}.dlq")
KAFKA_JOBS_DEAD_TOPIC = env.str("KAFKA_JOBS_DEAD_TOPIC", default=f"{KAFKA_JOBS_TOPIC}.dead")
KAFKA_JOBS_PARTITIONS = env.int("KAFKA_JOBS_PARTITIONS", default=4)
# Bridges that run at once (the dev stack starts this many; `docker compose --scale bridge=N`
# should set it too). Each partition has one bridge, so each bridge checks at start that the
# jobs topic has at least this many partitions (growing it to KAFKA_JOBS_PARTITIONS first).
BRIDGES = env.int("BRIDGES", default=1)
if not 1 <= BRIDGES <= KAFKA_JOBS_PARTITIONS:
    raise ImproperlyConfigured(f"BRIDGES must be 1 to KAFKA_JOBS_PARTITIONS ({KAFKA_JOBS_PARTITIONS}), not {BRIDGES}")
KAFKA_BRIDGE_GROUP = env.str("KAFKA_BRIDGE_GROUP", default="orchestration-bridge")
# The largest message our producers send (librdkafka's message.max.bytes); topics we create
# accept a little more (max.message.bytes). Why these numbers: config/kafka.py.
KAFKA_MESSAGE_MAX_BYTES = env.int("KAFKA_MESSAGE_MAX_BYTES", default=1_000_000)
# librdkafka's default 45 s session makes joining a group take ~25 s on the embedded
# broker; 6 s / 1 s joins in ~3 s and still tolerates a GC pause or a slow poll.
KAFKA_SESSION_TIMEOUT_MS = env.int("KAFKA_SESSION_TIMEOUT_MS", default=6000)
KAFKA_HEARTBEAT_INTERVAL_MS = env.int("KAFKA_HEARTBEAT_INTERVAL_MS", default=1000)
# Our consumers poll at least every second (arroyo and the log sink keep polling while paused).
KAFKA_MAX_POLL_INTERVAL_MS = env.int("KAFKA_MAX_POLL_INTERVAL_MS", default=20_000)
# The longest a consumer's fetch waits for data. Kafka answers as soon as data arrives; the
# embedded Tansu answers an empty fetch only when the wait ends, so at light load this is
# part of every job's submit→start latency (half of it on average).
KAFKA_FETCH_WAIT_MAX_MS = env.int("KAFKA_FETCH_WAIT_MAX_MS", default=10)

RELAY_BATCH_SIZE = env.int("RELAY_BATCH_SIZE", default=1000)
RELAY_POLL_SECONDS = env.float("RELAY_POLL_SECONDS", default=1.0)  # fallback when no NOTIFY arrives
# While dispatches wait for room in their queue's window (or for its rate), the relay looks
# again this often: room appears as workers claim jobs, which notify nothing.
RELAY_WINDOW_POLL_SECONDS = env.float("RELAY_WINDOW_POLL_SECONDS", default=0.02)

# Declared queues (config/queues.py): a job may name only these. Each has a window, the most
# of its jobs dispatched and not yet started (Kafka, Redis and prefetch hold only that much);
# its backlog waits in PostgreSQL and the relay picks the next jobs fairly across owners.
QUEUE_WINDOW = env.int("QUEUE_WINDOW", default=1000)
# Fair sharing between owners: the relay's weighted pick and express lane, the workers' share
# of slots. Off (false), a queue's room goes first come, first served, as a plain queue would
# do it (`manage.py bench fairness` measures both); windows and rates hold either way.
FAIR_DISPATCH = env.bool("FAIR_DISPATCH", default=True)
# One owner's long jobs hold at most this share of a queue's workers (orchestration.fair_slots),
# so another owner's job always finds one; an owner's OwnerShare.slot_share, or a queue's own
# `slot_share` in QUEUES, overrides it. 1 turns it off. A run is long past FAIR_LONG_SECONDS;
# a kind of job (owner and type) is remembered as short or long FAIR_KIND_MEMORY_SECONDS.
FAIR_SLOT_SHARE = env.float("FAIR_SLOT_SHARE", default=0.5)
FAIR_LONG_SECONDS = env.float("FAIR_LONG_SECONDS", default=1.0)
FAIR_KIND_MEMORY_SECONDS = env.float("FAIR_KIND_MEMORY_SECONDS", default=600.0)
FAIR_SLOTS_PREFIX = env.str("FAIR_SLOTS_PREFIX", default="slots")
if not 0 < FAIR_SLOT_SHARE <= 1:
    raise ImproperlyConfigured(f"FAIR_SLOT_SHARE must be above 0 and at most 1, not {FAIR_SLOT_SHARE}")
if FAIR_LONG_SECONDS <= 0 or FAIR_KIND_MEMORY_SECONDS < 1:
    raise ImproperlyConfigured("FAIR_LONG_SECONDS must be above 0 and FAIR_KIND_MEMORY_SECONDS at least 1")
try:
    QUEUES = queues.parse(env.str("QUEUES", default="default"), window=QUEUE_WINDOW, slot_share=FAIR_SLOT_SHARE)
except queues.QueueError as _exc:
    raise ImproperlyConfigured(f"QUEUES: {_exc}") from None
# Under a backlog the bridge packs up to this many jobs of one queue into one Celery message
# (a worker claims and records them with one statement each); 1 turns batching off. A batch
# goes out full, as soon as the bridge has caught up (so an idle system sends each job
# alone, at once), or after the linger. Both water marks count Celery messages.
BRIDGE_BATCH_SIZE = env.int("BRIDGE_BATCH_SIZE", default=32)
# ... and up to this many while the queue already has messages waiting in Redis: every
# worker's prefetch is full then, so bigger batches cost no parallelism, only per-message work.
BRIDGE_BATCH_MAX = env.int("BRIDGE_BATCH_MAX", default=128)
BRIDGE_BATCH_LINGER_MS = env.float("BRIDGE_BATCH_LINGER_MS", default=5.0)
# A worker whose current job of a batch has run this long gives the batch's jobs still
# waiting back to the queue, for idle workers: a batch of slow jobs does not sit on one.
BATCH_HAND_BACK_SECONDS = env.float("BATCH_HAND_BACK_SECONDS", default=1.0)
# Redis keys of the queues' dispatch rate buckets (orchestration.ratelimit).
RATE_LIMIT_PREFIX = env.str("RATE_LIMIT_PREFIX", default="rate")
# Dispatch rates per queue are declared in QUEUES (`emails rate=5/s`), for all relays together.
if env.str("QUEUE_RATE_LIMITS", default=""):
    raise ImproperlyConfigured(
        'QUEUE_RATE_LIMITS is gone: declare the rate with the queue, e.g. QUEUES="default; emails rate=5/s" '
        "(it now holds across every relay, not per bridge process)"
    )
# How often the bridge commits consumed offsets: a crash re-enqueues at most this much work
# (duplicates whose claims lose), while committing less often saves broker round trips.
BRIDGE_COMMIT_SECONDS = env.float("BRIDGE_COMMIT_SECONDS", default=1.0)

# A running attempt owns its job until the lease expires; the worker renews it every
# LEASE_SECONDS / 3, so a dead worker's job is noticed within one lease.
JOB_LEASE_SECONDS = env.float("JOB_LEASE_SECONDS", default=30.0)
# After a cancel request, how long a handler gets to stop by itself before it is interrupted.
JOB_CANCEL_GRACE_SECONDS = env.float("JOB_CANCEL_GRACE_SECONDS", default=5.0)
WORKER_QUEUES = env.list("WORKER_QUEUES", default=["default"])
for _queue in WORKER_QUEUES:
    if _problem := queues.problem(_queue, QUEUES):
        raise ImproperlyConfigured(f"WORKER_QUEUES: {_problem}")
# Exception classes (dotted paths) that dead-letter at once, like PermanentError does.
JOB_PERMANENT_EXCEPTIONS = env.list("JOB_PERMANENT_EXCEPTIONS", default=[])
# What a handler hands back is stored whatever it is (jobs/outputs.py): a result larger than
# this (as JSON) is replaced by a marker with a preview; longer error texts and tracebacks are
# cut with a marker. The error also travels in the `jobs.dead` message, which stays far below
# Kafka's message size limit this way.
JOB_RESULT_MAX_BYTES = env.int("JOB_RESULT_MAX_BYTES", default=1024 * 1024)
# Rates of jobs per rate_limit_key for every owner's keys (config.key_rates: "stripe-* 100/s
# burst=20; mail:* 1000/h"); owners and staff add more through the API. A worker reads an
# owner's limits at most this often, so a changed limit holds everywhere within that time.
try:
    JOB_RATE_LIMITS = key_rates.parse(env.str("JOB_RATE_LIMITS", default=""))
except key_rates.RateError as _exc:
    raise ImproperlyConfigured(f"JOB_RATE_LIMITS: {_exc}") from None
JOB_RATE_LIMIT_CACHE_SECONDS = env.float("JOB_RATE_LIMIT_CACHE_SECONDS", default=5.0)
# `ctx.progress(...)` writes a running job's progress at most this often (jobs/progress.py).
JOB_PROGRESS_INTERVAL_SECONDS = env.float("JOB_PROGRESS_INTERVAL_SECONDS", default=0.5)
JOB_ERROR_MAX_CHARS = env.int("JOB_ERROR_MAX_CHARS", default=16 * 1024)
JOB_TRACEBACK_MAX_CHARS = env.int("JOB_TRACEBACK_MAX_CHARS", default=64 * 1024)

# --- Scheduler ------------------------------------------------------------------------------
SCHEDULER_TICK_SECONDS = env.float("SCHEDULER_TICK_SECONDS", default=0.5)
# The leader's Redis lock lives this long unless renewed (every tick): a standby takes over
# within about this long after the leader dies.
SCHEDULER_LOCK_TTL_SECONDS = env.float("SCHEDULER_LOCK_TTL_SECONDS", default=5.0)
SCHEDULER_BATCH_SIZE = env.int("SCHEDULER_BATCH_SIZE", default=1000)
# Retention: finished jobs (and their attempts) leave PostgreSQL this many days after they
# finished, for the ClickHouse archive (CLICKHOUSE_JOBS_ARCHIVE_TABLE), where the API, the
# dashboard and the admin still find them. 0 keeps them for good; per queue, e.g.
# "emails=7,reports=365". Nothing is archived without CLICKHOUSE_URL. A scheduler tick archives
# at most JOB_RETENTION_BATCH jobs, and looks at most JOB_RETENTION_SCAN_ROWS rows for them.
JOB_RETENTION_DAYS = env.int("JOB_RETENTION_DAYS", default=30)


def _days_by_queue(text: str) -> dict[str, int]:
    days: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        queue, sep, value = (x.strip() for x in part.partition("="))
        if not sep or not queue or not value.isdigit():
            raise ImproperlyConfigured(f"JOB_RETENTION_DAYS_BY_QUEUE: {part!r} is not queue=days (e.g. emails=7)")
        days[queue] = int(value)
    return days


JOB_RETENTION_DAYS_BY_QUEUE = _days_by_queue(env.str("JOB_RETENTION_DAYS_BY_QUEUE", default=""))
JOB_RETENTION_BATCH = env.int("JOB_RETENTION_BATCH", default=500)
JOB_RETENTION_SCAN_ROWS = env.int("JOB_RETENTION_SCAN_ROWS", default=5000)
# Retention is background work: a batch at most this often, and none while this many jobs are
# on their way to a worker (outbox rows and QUEUED jobs: a burst is arriving). 250 a second is 21 million jobs a day.
JOB_RETENTION_INTERVAL_SECONDS = env.float("JOB_RETENTION_INTERVAL_SECONDS", default=2.0)
JOB_RETENTION_PAUSE_BACKLOG = env.int("JOB_RETENTION_PAUSE_BACKLOG", default=100)
CLICKHOUSE_JOBS_ARCHIVE_TABLE = env.str("CLICKHOUSE_JOBS_ARCHIVE_TABLE", default="jobs_archive")
if JOB_RETENTION_DAYS < 0:
    raise ImproperlyConfigured("JOB_RETENTION_DAYS must be 0 (keep) or more")
# Schedulers that share this name (in Redis and in the PostgreSQL fence) elect one leader.
SCHEDULER_LOCK_KEY = env.str("SCHEDULER_LOCK_KEY", default="orchestration:scheduler")
# A QUEUED job nobody claimed this long after its message left Kafka (the bridge has no lag
# and its Celery queue is empty) lost its message: it is dispatched again with a new token.
DISPATCH_STALE_SECONDS = env.float("DISPATCH_STALE_SECONDS", default=60.0)

# --- Celery -----------------------------------------------------------------------------
CELERY_BROKER_URL = REDIS_URL
CELERY_TASK_IGNORE_RESULT = True  # results live on the job row in PostgreSQL
CELERY_TASK_SERIALIZER = CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "default"
# Ack after the task ran: a worker killed mid-job leaves its message to be redelivered.
# Redelivery is harmless (the claim is guarded by the dispatch token) and the lease reaper
# does not depend on it.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
# Prefetch a few messages per process: throughput on no-op jobs, while the bridge's
# high-water mark still bounds how much work sits in Redis.
CELERY_WORKER_PREFETCH_MULTIPLIER = env.int("CELERY_WORKER_PREFETCH_MULTIPLIER", default=4)
# Recycle processes now and then so a leaking handler cannot grow a worker forever.
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("CELERY_WORKER_MAX_TASKS_PER_CHILD", default=10000)
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_WORKER_SEND_TASK_EVENTS = env.bool("CELERY_TASK_EVENTS", default=True)  # Flower shows tasks
# "task-sent" would cost the bridge one more Redis round trip per job; received/started/
# succeeded are enough for Flower.
CELERY_TASK_SEND_SENT_EVENT = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # An unacked message comes back after this long. Longer than almost any job, so a slow
    # job is rarely delivered twice; when it is, the second claim loses. Lost workers are
    # found by their lease, not by this.
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=3600),
    # Ten real priority levels, served in order (Redis emulates priority with one list each).
    "priority_steps": list(range(10)),
    "sep": ":",
    "queue_order_strategy": "priority",
}
