"""The API under gunicorn, configured in code (``taskq api``)."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


class TaskqApplication(BaseApplication):
    """gunicorn running ``wsgi:app`` with taskq's settings."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self):
        from wsgi import app

        return app


def gunicorn_options(bind: str, workers: int) -> dict[str, Any]:
    """gunicorn settings for the API."""
    return {
        "bind": bind,
        "workers": workers,
        "worker_class": "gthread",
        "threads": 8,
        "accesslog": None,
        "graceful_timeout": 10,
        "timeout": 30,
    }


def serve_api(bind: str, workers: int) -> None:
    """Run gunicorn in the foreground until it is stopped."""
    TaskqApplication(gunicorn_options(bind, workers)).run()
