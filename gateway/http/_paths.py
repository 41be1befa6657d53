"""Request paths as the router sees them: percent-decoded, except an encoded slash."""

from __future__ import annotations

import re
from urllib.parse import unquote

__all__ = ["decode_path"]

_ESCAPED_SLASH = re.compile("%2[fF]")


def decode_path(raw_path: bytes) -> str:
    """Decode ``raw_path``, leaving ``%2F`` as it is: it never acts as a path separator.

    >>> decode_path(b"/v2/models/a%2Fb%20c/infer")
    '/v2/models/a%2Fb c/infer'
    """
    path = raw_path.decode("ascii", "replace")
    if "%" not in path:
        return path
    return "%2F".join(unquote(part) for part in _ESCAPED_SLASH.split(path))
