"""Old import path of the models, kept for one release: they live in ``taskq.models``."""

from taskq.models import *  # noqa: F403
