"""Pauses between attempts to reach a server that went away: doubling, capped, reset on success."""

from __future__ import annotations


class Backoff:
    """``first``, twice that, … up to ``cap``; ``reset`` once an attempt succeeded."""

    def __init__(self, first: float, cap: float) -> None:
        self.first = first
        self.cap = cap
        self.pause = first

    def next(self) -> float:
        """The pause before the next attempt (each call doubles the one after)."""
        pause = self.pause
        self.pause = min(pause * 2, self.cap)
        return pause

    def reset(self) -> None:
        """The server answered: the next loss starts from ``first`` again."""
        self.pause = self.first
