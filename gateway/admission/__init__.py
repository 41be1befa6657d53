"""Admission control: refuse what cannot be served in time before doing any work for it.

It knows no protocol: a refusal is a domain error (``OverloadedError``, ``RateLimitedError``)
that the HTTP layer maps to 503 or 429 with ``Retry-After``.
"""

from gateway.admission.controller import Admission
from gateway.admission.gate import REASONS, Gate
from gateway.admission.settings import AdmissionSettings, LimitSettings
from gateway.admission.turns import Turns

__all__ = ["REASONS", "Admission", "AdmissionSettings", "Gate", "LimitSettings", "Turns"]
