"""From drifted windows to one alert per drift episode: hysteresis, then a cooldown."""

from __future__ import annotations

from dataclasses import asdict, dataclass

__all__ = ["Decider", "DecisionState"]


@dataclass
class DecisionState:
    """Per model version: drifted windows in a row, and windows left in the cooldown."""

    consecutive: int = 0
    cooldown_left: int = 0
    alerts: int = 0

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class Decider:
    """Fire when ``consecutive`` windows in a row drifted, then stay quiet for ``cooldown``."""

    def __init__(self, consecutive: int = 2, cooldown_windows: int = 10) -> None:
        self.consecutive = consecutive
        self.cooldown_windows = cooldown_windows
        self.states: dict[str, DecisionState] = {}

    def observe(self, key: str, status: str) -> bool:
        """Take one closed window's status; True when it completes a new drift episode."""
        state = self.states.setdefault(key, DecisionState())
        if status == "insufficient":
            return False
        if state.cooldown_left > 0:  # the same episode: neither alert nor count towards the next
            state.cooldown_left -= 1
            state.consecutive = 0
            return False
        if status != "drift":
            state.consecutive = 0
            return False
        state.consecutive += 1
        if state.consecutive >= self.consecutive and state.cooldown_left == 0:
            state.consecutive = 0
            state.cooldown_left = self.cooldown_windows
            state.alerts += 1
            return True
        return False
