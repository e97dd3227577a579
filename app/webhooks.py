"""Webhook history and replay (placeholder until the endpoints land)."""

from flask import Flask


def init_app(app: Flask) -> None:
    """Register the webhook endpoints."""
