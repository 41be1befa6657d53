"""Reading the Dockerfile's instructions, so tests follow the file instead of restating it."""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Copy", "Stage", "read_stages"]


@dataclass(frozen=True)
class Copy:
    sources: list[str]
    destination: str
    from_stage: str | None


@dataclass
class Stage:
    """One ``FROM`` stage: its instructions in order, and the parts the tests use."""

    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def one(self, keyword: str) -> str:
        (args,) = self.all(keyword)
        return args

    def env(self) -> dict[str, str]:
        pairs = [token.split("=", 1) for args in self.all("ENV") for token in shlex.split(args)]
        return {key: value for key, value in pairs}

    def copies(self) -> list[Copy]:
        result = []
        for args in self.all("COPY"):
            tokens = shlex.split(args)
            flags = [t for t in tokens if t.startswith("--")]
            paths = [t for t in tokens if not t.startswith("--")]
            from_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            result.append(Copy(paths[:-1], paths[-1], from_stage))
        return result

    def command(self, keyword: str = "CMD") -> list[str]:
        """The exec-form command of ``CMD``, or of ``HEALTHCHECK [options] CMD``."""
        args = self.one(keyword)
        if keyword != "CMD":
            args = args.split(" CMD ", 1)[1]
        assert args.strip().startswith("["), f"{keyword} is not in exec (JSON) form"
        command: list[str] = json.loads(args)
        return command


def read_stages(path: Path) -> list[Stage]:
    """The stages of a Dockerfile, continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stages.append(Stage())
        stages[-1].instructions.append((keyword, args.strip()))
    return stages
