"""The markdown the health monitor writes on tickets. Pure builders: values in, text out.

Times are shown in UTC from the wall-clock reading taken when they happened; durations in the
config's spelling ("2m", "1h30m"). Probe text is put in table cells and list items escaped, so
a probe's error message cannot break the markdown around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from tocsin.durations import format_duration
from tocsin.probes.observation import Health, Observation, SubjectKey
from tocsin.tickets.model import Kind
from tocsin.tracker.events import Reason
from tocsin.tracker.state import Nature, Now, ProbeResult

MAX_CELL = 200


def open_description(
    subject: SubjectKey,
    kind: str,
    since: Now,
    recent: Sequence[ProbeResult],
    *,
    flapping: bool = False,
) -> str:
    """What failed, since when, and the last probe results."""
    what = f"{subject.type} {_code(subject.id)}"
    if subject.type == "space":  # a group: its members' outages, not a probe of its own
        lines = [f"**{kind_display(kind)}**: devices of {what} went offline together."]
    elif subject.type == "other":  # the org's storm
        lines = [
            f"**{kind_display(kind)}**: more tickets fell due within a minute than the storm "
            "limit allows; this ticket takes the place of those listed below."
        ]
    else:
        lines = [f"**{kind_display(kind)}**: {what} is failing its health probe."]
    lines += ["", *_failure_facts(last_failure(recent))]
    lines.append(f"- **Since:** {format_time(since.wall)}")
    if flapping:
        lines += ["", _FLAPPING_SENTENCE]
    lines += ["", *results_table(recent)]
    return "\n".join(lines)


def reopen_comment(
    reason: Reason,
    resolved_at: Now,
    since: Now,
    recent: Sequence[ProbeResult],
    ticket_kind: str,
    kind: str,
) -> str:
    if reason is Reason.REOPEN_STILL_UNHEALTHY:
        head = (
            f"**Reopened:** resolved at {format_time(resolved_at.wall)}, but the subject has "
            "stayed unhealthy since."
        )
    else:
        head = (
            f"**Reopened:** failing again since {format_time(since.wall)}, within the reopen "
            f"window of the resolution at {format_time(resolved_at.wall)}."
        )
    lines = [head, "", *_failure_facts(last_failure(recent))]
    if kind != ticket_kind:
        lines.append(f"- **Now:** {kind_display(kind)} (the ticket keeps its kind)")
    lines += ["", *results_table(recent)]
    return "\n".join(lines)


def recovery_comment(
    first_failure: Now | None,
    recovered_at: Now,
    now: Now,
    last: ProbeResult | None,
    *,
    left_open: str | None = None,
) -> str:
    """What recovered and when; `left_open` says why the monitor does not resolve it."""
    lines = [
        f"**Recovered** at {format_time(recovered_at.wall)}: healthy for "
        f"{format_span(now.seconds_since(recovered_at))} since.",
        "",
    ]
    if first_failure is not None:
        lines.append(
            f"- **Outage:** {format_time(first_failure.wall)} to "
            f"{format_time(recovered_at.wall)} "
            f"({format_span(recovered_at.seconds_since(first_failure))})"
        )
    if last is not None:
        lines.append(f"- **Last probe result:** {describe(last.observation)}")
    if left_open is not None:
        lines += ["", f"Left open: {left_open}."]
    return "\n".join(lines)


def detail_changed_comment(old: Nature, new: Nature, ticket_kind: str, result: ProbeResult) -> str:
    changes = []
    if old.kind_hint != new.kind_hint:
        changes.append(f"kind {_word(old.kind_hint)} -> {_word(new.kind_hint)}")
    if old.error_class != new.error_class:
        changes.append(f"error {_word(old.error_class)} -> {_word(new.error_class)}")
    lines = [f"**The failure changed:** {'; '.join(changes)}.", ""]
    lines += _failure_facts(result)
    if new.kind_hint is not None and new.kind_hint != ticket_kind:
        lines += ["", f"The ticket keeps its kind, {kind_display(ticket_kind)}."]
    return "\n".join(lines)


def failed_again_comment(since: Now, result: ProbeResult | None) -> str:
    lines = [f"**Failing again** since {format_time(since.wall)}.", ""]
    if result is not None:
        lines += _failure_facts(result)
    return "\n".join(lines)


def flapping_note(changes: int, window: timedelta) -> str:
    return (
        f"**Flapping:** {changes} state changes in {format_duration(window)}. " + _FLAPPING_SENTENCE
    )


_FLAPPING_SENTENCE = (
    "The subject is flapping: the ticket stays open through the bounces and is resolved only "
    "after a stable recovery."
)

# -- pieces --------------------------------------------------------------------------------------


def results_table(recent: Sequence[ProbeResult]) -> list[str]:
    if not recent:
        return []
    lines = [
        "Last probe results, newest first:",
        "",
        "| Time (UTC) | Result | Detail | Status | Latency | Error |",
        "|---|---|---|---|---|---|",
    ]
    for result in reversed(recent):
        obs = result.observation
        cells = [
            format_time(result.at.wall),
            obs.health.value,
            obs.detail,
            _status(obs) or "",
            _latency(obs) or "",
            obs.error_class or "",
        ]
        lines.append("| " + " | ".join(escape(c) for c in cells) + " |")
    return lines


def describe(obs: Observation) -> str:
    """One line: the probe's detail, then status and latency when the detail lacks them."""
    parts = [escape(obs.detail) or obs.health.value]
    status, latency = _status(obs), _latency(obs)
    if status and status not in obs.detail:
        parts.append(f"status {status}")
    if latency and latency not in obs.detail:
        parts.append(latency)
    return ", ".join(parts)


def _failure_facts(result: ProbeResult | None) -> list[str]:
    if result is None:
        return []
    obs = result.observation
    lines = [f"- **What failed:** {escape(obs.detail) or 'unhealthy'}"]
    error = obs.data.get("error")
    if isinstance(error, str) and error and error != obs.detail:
        lines.append(f"- **Error:** {escape(error)}")
    if obs.error_class:
        lines.append(f"- **Error class:** {_code(obs.error_class)}")
    if status := _status(obs):
        lines.append(f"- **Status code:** {status}")
    if latency := _latency(obs):
        lines.append(f"- **Latency:** {latency}")
    return lines


def last_failure(recent: Sequence[ProbeResult]) -> ProbeResult | None:
    for result in reversed(recent):
        if result.observation.health is Health.UNHEALTHY:
            return result
    return None


def _status(obs: Observation) -> str | None:
    value: Any = obs.data.get("status", obs.data.get("status_code"))
    return str(value) if isinstance(value, int | str) and str(value) else None


def _latency(obs: Observation) -> str | None:
    value: Any = obs.latency_ms if obs.latency_ms is not None else obs.data.get("latency_ms")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.0f} ms"
    return None


def _word(value: str | None) -> str:
    return _code(value) if value else "none"


def _code(word: str) -> str:
    """A short stable word as inline code (backslashes are literal there: drop backticks)."""
    return "`" + " ".join(word.replace("`", "'").split())[:MAX_CELL] + "`"


UNREACHABLE_HEADING = "**Unreachable while this is down**"
UNREACHABLE_LISTED = 200  # ids listed at most; the count says the rest


def with_unreachable(description: str, children: Sequence[str]) -> str:
    """The description with its closing section listing the children this subject holds
    unreachable (replaced, not appended again; gone when none is)."""
    base, _, _ = description.partition(f"\n\n{UNREACHABLE_HEADING}")
    if description.startswith(UNREACHABLE_HEADING):
        base = ""
    if not children:
        return base
    listed = ", ".join(_code(child) for child in children[:UNREACHABLE_LISTED])
    more = len(children) - UNREACHABLE_LISTED
    if more > 0:
        listed += f" and {more} more"
    section = f"{UNREACHABLE_HEADING} ({len(children)}): {listed}"
    return f"{base}\n\n{section}" if base else section


def covered_comment(seq: int) -> str:
    return (
        f"**Covered by #{seq}:** other devices of its space went offline with it; the "
        f"outage is tracked on #{seq} (Multiple devices offline), which lists this device."
    )


def group_grew_comment(members: int, before: int) -> str:
    return f"**{members} devices offline now** (this ticket said {before}); see the list above."


MEMBERS_HEADING = "**Devices in this incident**"
BACK_ONLINE = "back online"


def with_members(description: str, members: Sequence[tuple[str, str]]) -> str:
    """The description with its closing section listing the group's members and the state of
    each, as (id, state: BACK_ONLINE or what else it is) (replaced, not appended again)."""
    base, _, _ = description.partition(f"\n\n{MEMBERS_HEADING}")
    if description.startswith(MEMBERS_HEADING):
        base = ""
    if not members:
        return base
    down = sum(1 for _, state in members if state != BACK_ONLINE)
    head = f"{MEMBERS_HEADING} ({len(members)}, {down} still offline):"
    lines = [head, ""]
    lines += [f"- {_code(member)}: {state}" for member, state in members[:UNREACHABLE_LISTED]]
    more = len(members) - UNREACHABLE_LISTED
    if more > 0:
        lines.append(f"- and {more} more")
    section = "\n".join(lines)
    return f"{base}\n\n{section}" if base else section


def members_listed(description: str) -> list[str]:
    """The ids `with_members` listed in this description (for a restart: the incident's
    devices, those back online included)."""
    _, found, section = description.partition(MEMBERS_HEADING)
    if not found:
        return []
    listed = []
    for line in section.splitlines()[1:]:
        if line.startswith("- `") and "`: " in line:
            listed.append(line[3:].split("`: ", 1)[0])
        elif line.startswith("- and ") or (line and not line.startswith("- ")):
            break
    return listed


def kind_display(kind: str) -> str:
    return Kind(kind).display if kind in Kind.__members__.values() else kind


def format_time(moment: datetime) -> str:
    return moment.replace(tzinfo=None).isoformat(" ", "seconds") + " UTC"


def format_span(seconds: float) -> str:
    return format_duration(timedelta(seconds=max(0, round(seconds))))


def escape(text: str) -> str:
    """Flatten to one line, shorten, and neutralise the characters that would break a table cell
    or start markdown structure."""
    flat = " ".join(text.split())
    if len(flat) > MAX_CELL:
        flat = flat[: MAX_CELL - 3] + "..."
    return flat.translate(_ESCAPES)


# Each character that would break a table cell or start markdown structure, backslashed.
_ESCAPES = str.maketrans({char: "\\" + char for char in "\\|`*_[]<>"})
