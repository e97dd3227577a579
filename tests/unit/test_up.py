"""``taskq up``'s JWT secret: made once under ./.taskq/, private, an explicit one wins."""

from __future__ import annotations

import stat

import pytest

from taskq.settings import SettingError
from taskq.up import child_environment, stored_secret


def test_the_secret_is_made_once_owner_only_and_kept(tmp_path):
    path = tmp_path / "jwt-secret"
    first = stored_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stored_secret(path) == first
    assert [p.name for p in tmp_path.iterdir()] == ["jwt-secret"]  # no temporary file left


def test_a_secret_readable_by_others_is_made_private(tmp_path, capsys):
    path = tmp_path / "jwt-secret"
    path.write_text("kept-secret-value\n")
    path.chmod(0o644)
    assert stored_secret(path) == "kept-secret-value"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "kept-secret-value" not in capsys.readouterr().err


def test_an_empty_secret_file_is_refused(tmp_path):
    path = tmp_path / "jwt-secret"
    path.write_text("")
    path.chmod(0o600)
    with pytest.raises(SettingError, match="empty"):
        stored_secret(path)


def test_children_share_the_stored_secret_unless_one_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JWT_SECRET_KEY", raising=False)
    monkeypatch.delenv("TASKQ_ENV", raising=False)
    environ = child_environment()
    assert environ["JWT_SECRET_KEY"] == (tmp_path / ".taskq" / "jwt-secret").read_text().strip()
    assert environ["TASKQ_ENV"] == "development"
    assert stat.S_IMODE((tmp_path / ".taskq").stat().st_mode) == 0o700
    monkeypatch.setenv("JWT_SECRET_KEY", "explicit-secret-0123456789abcdef")
    assert child_environment()["JWT_SECRET_KEY"] == "explicit-secret-0123456789abcdef"


def test_a_data_directory_of_another_postgres_version_is_refused_or_made_anew(tmp_path):
    from taskq.embedded import check_data_version, embedded_major
    from taskq.settings import SettingError

    old = tmp_path / "pgdata"
    old.mkdir()
    (old / "PG_VERSION").write_text("16\n")  # what pgserver (PostgreSQL 16) left behind
    with pytest.raises(SettingError, match="PostgreSQL 16 database"):
        check_data_version(old, scratch=False)
    assert old.exists()
    check_data_version(old, scratch=True)
    assert not old.exists()
    (tmp_path / "same").mkdir()
    (tmp_path / "same" / "PG_VERSION").write_text(embedded_major() + "\n")
    check_data_version(tmp_path / "same", scratch=False)  # its own version: kept, no error
    assert (tmp_path / "same" / "PG_VERSION").exists()
