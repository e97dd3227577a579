"""Operator actions that need no running API: creating an admin."""

from __future__ import annotations

import psycopg
from werkzeug.security import generate_password_hash

from sql import queries


def hash_password(password: str) -> str:
    """werkzeug's scrypt hash of ``password``."""
    return generate_password_hash(password, method="scrypt")


def create_admin_user(url: str, username: str, email: str | None, password: str) -> int:
    """Create admin ``username`` or promote the existing one; return its id."""
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    params = {
        "username": username,
        "email": email or f"{username}@localhost",
        "password_hash": hash_password(password),
    }
    with psycopg.connect(url) as conn:
        return conn.execute(queries["upsert_admin"], params).fetchone()[0]
