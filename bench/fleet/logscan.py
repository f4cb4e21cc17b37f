"""Reading the daemon's JSON log incrementally: entries with their wall time, and the ones a
report should quote (warnings, errors, tracebacks)."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleet.daemon import parse_time


@dataclass
class Entry:
    at: float
    level: str
    event: str
    fields: dict[str, Any]


@dataclass
class LogReader:
    """Reads new complete lines of a JSON log at each `read()`; keeps the entries `keep` says
    to keep, counts all of them by level and event."""

    path: Path
    offset: int = 0
    entries: list[Entry] = field(default_factory=list)
    levels: Counter[str] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    not_json: list[str] = field(default_factory=list)
    tracebacks: list[Entry] = field(default_factory=list)

    def keep(self, entry: Entry) -> bool:
        return True

    def read(self) -> list[Entry]:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except OSError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        new: list[Entry] = []
        for raw in data[: end + 1].decode(errors="replace").splitlines():
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except ValueError:
                if len(self.not_json) < 200:
                    self.not_json.append(raw[:300])
                continue
            if not isinstance(item, dict):
                continue
            stamp = item.get("timestamp")
            entry = Entry(
                parse_time(stamp) if isinstance(stamp, str) else 0.0,
                str(item.get("level", "")),
                str(item.get("event", "")),
                item,
            )
            self.levels[entry.level] += 1
            self.events[entry.event] += 1
            if "exception" in item:
                self.tracebacks.append(entry)
            if self.keep(entry):
                self.entries.append(entry)
                new.append(entry)
        return new


def first_and_last_lines(text: str, lines: int = 3) -> str:
    parts = [p for p in text.strip().splitlines() if p.strip()]
    if len(parts) <= 2 * lines:
        return "\n".join(parts)
    return "\n".join([*parts[:lines], "    ...", *parts[-lines:]])
