"""Settings from the environment: clear start-up errors, and production hardening with debug off."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_SECRET_KEY": "x7Kq2-production-like-secret-for-tests-only-9fJw3LpZr8Tn5Vb1Hc6",
    "DJANGO_ALLOWED_HOSTS": "status.example.com",
}


def run_python(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DJANGO_")}
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**clean, "DJANGO_SETTINGS_MODULE": "asgi_project.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_deploy_checks_pass_with_debug_off():
    result = run_python("manage.py", "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def show(expression: str, **env: str) -> str:
    code = f"import django; django.setup(); from django.conf import settings; print(({expression}))"
    result = run_python("-c", code, **env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_debug_off_means_secure_cookies_hsts_and_https():
    values = show(
        "settings.SESSION_COOKIE_SECURE, settings.CSRF_COOKIE_SECURE, settings.SECURE_HSTS_SECONDS,"
        " settings.SECURE_SSL_REDIRECT, settings.SESSION_COOKIE_HTTPONLY",
        **PRODUCTION,
    )
    assert values == "(True, True, 31536000, True, True)"


@pytest.mark.parametrize(
    ("name", "engine"),
    [
        ("db", "accounts.session_engines.db"),  # Django's, deleting in one statement
        ("cache", "django.contrib.sessions.backends.cache"),
        ("cached_db", "accounts.session_engines.cached_db"),
        ("file", "django.contrib.sessions.backends.file"),
        ("signed_cookies", "django.contrib.sessions.backends.signed_cookies"),
    ],
)
def test_session_engine_comes_from_the_environment(name, engine):
    value = show("settings.SESSION_ENGINE", DJANGO_DEBUG="true", DJANGO_SESSION_ENGINE=name)
    assert value == engine


def test_embedded_defaults_are_sqlite_json_sessions_and_in_memory_layer():
    env = {"DJANGO_DEBUG": "true", "REDIS_URL": "", "DATABASE_URL": ""}
    value = show(
        "settings.DATABASES['default']['ENGINE'], settings.SESSION_SERIALIZER,"
        " settings.CHANNEL_LAYERS['default']['BACKEND'], settings.ALLOWED_HOSTS",
        **env,
    )
    assert value == (
        "('django.db.backends.sqlite3', 'django.contrib.sessions.serializers.JSONSerializer',"
        " 'channels.layers.InMemoryChannelLayer', ['127.0.0.1', 'localhost'])"
    )


def test_redis_url_selects_redis_cache_and_layer_without_socket_timeout():
    value = show(
        "settings.CACHES['default']['BACKEND'], settings.CHANNEL_LAYERS['default']",
        DJANGO_DEBUG="true",
        REDIS_URL="redis://127.0.0.1:6379/0",
    )
    assert value.startswith("('asgi_project.cache.SharedRedisCache',")
    assert "realtime.layers.BlockingPoolRedisChannelLayer" in value
    assert "'socket_timeout': None" in value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DJANGO_DEBUG": "maybe"}, "DJANGO_DEBUG='maybe' is not valid"),
        ({"DJANGO_DEBUG": "false"}, "DJANGO_SECRET_KEY is required"),
        (
            {**PRODUCTION, "DJANGO_ALLOWED_HOSTS": ""},
            "DJANGO_ALLOWED_HOSTS is required",
        ),
        ({"DJANGO_DEBUG": "1", "DJANGO_SESSION_ENGINE": "redis"}, "DJANGO_SESSION_ENGINE='redis'"),
        ({"DJANGO_DEBUG": "1", "DATABASE_URL": "foo://x"}, "DATABASE_URL='foo://x' is not valid"),
        (
            {"DJANGO_DEBUG": "1", "DATABASE_URL": "mysqlx://u:hunter2@h/db"},
            "DATABASE_URL='mysqlx://u:***@h/db' is not valid",
        ),
        ({"DJANGO_DEBUG": "1", "REDIS_URL": "localhost:6379"}, "REDIS_URL='localhost:6379'"),
        ({"DJANGO_DEBUG": "1", "PORT": "http"}, "PORT='http' is not valid: expected an integer"),
        ({"DJANGO_DEBUG": "1", "PORT": "70000"}, "PORT='70000' is not valid"),
    ],
)
def test_bad_values_stop_start_up_naming_the_variable(env, message):
    result = run_python("manage.py", "check", **env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "hunter2" not in result.stderr


def test_procfile_runs_daphne_and_migrates_on_release():
    lines = (ROOT / "Procfile").read_text().splitlines()
    # --proxy-headers: behind the platform's proxy, the client address is the real one (the
    # per-address login throttle counts it).
    # PYTHONMALLOC=malloc: memory goes back to the system after sockets close (realtime/memory.py).
    # --ping-interval 40: half the idle server's pings, still under 55-60 s proxy idle timeouts
    # (docs/deployment.md); the benchmark reads it from here.
    web = "web: PYTHONMALLOC=malloc daphne --proxy-headers --ping-interval 40 -b 0.0.0.0 -p $PORT "
    assert web + "asgi_project.asgi:application" in lines
    assert "release: python manage.py migrate" in lines
