"""The taskq API: ``create_app()`` wires config, database, auth, limits, cache and blueprints."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask

from app.config import load_config


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app; ``test_config`` overrides settings from the environment."""
    app = Flask(__name__)
    app.config.from_mapping(load_config(test_config))
    app.url_map.strict_slashes = False
    app.json.sort_keys = False  # Flask 3 ignores JSON_SORT_KEYS: keep the contract's key order
    logging.basicConfig(level=app.config.get("LOG_LEVEL", "INFO"))

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
        tasks,
        webhooks,
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
        cache,
        metrics,
        webhooks,
        dashboard,
    ):
        module.init_app(app)
    limits.init_app(app)  # last: it limits the auth routes the blueprints above registered
    return app
