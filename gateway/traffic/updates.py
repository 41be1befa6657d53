"""A partial change of a route (the admin API's PATCH), typed and bounded, applied to whatever
the route is when its turn comes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from gateway.errors import InvalidInputError
from gateway.traffic.routes import (
    MAX_SHADOWS,
    MAX_VARIANTS,
    CanaryRule,
    Name,
    Percent,
    Route,
    ShadowSpec,
)

__all__ = ["RouteUpdate", "new_ramp", "validation_message"]


class RouteUpdate(BaseModel):
    """``weights`` (variant -> integer percent), ``shadows`` (the whole list), ``canary`` (a
    rule, or null to remove it), ``allow_pinning``: each optional, nothing else."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weights: dict[Name, Percent] | None = Field(default=None, max_length=MAX_VARIANTS)
    shadows: list[ShadowSpec] | None = Field(default=None, max_length=MAX_SHADOWS)
    canary: CanaryRule | None = None
    allow_pinning: StrictBool | None = None

    @classmethod
    def parse(cls, data: dict[str, Any], replica_id: str) -> RouteUpdate:
        """The update in an operator's JSON; a new canary starts pending, driven by this
        replica. Raises InvalidInputError naming what is wrong."""
        unknown = set(data) - set(cls.model_fields)
        if unknown:
            raise InvalidInputError(f"cannot patch {sorted(unknown)}; use PUT for a whole route")
        if isinstance(data.get("canary"), dict):
            data = {**data, "canary": {**data["canary"], **new_ramp(replica_id)}}
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from exc

    def apply(self, route: Route) -> Route:
        """``route`` with this update; raises InvalidInputError when the result is not a valid
        route (weights not summing to 100, an unknown variant...)."""
        given = self.model_fields_set
        changes: dict[str, Any] = {}
        if "shadows" in given:
            changes["shadows"] = [s.model_dump() for s in self.shadows or []]
        if "canary" in given:
            changes["canary"] = self.canary.model_dump() if self.canary is not None else None
        if self.allow_pinning is not None:
            changes["allow_pinning"] = self.allow_pinning
        try:
            return route.with_weights(self.weights or {}, **changes)
        except ValidationError as exc:
            raise InvalidInputError(validation_message(exc)) from exc
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc


def new_ramp(replica_id: str) -> dict[str, Any]:
    """What the gateway sets on an operator's new canary rule: it starts pending, driven by
    ``replica_id``, with no pace of its own yet."""
    return {"state": "pending", "owner": replica_id, "stepped_at": None, "held": None}


def validation_message(exc: ValidationError) -> str:
    """What an operator got wrong, one clause per error, each naming the field."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'route'}: {err['msg']}" for err in exc.errors()
    )
