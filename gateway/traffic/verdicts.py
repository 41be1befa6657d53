"""The A/B verdict a canary gates on, asked of the monitor over HTTP (``GET /ab/{model}``).

The gateway never imports the monitor's code: the monitor computes a realized metric per
variant (accuracy, or the versions' primary metric) from the labels it joins to the inference
log, and answers, per pair of variants, the metric, which way is better, the difference b - a,
its always-valid interval and the decision. This module reads that answer and turns it into the
challenger's view of the comparison: a gain, positive when the challenger is better.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Comparison", "fetch_comparison"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Comparison:
    """The challenger's gain over the baseline on the metric (its metric minus the baseline's,
    negated where lower is better), with the bounds of its interval."""

    difference: float
    low: float
    high: float
    worse: bool  # significantly worse: the whole interval below zero
    labels: int  # labelled rows behind it, both variants together
    metric: str = "accuracy"


async def fetch_comparison(
    client: httpx.AsyncClient,
    monitor_url: str,
    endpoint: str,
    baseline: tuple[str, str],
    challenger: tuple[str, str],
) -> Comparison | None:
    """The monitor's comparison of the two (variant, version)s, or None (no verdict yet, or the
    monitor cannot be reached: the canary then neither promotes nor rolls back on quality)."""
    url = f"{monitor_url.rstrip('/')}/ab/{endpoint}"
    try:
        response = await client.get(url)
        response.raise_for_status()
        pairs: list[dict[str, Any]] = response.json()["pairs"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        log.warning("canary %s: no A/B verdict from %s: %s", endpoint, url, exc)
        return None
    wanted = {baseline, challenger}
    try:
        pair = next(
            p for p in pairs if {(p[s]["variant"], p[s]["version"]) for s in ("a", "b")} == wanted
        )
        if pair.get("error"):
            log.warning("canary %s: no A/B verdict: %s", endpoint, pair["error"])
            return None
        if pair["low"] is None or pair["high"] is None:
            return None  # not enough labels for a look yet
        sign = 1.0 if (pair["b"]["variant"], pair["b"]["version"]) == challenger else -1.0
        if pair.get("higher_is_better", True) is False:
            sign = -sign
        difference, low, high = (sign * float(pair[k]) for k in ("difference", "low", "high"))
        labels = int(pair["n_a"]) + int(pair["n_b"])
        metric = str(pair.get("metric", "accuracy"))
    except StopIteration:
        return None  # no look at these two versions yet
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("canary %s: unreadable A/B verdict from %s: %s", endpoint, url, exc)
        return None
    low, high = sorted((low, high))
    return Comparison(difference, low, high, high < 0, labels, metric)
