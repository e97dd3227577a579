"""Settings are read and checked once, at start-up."""

from __future__ import annotations

import pytest

from app.config import load_config
from taskq.settings import SettingError, libpq_url, sqlalchemy_url


def test_secret_key_is_required_outside_development(monkeypatch):
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("TASKQ_ENV", raising=False)
    with pytest.raises(SettingError, match="JWT_SECRET_KEY"):
        load_config()
    assert load_config({"TASKQ_ENV": "development"})["JWT_SECRET_KEY"]


def test_malformed_settings_name_the_setting(monkeypatch):
    monkeypatch.setenv("JWT_SECRET_KEY", "x" * 32)
    monkeypatch.setenv("TASKQ_MAX_BODY_BYTES", "lots")
    with pytest.raises(SettingError, match="TASKQ_MAX_BODY_BYTES"):
        load_config()
    monkeypatch.setenv("TASKQ_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("TASKQ_RATELIMIT_ENABLED", "maybe")
    with pytest.raises(SettingError, match="TASKQ_RATELIMIT_ENABLED"):
        load_config()


def test_database_urls_are_normalised():
    assert libpq_url("postgresql+psycopg://u@h/db") == "postgresql://u@h/db"
    assert sqlalchemy_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(SettingError):
        libpq_url("mysql://u@h/db")
