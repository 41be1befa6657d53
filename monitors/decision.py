"""From drifted windows to one alert per drift episode: hysteresis, then a cooldown."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Decider", "DecisionState"]


@dataclass
class DecisionState:
    """Per model version: drifted windows in a row (``run``: what each was), windows left in
    the cooldown, and the windows of the latest episode alerted."""

    consecutive: int = 0
    cooldown_left: int = 0
    alerts: int = 0
    run: list[dict[str, Any]] = field(default_factory=list)
    episode: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Decider:
    """Fire when ``consecutive`` windows in a row drifted, then stay quiet for ``cooldown``."""

    def __init__(self, consecutive: int = 2, cooldown_windows: int = 10) -> None:
        self.consecutive = consecutive
        self.cooldown_windows = cooldown_windows
        self.states: dict[str, DecisionState] = {}

    def observe(self, key: str, status: str, window: dict[str, Any] | None = None) -> bool:
        """Take one closed window's status (and what to say of it, ``window``); True when it
        completes a new drift episode, whose windows are then the state's ``episode``."""
        state = self.states.setdefault(key, DecisionState())
        if status == "insufficient":
            return False
        if state.cooldown_left > 0:  # the same episode: neither alert nor count towards the next
            state.cooldown_left -= 1
            state.consecutive = 0
            state.run = []
            return False
        if status != "drift":
            state.consecutive = 0
            state.run = []
            return False
        state.consecutive += 1
        state.run = [*state.run, window or {}][-self.consecutive :]
        if state.consecutive >= self.consecutive and state.cooldown_left == 0:
            state.consecutive = 0
            state.cooldown_left = self.cooldown_windows
            state.alerts += 1
            state.episode, state.run = state.run, []
            return True
        return False
