"""Django settings for Tandem, all read from the environment (see config/env.py).

The embedded default needs no server: SQLite in ``var/tandem.sqlite3`` and an
in-process dramatiq broker. Production and the test suite point
``DATABASE_URL`` at PostgreSQL and ``DRAMATIQ_BROKER_URL`` at Redis or RabbitMQ.
"""

from __future__ import annotations

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from config.env import (
    env_amount,
    env_bool,
    env_database,
    env_header_pair,
    env_int,
    env_int_list,
    env_list,
    env_str,
    env_url,
)

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("TANDEM_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "insecure-development-key-set-SECRET_KEY-in-production"  # noqa: S105
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]", "testserver"])

# --- HTTPS ------------------------------------------------------------------
# On by default whenever DEBUG is off, so a production start is `manage.py check
# --deploy` clean with nothing but DEBUG=0; `make run` (DEBUG=1) serves plain http.
# The test suite serves plain http with DEBUG=0, so it turns the redirect off itself
# (Makefile TEST_ENV, tests/conftest.py). Behind a proxy that ends TLS, name the header
# it sets (SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto: https"), or the redirect loops.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Load balancers probe health over plain http.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SECURE_PROXY_SSL_HEADER = env_header_pair("SECURE_PROXY_SSL_HEADER")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", not DEBUG)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", not DEBUG)
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", not DEBUG)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", not DEBUG)
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
if bad_origins := [o for o in CSRF_TRUSTED_ORIGINS if not o.startswith(("https://", "http://"))]:
    raise ImproperlyConfigured(
        f"CSRF_TRUSTED_ORIGINS: {bad_origins[0]!r} must start with https:// (or http://)"
    )
# A failed CSRF check under /api/ or /v1/ answers in the API's JSON (config/handlers.py).
CSRF_FAILURE_VIEW = "config.handlers.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "template_partials",
    "csp",
    "rest_framework",
    "drf_spectacular",
    "django_dramatiq",
    # TOTP two-factor sign-in (optional per person) and its backup codes: the
    # devices' tables and their throttling (core.two_factor).
    "django_otp",
    "django_otp.plugins.otp_totp",
    "django_otp.plugins.otp_static",
    "core",
    "providers",
    "marketplace",
    "marketplace.workloads",
    "marketplace.assignments",
    "runtime",
    "metering",
    "billing",  # the billing tables' migration history (billing/apps.py)
    "ledger",
    "pricing",
    "invoicing",
    "payments",
    "exports",
    "portal",
    # Last, so its ready() starts the in-process workers once every app is ready;
    # also the management commands that span apps (demo).
    "config.apps.ProjectConfig",
]

MIDDLEWARE = [
    "core.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Static files under gunicorn (with DEBUG on, runserver serves them itself).
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

# The name authenticator apps show beside a person's TOTP entry.
OTP_TOTP_ISSUER = "Tandem"

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

# --- database ---------------------------------------------------------------
DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{VAR_DIR / 'tandem.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # One writer at a time is SQLite's model; wait for the lock instead of failing,
    # and take it at BEGIN so a read-then-write transaction never deadlocks.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # Django's own cursors bind parameters client-side and never prepare; the
    # ledger's hot path uses server-side-bound cursors that prepare its few
    # statements once per connection (planning them costs more than running them).
    DATABASES["default"]["OPTIONS"] = {"prepare_threshold": 5}
    # Persistent connections: opening one costs more than a whole heartbeat or usage
    # batch. Each is checked before reuse, so a restarted database fails no request.
    DATABASES["default"]["CONN_MAX_AGE"] = env_int("DATABASE_CONN_MAX_AGE", 300, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- cache and rate limits (Redis when REDIS_URL is set) --------------------
REDIS_URL = env_url("REDIS_URL", "", schemes={"redis", "rediss"})
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "tandem",
            # A stalled Redis must not stall every request (rate limits fail open).
            "OPTIONS": {"socket_connect_timeout": 2, "socket_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
API_RATE_LIMIT_PER_MINUTE = env_int("API_RATE_LIMIT_PER_MINUTE", 600, minimum=1)

# --- broker -----------------------------------------------------------------
DRAMATIQ_BROKER_URL = env_url(
    "DRAMATIQ_BROKER_URL", "", schemes={"redis", "rediss", "amqp", "amqps"}
)
DRAMATIQ_INPROCESS_WORKERS = env_int("DRAMATIQ_INPROCESS_WORKERS", 2, minimum=0)
if DRAMATIQ_BROKER_URL.startswith("redis"):
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.redis.RedisBroker",
        "OPTIONS": {"url": DRAMATIQ_BROKER_URL},
    }
elif DRAMATIQ_BROKER_URL.startswith("amqp"):
    DRAMATIQ_BROKER = {
        "BROKER": "dramatiq.brokers.rabbitmq.RabbitmqBroker",
        "OPTIONS": {"url": DRAMATIQ_BROKER_URL},
    }
else:
    DRAMATIQ_BROKER = {"BROKER": "dramatiq.brokers.stub.StubBroker", "OPTIONS": {}}
DRAMATIQ_BROKER["MIDDLEWARE"] = [
    "dramatiq.middleware.AgeLimit",
    "dramatiq.middleware.TimeLimit",
    "dramatiq.middleware.Callbacks",
    "dramatiq.middleware.Retries",
    "django_dramatiq.middleware.DbConnectionsMiddleware",
]
DRAMATIQ_AUTODISCOVER_MODULES = ["tasks"]

# --- supply -----------------------------------------------------------------
# A node with no heartbeat for this long is unhealthy (its leases fail over).
NODE_HEARTBEAT_TIMEOUT_SECONDS = env_int("NODE_HEARTBEAT_TIMEOUT_SECONDS", 60, minimum=5)

# Marketplace: open-ended leases are held and settled a billing window at a time;
# a standing order without a deadline waits in the book at most this long.
MARKETPLACE_BILLING_WINDOW_SECONDS = env_int("MARKETPLACE_BILLING_WINDOW_SECONDS", 3600, minimum=60)
MARKETPLACE_ORDER_MAX_WAIT_SECONDS = env_int(
    "MARKETPLACE_ORDER_MAX_WAIT_SECONDS", 7 * 86_400, minimum=60
)
MARKETPLACE_MATCHING_INTERVAL_SECONDS = env_int(
    "MARKETPLACE_MATCHING_INTERVAL_SECONDS", 1, minimum=1
)
# Node assignments (marketplace.assignments): how long a node's claim on a piece of work
# lasts without a renewal (agents renew every third of it); whether the agents'
# blocking query waits on PostgreSQL's LISTEN/NOTIFY (else it re-reads every 0.25 s).
ASSIGNMENT_CLAIM_TTL_SECONDS = env_int("ASSIGNMENT_CLAIM_TTL_SECONDS", 30, minimum=3)
ASSIGNMENT_WAIT_NOTIFY = env_bool("ASSIGNMENT_WAIT_NOTIFY", True)
# A fine-tune whose trainer dies by itself (a non-zero exit, not a lost node) is
# re-queued this many times, resuming from its last checkpoint, before the job fails
# with the trainer's last error lines. A gang's members that have not all claimed
# within ASSIGNMENT_GANG_BARRIER_SECONDS are released and the order matched again.
ASSIGNMENT_TRAIN_RETRIES = env_int("ASSIGNMENT_TRAIN_RETRIES", 2, minimum=0)
ASSIGNMENT_GANG_BARRIER_SECONDS = env_int("ASSIGNMENT_GANG_BARRIER_SECONDS", 120, minimum=5)
# Blobs that nodes download and upload (marketplace.assignments.blobs): where the
# filesystem store keeps uploads (checkpoints, final models), how long a signed URL
# lives, and the largest upload one URL admits.
ASSIGNMENT_BLOB_DIR = Path(env_str("ASSIGNMENT_BLOB_DIR", str(VAR_DIR / "blobs")))
ASSIGNMENT_URL_TTL_SECONDS = env_int("ASSIGNMENT_URL_TTL_SECONDS", 300, minimum=10)
ASSIGNMENT_UPLOAD_MAX_BYTES = env_int("ASSIGNMENT_UPLOAD_MAX_BYTES", 64 * 1024**3, minimum=1024)
# Where node uploads live: "filesystem" (ASSIGNMENT_BLOB_DIR, URLs served by this server)
# or "s3" (a bucket of any S3-compatible store, presigned URLs; ASSIGNMENT_BLOB_DIR is
# then a cache of the downloads the control plane unpacks). Empty credentials: boto3's
# own chain (environment, instance role). Empty endpoint: AWS itself.
TANDEM_BLOB_STORE = env_str("TANDEM_BLOB_STORE", "filesystem")
if TANDEM_BLOB_STORE not in ("filesystem", "s3"):
    raise ImproperlyConfigured(f"TANDEM_BLOB_STORE={TANDEM_BLOB_STORE!r}: use filesystem or s3")
BLOB_S3_BUCKET = env_str("BLOB_S3_BUCKET", "")
BLOB_S3_ENDPOINT_URL = env_url("BLOB_S3_ENDPOINT_URL", "", schemes={"https", "http"})
BLOB_S3_REGION = env_str("BLOB_S3_REGION", "us-east-1")
BLOB_S3_ACCESS_KEY_ID = env_str("BLOB_S3_ACCESS_KEY_ID", "")
BLOB_S3_SECRET_ACCESS_KEY = env_str("BLOB_S3_SECRET_ACCESS_KEY", "")
if TANDEM_BLOB_STORE == "s3" and not BLOB_S3_BUCKET:
    raise ImproperlyConfigured("BLOB_S3_BUCKET must be set when TANDEM_BLOB_STORE=s3")
if bool(BLOB_S3_ACCESS_KEY_ID) != bool(BLOB_S3_SECRET_ACCESS_KEY):
    raise ImproperlyConfigured(
        "BLOB_S3_ACCESS_KEY_ID and BLOB_S3_SECRET_ACCESS_KEY: set both or neither"
    )

# --- workloads (files, fine-tunes, inference: the /v1/ API) ------------------
WORKLOADS_STORAGE_DIR = Path(env_str("WORKLOADS_STORAGE_DIR", str(VAR_DIR / "files")))
WORKLOADS_MAX_FILE_BYTES = env_int("WORKLOADS_MAX_FILE_BYTES", 1024**3, minimum=1024)
# A deployment with no request for this long is stopped (engine unloaded, lease ended).
INFERENCE_IDLE_SECONDS = env_int("INFERENCE_IDLE_SECONDS", 900, minimum=10)
# The most a managed job's order pays a provider per GPU-hour (the platform's cost:
# buyers pay per token), in micro-units of TANDEM_CURRENCY.
WORKLOADS_GPU_HOUR_LIMIT_MICROS = env_int("WORKLOADS_GPU_HOUR_LIMIT_MICROS", 10_000_000, minimum=1)
# How long a request for a cold deployment waits for its lease and engine before
# answering 503 with Retry-After. Bounded below the official clients' read timeouts
# (Together's: 60 s; OpenAI's: 600 s), so the client gets the 503 and retries rather
# than giving up on a held connection.
INFERENCE_START_TIMEOUT_SECONDS = env_int("INFERENCE_START_TIMEOUT_SECONDS", 20, minimum=1)
INFERENCE_START_TIMEOUT_MAX_SECONDS = 45
if INFERENCE_START_TIMEOUT_SECONDS > INFERENCE_START_TIMEOUT_MAX_SECONDS:
    raise ImproperlyConfigured(
        f"INFERENCE_START_TIMEOUT_SECONDS={INFERENCE_START_TIMEOUT_SECONDS} must be at most "
        f"{INFERENCE_START_TIMEOUT_MAX_SECONDS}: Together's client gives up after 60 s"
    )

# The inference relay's per-deployment queues (marketplace/workloads/relay.py):
# Redis lists when REDIS_URL is set, else a table of the database (SKIP LOCKED on
# PostgreSQL); INFERENCE_RELAY=database|redis chooses explicitly.
INFERENCE_RELAY = env_str("INFERENCE_RELAY", "redis" if REDIS_URL else "database")
if INFERENCE_RELAY not in ("redis", "database"):
    raise ImproperlyConfigured(f"INFERENCE_RELAY={INFERENCE_RELAY!r}: redis or database")
if INFERENCE_RELAY == "redis" and not REDIS_URL:
    raise ImproperlyConfigured("INFERENCE_RELAY=redis needs REDIS_URL")

# --- runtime (training and inference) ----------------------------------------
# Model weights on this machine (HF layout, one directory per model name) and
# artifacts (checkpoints and finished adapters, unpacked from the nodes' uploads).
# A run lost with its node is taken over after ASSIGNMENT_CLAIM_TTL_SECONDS.
RUNTIME_MODEL_DIR = Path(env_str("TANDEM_MODEL_DIR", str(VAR_DIR / "models")))
RUNTIME_ARTIFACT_DIR = Path(env_str("TANDEM_ARTIFACT_DIR", str(VAR_DIR / "artifacts")))
if RUNTIME_MODEL_DIR.exists() and not RUNTIME_MODEL_DIR.is_dir():
    raise ImproperlyConfigured(f"TANDEM_MODEL_DIR={RUNTIME_MODEL_DIR} is not a directory")
if RUNTIME_ARTIFACT_DIR.exists() and not RUNTIME_ARTIFACT_DIR.is_dir():
    raise ImproperlyConfigured(f"TANDEM_ARTIFACT_DIR={RUNTIME_ARTIFACT_DIR} is not a directory")

# --- Stripe -----------------------------------------------------------------
STRIPE_SECRET_KEY = env_str("STRIPE_SECRET_KEY", "")
STRIPE_PUBLISHABLE_KEY = env_str("STRIPE_PUBLISHABLE_KEY", "")
STRIPE_WEBHOOK_SECRET = env_str("STRIPE_WEBHOOK_SECRET", "")
STRIPE_API_BASE = env_url("STRIPE_API_BASE", "", schemes={"http", "https"})
if STRIPE_SECRET_KEY and not STRIPE_SECRET_KEY.startswith(("sk_", "rk_")):
    raise ImproperlyConfigured("STRIPE_SECRET_KEY must start with sk_ or rk_")
if STRIPE_WEBHOOK_SECRET and not STRIPE_WEBHOOK_SECRET.startswith("whsec_"):
    raise ImproperlyConfigured("STRIPE_WEBHOOK_SECRET must start with whsec_")
# Bounds of one top-up, the smallest payout worth a transfer, the largest daily cap
# a buyer may set on auto-recharge (decimal text in TANDEM_CURRENCY).
TOPUP_MINIMUM_MICROS = env_amount("TOPUP_MINIMUM", "5.00")
TOPUP_MAXIMUM_MICROS = env_amount("TOPUP_MAXIMUM", "10000.00")
if TOPUP_MAXIMUM_MICROS < TOPUP_MINIMUM_MICROS:
    raise ImproperlyConfigured("TOPUP_MAXIMUM must be at least TOPUP_MINIMUM")
PAYOUT_MINIMUM_MICROS = env_amount("PAYOUT_MINIMUM", "20.00")
# Express accounts are created in this country unless the provider names another.
STRIPE_CONNECT_DEFAULT_COUNTRY = env_str("STRIPE_CONNECT_DEFAULT_COUNTRY", "US")
if len(STRIPE_CONNECT_DEFAULT_COUNTRY) != 2 or not STRIPE_CONNECT_DEFAULT_COUNTRY.isalpha():
    raise ImproperlyConfigured("STRIPE_CONNECT_DEFAULT_COUNTRY must be an ISO 3166 code (US)")
STRIPE_MAX_NETWORK_RETRIES = env_int("STRIPE_MAX_NETWORK_RETRIES", 2, minimum=0)
# Stripe.js, which the portal's checkout page loads (its origin is allowed by that
# page's Content-Security-Policy, and by no other page's).
STRIPE_JS_URL = env_url("STRIPE_JS_URL", "https://js.stripe.com/v3/", schemes={"https"})
# Dunning for postpaid invoices: days after finalization to retry a failed charge,
# then the invoice is uncollectible.
DUNNING_RETRY_DAYS = env_int_list("DUNNING_RETRY_DAYS", [1, 3, 5, 7])

# --- money ------------------------------------------------------------------
# Invoices: the issuer's prefix on invoice and credit-note numbers, the days after a
# month ends during which its drafts still take late usage, and the payment terms.
INVOICE_ISSUER = env_str("INVOICE_ISSUER", "TDM")
if not INVOICE_ISSUER.isascii() or not INVOICE_ISSUER.isalnum() or len(INVOICE_ISSUER) > 16:
    raise ImproperlyConfigured(f"INVOICE_ISSUER={INVOICE_ISSUER!r}: 1-16 letters or digits")
INVOICE_GRACE_DAYS = env_int("INVOICE_GRACE_DAYS", 3, minimum=0)
INVOICE_DUE_DAYS = env_int("INVOICE_DUE_DAYS", 14, minimum=0)
EXPORT_DIR = Path(env_str("EXPORT_DIR", str(VAR_DIR / "exports")))
TANDEM_CURRENCY = env_str("TANDEM_CURRENCY", "USD")
if TANDEM_CURRENCY not in {"USD", "EUR", "GBP"}:
    raise ImproperlyConfigured(f"TANDEM_CURRENCY={TANDEM_CURRENCY!r}: use USD, EUR or GBP")

# --- limits against abuse ---------------------------------------------------
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("MAX_REQUEST_BYTES", 2 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 1000

# --- DRF --------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "core.authentication.ApiKeyAuthentication",
        "core.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["core.permissions.IsOrgMember"],
    "DEFAULT_THROTTLE_CLASSES": ["core.throttling.ApiKeyRateThrottle"],
    "DEFAULT_PAGINATION_CLASS": "core.pagination.CursorPagination",
    # core.parsers.JSONParser: deeply nested JSON is a 400, not a RecursionError 500.
    "DEFAULT_PARSER_CLASSES": [
        "core.parsers.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Tandem API",
    "DESCRIPTION": "Open GPU marketplace with usage billing.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["core.routing.expand_method_routes"],
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "core.schema.declare_body_statuses",
    ],
    # <id:...> path parameters (core.converters): bigint primary keys.
    "PATH_CONVERTER_OVERRIDES": {
        "id": {"type": "integer", "format": "int64", "minimum": 1, "maximum": 2**63 - 1}
    },
    # Choice sets that share a field name across apps get names of their own.
    "ENUM_NAME_OVERRIDES": {
        "TopUpStatusEnum": "payments.models.TopUp.Status",
    },
}

# --- auth, i18n, static -----------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
# Compressed copies made by collectstatic, served by whitenoise; names are not
# hashed, so a page renders the same before collectstatic (tests, runserver).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# --- the portal: people sign in with a session ------------------------------
LOGIN_URL = "portal:sign-in"
LOGIN_REDIRECT_URL = "portal:home"
LOGOUT_REDIRECT_URL = "portal:sign-in"
# A password-reset or invitation link works this long (and once).
PASSWORD_RESET_TIMEOUT = env_int("PASSWORD_RESET_TIMEOUT_SECONDS", 3 * 86_400, minimum=600)
# Content-Security-Policy: no inline script or style anywhere in the portal; its
# behaviour lives in static files. The JSON APIs (/api/, /v1/) render no HTML and skip
# building the header on their hot paths; Swagger's page (/api/docs/) and the admin
# ship inline code of their own.
CONTENT_SECURITY_POLICY = {
    "EXCLUDE_URL_PREFIXES": ["/api/", "/v1/", "/admin/", "/healthz"],
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
        "base-uri": ["'none'"],
        "object-src": ["'none'"],
    },
}

# --- email (password resets, invitations) -----------------------------------
# Printed to the console unless an SMTP host is named.
EMAIL_HOST = env_str("EMAIL_HOST", "")
EMAIL_BACKEND = env_str(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend",
)
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD", "")
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL: set at most one")
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT_SECONDS", 10, minimum=1)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "Tandem <noreply@localhost>")

# --- logging: JSON lines with the request id --------------------------------
LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
    raise ImproperlyConfigured(f"LOG_LEVEL={LOG_LEVEL!r}: use DEBUG, INFO, WARNING or ERROR")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_id": {"()": "core.middleware.RequestIdLogFilter"}},
    "formatters": {
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
        }
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json",
            "filters": ["request_id"],
        }
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
