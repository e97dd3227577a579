"""Accounts and JWTs: register, login, refresh (rotating), verify, logout, profile, password.

Tokens carry ``pv``, the owner's password version (``users.password_changed_at``
in microseconds): changing the password makes every older token fail the
check in ``token_is_revoked``. Logout and refresh rotation put the token's jti
on ``token_blocklist`` in Postgres, so revocation holds across processes and
restarts, with or without Redis. Each process keeps the token states it read
(``app.revocation``) and drops them when Postgres announces a change.

Two ways to carry the tokens: API clients get them in the body and send
``Authorization: Bearer``; the dashboard logs in with ``"cookies": true`` and
gets them as HttpOnly, SameSite=Strict cookies it cannot read (flask-jwt-
extended's cookie mode). A cookie request that changes state must repeat the
readable ``csrf_access_token`` cookie in ``X-CSRF-TOKEN`` (double submit), so
another site cannot make the browser act on its behalf.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from difflib import SequenceMatcher
from functools import wraps
from typing import Any

import psycopg
from flask import Blueprint, Flask, Response, g, jsonify, request
from flask_jwt_extended import (
    JWTManager,
    create_access_token,
    create_refresh_token,
    decode_token,
    get_jwt,
    get_jwt_request_location,
    jwt_required,
    set_access_cookies,
    set_refresh_cookies,
    unset_jwt_cookies,
    verify_jwt_in_request,
)
from flask_jwt_extended.config import config as jwt_config
from flask_jwt_extended.exceptions import CSRFError, JWTExtendedException
from jwt.exceptions import PyJWTError
from werkzeug.security import check_password_hash, generate_password_hash

from app import schemas
from app.db import fetch_one, get_conn
from app.errors import ApiError, error_response, get_json_body, request_body
from app.limits import release_login, reserve_login
from app.openapi import doc
from app.revocation import get_token_states
from sql import queries
from taskq.representation import row_to_json

bp = Blueprint("auth", __name__, url_prefix="/api/v1/auth")
schemas.reject_bad_data(bp)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
USER_FIELDS = ("id", "username", "email", "first_name", "last_name", "is_admin", "created_at")


def hash_password(password: str) -> str:
    """werkzeug's scrypt hash of ``password``."""
    return generate_password_hash(password, method="scrypt")


def create_admin_user(url: str, username: str, email: str | None, password: str) -> int:
    """Create admin ``username`` or promote the existing one; its id (``taskq create-admin``)."""
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    params = {
        "username": username,
        "email": email or f"{username}@localhost",
        "password_hash": hash_password(password),
    }
    with psycopg.connect(url) as conn:
        return conn.execute(queries["upsert_admin"], params).fetchone()[0]


# A hash checked when the login names nobody, so both paths cost one scrypt.
_DUMMY_HASH: list[str] = []

# A small built-in list; the strength check also refuses passwords like the username.
_COMMON = """
    password password1 password12 password123 password1234 passw0rd p@ssw0rd p@ssword
    12345678 123456789 1234567890 87654321 11111111 00000000 12341234 11223344 a1b2c3d4
    qwertyui qwerty123 qwertyuiop 1q2w3e4r 1qaz2wsx zaq12wsx asdfghjk asdfasdf zxcvbnm1
    iloveyou iloveyou1 sunshine princess football baseball basketball superman batman
    starwars trustno1 whatever dragon123 monkey123 letmein1 letmein123 welcome1 welcome123
    admin123 administrator changeme changeme1 secret123 abc12345 abcd1234 abcdefgh
    computer internet michelle jennifer jordan23 master123 shadow123 freedom1 charlie1
    mustang1 access14 liverpool chelsea1 arsenal1 killer12 pokemon1 samsung1 google123
    taskqueue taskq123 qwerty12 q1w2e3r4 q1w2e3r4t5 passpass testtest test1234 temp1234
"""
COMMON_PASSWORDS = frozenset(_COMMON.split())


# ------------------------------------------------------------------ helpers


def password_version(changed_at: datetime) -> int:
    """``password_changed_at`` in whole microseconds: the ``pv`` claim of every token."""
    return (changed_at - EPOCH) // timedelta(microseconds=1)


def user_to_json(row: dict[str, Any]) -> dict[str, Any]:
    """A users row as the API shows it (never the hash)."""
    return row_to_json({key: row[key] for key in USER_FIELDS})


def issue_tokens(user: dict[str, Any]) -> dict[str, str]:
    """A fresh access and refresh token for ``user``."""
    claims = {"pv": password_version(user["password_changed_at"])}
    identity = str(user["id"])
    return {
        "access": create_access_token(identity, additional_claims=claims),
        "refresh": create_refresh_token(identity, additional_claims=claims),
    }


def auth_response(
    user: dict[str, Any], message: str, cookies: bool, status: int = 200
) -> tuple[Response, int]:
    """``{user, tokens, message}`` with a fresh pair; with ``cookies`` the pair is set as
    HttpOnly cookies (plus the readable CSRF cookies) and left out of the body."""
    tokens = issue_tokens(user)
    if not cookies:
        return jsonify({"user": user_to_json(user), "tokens": tokens, "message": message}), status
    response = jsonify({"user": user_to_json(user), "message": message})
    set_access_cookies(response, tokens["access"])
    set_refresh_cookies(response, tokens["refresh"])
    return response, status


def refresh_cookie() -> str | None:
    """The refresh token of a cookie session, if the browser sent one."""
    return request.cookies.get(jwt_config.refresh_cookie_name)


def password_problems(password: str, **attributes: str) -> list[str]:
    """Why ``password`` is too weak (empty when it is fine).

    ``attributes`` (username, email, names) must not be what the password is
    made of: each, and each of its word-parts, is compared like Django's
    UserAttributeSimilarityValidator does.
    """
    problems = []
    if len(password) < schemas.MIN_PASSWORD_LENGTH:
        problems.append(
            "This password is too short. It must contain at least "
            f"{schemas.MIN_PASSWORD_LENGTH} characters."
        )
    if password.isdigit():
        problems.append("This password is entirely numeric.")
    if password.lower() in COMMON_PASSWORDS:
        problems.append("This password is too common.")
    lowered = password.lower()
    for name, value in attributes.items():
        parts = {value.lower(), *re.split(r"\W+", value.lower())}
        if any(
            len(part) >= 3 and SequenceMatcher(a=lowered, b=part).quick_ratio() >= 0.7
            for part in parts
        ):
            problems.append(f"The password is too similar to the {name.replace('_', ' ')}.")
            break
    return problems


def check_password_strength(field: str, password: str, **attributes: str) -> None:
    """400 with ``field_errors[field]`` when the password is weak."""
    problems = password_problems(password, **attributes)
    if problems:
        raise ApiError(400, "Invalid input.", {field: problems})


def decode_user_token(token: str, field: str, expected_type: str | None = None) -> dict[str, Any]:
    """Decode a token a client sent in the body; 401 unless it is valid and not revoked."""
    try:
        claims = decode_token(token)
    except (PyJWTError, JWTExtendedException, ValueError) as exc:
        raise ApiError(401, "Token is invalid or expired.", {field: [str(exc)]}) from None
    if expected_type and claims.get("type") != expected_type:
        raise ApiError(401, f"Not a {expected_type} token.", {field: ["Wrong token type."]})
    if token_is_revoked({}, claims):
        raise ApiError(401, "Token has been revoked.", {field: ["Token has been revoked."]})
    return claims


def revoke(conn: psycopg.Connection, claims: dict[str, Any]) -> bool:
    """Blocklist a token; False when it already was (a refresh token used twice)."""
    params = {
        "jti": claims["jti"],
        "token_type": claims.get("type", "access"),
        "user_id": int(claims["sub"]),
        "expires_at": datetime.fromtimestamp(claims["exp"], UTC),
    }
    return conn.execute(queries["revoke_token"], params).fetchone() is not None


def current_user_id() -> int:
    """The id of the user whose access token authenticated this request."""
    return int(get_jwt()["sub"])


def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
    """An access token of an admin, else 401 (no token) or 403 (not an admin)."""

    @wraps(view)
    @jwt_required()
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        state = g.get("taskq_token_state")
        if not state or not state["is_admin"]:
            raise ApiError(403, "Admins only.")
        return view(*args, **kwargs)

    return wrapper


def token_is_revoked(jwt_header: dict[str, Any], claims: dict[str, Any]) -> bool:
    """The blocklist check of every token: revoked jti, gone or inactive owner, old password."""
    try:
        user_id = int(claims["sub"])
    except (KeyError, TypeError, ValueError):
        return True
    state = get_token_states().state(user_id, str(claims.get("jti")))
    g.taskq_token_state = state
    return credential_revoked(state, claims.get("pv"))


def credential_revoked(state: dict[str, Any] | None, pv: Any) -> bool:
    """A token's credential no longer holds: its ``token_state`` row (None: no such user)
    says revoked jti, inactive owner, or a password changed since ``pv``."""
    return (
        state is None
        or state["revoked"]
        or not state["is_active"]
        or pv != password_version(state["password_changed_at"])
    )


def taken_fields(username: str | None, email: str | None) -> dict[str, list[str]]:
    """field_errors for a username or email someone else already has."""
    errors: dict[str, list[str]] = {}
    with get_conn() as conn:
        rows = conn.execute(
            queries["find_taken_identity"], {"username": username, "email": email}
        ).fetchall()
    if any(row["username_taken"] for row in rows):
        errors["username"] = ["A user with that username already exists."]
    if any(row["email_taken"] for row in rows):
        errors["email"] = ["A user with that email already exists."]
    return errors


# ------------------------------------------------------------------- views


@bp.post("/register")
@doc(
    "Create an account and get its tokens",
    tag="auth",
    body=schemas.RegisterSchema,
    response=schemas.AuthResponseSchema,
    status=201,
    auth=False,
)
def register():
    """Create a user; 400 when the username or email is taken or the password is weak."""
    data = schemas.RegisterSchema().load(get_json_body())
    errors = taken_fields(data["username"], data["email"])
    problems = password_problems(
        data["password"],
        username=data["username"],
        email=data["email"],
        first_name=data["first_name"],
        last_name=data["last_name"],
    )
    if problems:
        errors["password"] = problems
    if errors:
        raise ApiError(400, "Invalid input.", errors)
    cookies = data.pop("cookies")
    params = {**data, "password_hash": hash_password(data["password"])}
    try:
        user = fetch_one("insert_user", params)
    except psycopg.errors.UniqueViolation:  # lost a race with an identical registration
        errors = taken_fields(data["username"], data["email"])
        raise ApiError(400, "Invalid input.", errors) from None
    assert user is not None
    return auth_response(user, "User registered successfully", cookies, 201)


@bp.post("/login")
@bp.post("/token")
@doc(
    "Log in with username (or email) and password",
    tag="auth",
    body=schemas.LoginSchema,
    response=schemas.AuthResponseSchema,
    auth=False,
    errors=(401,),
)
def login():
    """Check the password and return a fresh token pair.

    Failed checks count against the account (however it is named); once its
    budget is spent every login of it gets 429 until the window moves on.
    """
    data = schemas.LoginSchema().load(get_json_body())
    user = fetch_one("get_user_for_login", {"login": data["username"]})
    attempt = reserve_login(user, data["username"])  # 429 while the account is locked
    if user is None:
        if not _DUMMY_HASH:
            _DUMMY_HASH.append(hash_password("not a real password"))
        check_password_hash(_DUMMY_HASH[0], data["password"])
        raise ApiError(401, "Invalid username or password.")
    if not check_password_hash(user["password_hash"], data["password"]):
        raise ApiError(401, "Invalid username or password.")
    release_login(attempt)  # only failures count against the account
    return auth_response(user, "Login successful", data["cookies"])


@bp.post("/token/refresh")
@doc(
    "Trade a refresh token for a new pair (the old one is revoked)",
    tag="auth",
    body=schemas.RefreshSchema,
    response=schemas.AuthResponseSchema,
    auth=False,
    errors=(401,),
)
def refresh():
    """Rotate: revoke the refresh token and issue a new access and refresh token.

    A cookie session posts no body: its refresh cookie is used (with the CSRF
    header of the refresh cookie) and the new pair comes back as cookies.
    """
    cookies = refresh_cookie() is not None and not request_body()
    if cookies:
        verify_jwt_in_request(refresh=True, locations=["cookies"])  # CSRF, expiry, blocklist
        claims = get_jwt()
    else:
        data = schemas.RefreshSchema().load(get_json_body())
        claims = decode_user_token(data["refresh"], "refresh", expected_type="refresh")
    with get_conn() as conn:
        if not revoke(conn, claims):  # a concurrent refresh with the same token won
            raise ApiError(401, "Token has been revoked.", {"refresh": ["Already used."]})
        user = conn.execute(queries["get_user"], {"user_id": int(claims["sub"])}).fetchone()
        # The token was checked before the rotation: a password change (or deactivation)
        # committed since revoked it, and must not be answered with tokens it did not revoke.
        if credential_revoked(user and {**user, "revoked": False}, claims.get("pv")):
            raise ApiError(401, "Token has been revoked.", {"refresh": ["Token has been revoked."]})
    get_token_states().forget(int(claims["sub"]))  # this process refuses it at once
    return auth_response(user, "Token refreshed", cookies)


@bp.post("/token/verify")
@doc(
    "Check that a token is valid and not revoked",
    tag="auth",
    body=schemas.VerifySchema,
    response=schemas.VerifyResponseSchema,
    auth=False,
    errors=(401,),
)
def verify():
    """200 with the token's type, owner and expiry, or 401."""
    data = schemas.VerifySchema().load(get_json_body())
    claims = decode_user_token(data["token"], "token")
    return {
        "valid": True,
        "token_type": claims.get("type"),
        "user_id": int(claims["sub"]),
        "expires_at": datetime.fromtimestamp(claims["exp"], UTC).isoformat(),
    }


@bp.post("/logout")
@doc(
    "Revoke the access token and, when given, the refresh token",
    tag="auth",
    body=schemas.LogoutSchema,
    body_required=False,
    response=schemas.MessageSchema,
)
@jwt_required()
def logout():
    """Blocklist this access token and the refresh token of the body (or of the cookie).

    A cookie session's cookies are cleared as well; being on the blocklist, a
    copy of them kept elsewhere is refused too.
    """
    data = schemas.LogoutSchema().load(get_json_body(optional=True))
    revoked = [get_jwt()]
    if data["refresh"]:
        try:
            refresh_claims = decode_token(data["refresh"], allow_expired=True)
        except (PyJWTError, JWTExtendedException, ValueError):
            raise ApiError(400, "Invalid input.", {"refresh": ["Not a valid token."]}) from None
        if refresh_claims.get("type") != "refresh" or refresh_claims.get("sub") != get_jwt()["sub"]:
            raise ApiError(400, "Invalid input.", {"refresh": ["Not your refresh token."]})
        revoked.append(refresh_claims)
    cookie = refresh_cookie()
    if cookie is not None:
        try:
            cookie_claims = decode_token(cookie, allow_expired=True)
        except (PyJWTError, JWTExtendedException, ValueError):
            cookie_claims = None  # not a token of ours: clearing the cookie is all there is to do
        if (
            cookie_claims is not None
            and cookie_claims.get("type") == "refresh"
            and cookie_claims.get("sub") == get_jwt()["sub"]
        ):
            revoked.append(cookie_claims)
    with get_conn() as conn:
        for claims in revoked:
            revoke(conn, claims)
    get_token_states().forget(current_user_id())  # this process refuses them at once
    response = jsonify({"message": "Successfully logged out"})
    if get_jwt_request_location() == "cookies" or cookie is not None:
        unset_jwt_cookies(response)
    return response


@bp.get("/profile")
@doc("The caller's profile", tag="auth", response=schemas.UserResponseSchema)
@jwt_required()
def get_profile():
    """The authenticated user."""
    user = fetch_one("get_user", {"user_id": current_user_id()})
    if user is None:
        raise ApiError(404, "User not found.")
    return {"user": user_to_json(user)}


@bp.patch("/profile")
@doc(
    "Change email, first or last name",
    tag="auth",
    body=schemas.ProfileUpdateSchema,
    response=schemas.UserResponseSchema,
)
@jwt_required()
def update_profile():
    """Update the given fields; 400 when the new email belongs to someone else."""
    data = schemas.ProfileUpdateSchema().load(get_json_body())
    params = {"email": None, "first_name": None, "last_name": None, **data}
    params["user_id"] = current_user_id()
    try:
        user = fetch_one("update_profile", params)
    except psycopg.errors.UniqueViolation:
        raise ApiError(400, "Invalid input.", taken_fields(None, data.get("email"))) from None
    if user is None:
        raise ApiError(404, "User not found.")
    return {"user": user_to_json(user), "message": "Profile updated"}


@bp.post("/change-password")
@doc(
    "Change the password; every older token stops working",
    tag="auth",
    body=schemas.ChangePasswordSchema,
    response=schemas.AuthResponseSchema,
)
@jwt_required()
def change_password():
    """Check the old password, store the new one and return a fresh token pair."""
    data = schemas.ChangePasswordSchema().load(get_json_body())
    user = fetch_one("get_user", {"user_id": current_user_id()})
    if user is None:
        raise ApiError(404, "User not found.")
    if password_version(user["password_changed_at"]) != get_jwt().get("pv"):
        raise ApiError(401, "Token has been revoked.")  # a change committed since its check
    if not check_password_hash(user["password_hash"], data["old_password"]):
        raise ApiError(400, "Invalid input.", {"old_password": ["Wrong password."]})
    check_password_strength(
        "new_password",
        data["new_password"],
        username=user["username"],
        email=user["email"],
        first_name=user["first_name"],
        last_name=user["last_name"],
    )
    params = {
        "user_id": user["id"],
        "password_hash": hash_password(data["new_password"]),
        "password_changed_at": user["password_changed_at"],
    }
    user = fetch_one("set_password", params)
    if user is None:  # another change committed since the check: it revoked this token
        raise ApiError(401, "Token has been revoked.")
    get_token_states().forget(user["id"])  # this process refuses the older tokens at once
    cookies = get_jwt_request_location() == "cookies"  # a cookie session keeps being one
    return auth_response(user, "Password changed successfully", cookies)


# ------------------------------------------------------------------ set-up


class CachingJWTManager(JWTManager):
    """flask-jwt-extended, checking each bearer token's signature once per process.

    A decode verifies the signature and parses the token three times (PyJWT);
    the same access token comes back on every request. The claims of a token
    that decoded are kept, keyed by the token's exact text, and served while
    ``exp`` is still ahead: every other check (signature, ``nbf``, ``iat``,
    audience) can only have passed for good, so nothing is stale. Revocation is
    not decided here: the blocklist check (``token_is_revoked``, from the kept
    token states of ``app.revocation``) still runs on every request. Overrides
    the manager's decode hook, which ``decode_token`` and ``verify_jwt_in_request``
    both go through.
    """

    MAX_TOKENS = 4096

    def __init__(self, app: Flask | None = None) -> None:
        self._claims: dict[str, dict[str, Any]] = {}
        super().__init__(app)

    def _decode_jwt_from_config(
        self, encoded_token: str, csrf_value: Any = None, allow_expired: bool = False
    ) -> dict:
        if csrf_value is not None or allow_expired:
            return super()._decode_jwt_from_config(encoded_token, csrf_value, allow_expired)
        claims = self._claims.get(encoded_token)
        if claims is not None and time.time() < claims["exp"]:
            return dict(claims)
        claims = super()._decode_jwt_from_config(encoded_token)
        if "exp" in claims:
            if len(self._claims) >= self.MAX_TOKENS:
                self._claims.pop(next(iter(self._claims)))  # the oldest entry
            self._claims[encoded_token] = dict(claims)
        return claims


def jwt_error(message: str) -> Callable[..., Any]:
    """A flask-jwt-extended callback answering 401 in the contract's error shape."""

    def callback(*args: Any) -> Any:
        return error_response(401, message)

    return callback


def init_app(app: Flask) -> None:
    """Set up flask-jwt-extended (Postgres blocklist, JSON 401s) and register the views."""
    jwt = CachingJWTManager(app)
    jwt.token_in_blocklist_loader(token_is_revoked)
    jwt.unauthorized_loader(jwt_error("Authentication credentials were not provided."))
    jwt.invalid_token_loader(jwt_error("Token is invalid."))
    jwt.expired_token_loader(jwt_error("Token has expired."))
    jwt.revoked_token_loader(jwt_error("Token has been revoked."))
    jwt.needs_fresh_token_loader(jwt_error("A fresh token is required."))
    jwt.user_lookup_error_loader(jwt_error("User not found."))
    jwt.token_verification_failed_loader(jwt_error("Token verification failed."))
    # After JWTManager's own CSRFError handler, so this one answers.
    app.register_error_handler(
        CSRFError,
        jwt_error(
            "Missing or wrong CSRF token: send the csrf_access_token cookie's value "
            "(csrf_refresh_token's to refresh) in X-CSRF-TOKEN."
        ),
    )
    app.register_blueprint(bp)
