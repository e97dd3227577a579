"""The taskq API: ``create_app()`` wires config, database, auth, limits, cache and blueprints."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from app.config import load_config
from taskq.fields import ALLOW_PRIVATE
from taskq.registry import import_task_modules


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app; ``test_config`` overrides settings from the environment."""
    app = Flask(__name__)
    app.config.from_mapping(load_config(test_config))
    app.url_map.strict_slashes = False
    app.json.sort_keys = False  # Flask 3 ignores JSON_SORT_KEYS: keep the contract's key order
    logging.basicConfig(level=app.config["LOG_LEVEL"])
    import_task_modules(app.config["TASKQ_IMPORTS"])  # the user's task types, once

    @app.before_request
    def outbound_policy() -> None:
        """Validate this request's outbound URLs by the app's TASKQ_ALLOW_PRIVATE_URLS."""
        ALLOW_PRIVATE.set(bool(app.config["TASKQ_ALLOW_PRIVATE_URLS"]))

    from app import (
        admin,
        auth,
        cache,
        dashboard,
        db,
        errors,
        events,
        health,
        limits,
        metrics,
        openapi,
        revocation,
        tasks,
        webhooks,
        websocket,
    )

    for module in (
        errors,
        db,
        health,
        auth,
        tasks,
        admin,
        openapi,
        events,
        revocation,
        cache,
        metrics,
        webhooks,
        websocket,
        dashboard,
    ):
        module.init_app(app)
    limits.init_app(app)  # last: it limits the auth routes the blueprints above registered
    return app
