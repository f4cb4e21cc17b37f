"""The ticket's state machine, in one place: which action moves which state where, and what
timeline event and trigger it writes. Pure: the store applies it inside its transaction."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from tocsin.tickets.model import EventType, State, TriggerType


class Action(StrEnum):
    START = "start"
    RESOLVE = "resolve"
    REOPEN = "reopen"


@dataclass(frozen=True)
class Transition:
    sources: frozenset[State]
    target: State
    event: EventType


TRANSITIONS: dict[Action, Transition] = {
    Action.START: Transition(frozenset({State.OPEN}), State.IN_PROGRESS, EventType.STARTED),
    Action.RESOLVE: Transition(
        frozenset({State.OPEN, State.IN_PROGRESS}), State.RESOLVED, EventType.RESOLVED
    ),
    Action.REOPEN: Transition(frozenset({State.RESOLVED}), State.OPEN, EventType.REOPENED),
}

# Every timeline event but a description edit fires a trigger.
TRIGGERS: dict[EventType, TriggerType | None] = {
    EventType.OPENED: TriggerType.OPENED,
    EventType.STARTED: TriggerType.STARTED,
    EventType.RESOLVED: TriggerType.RESOLVED,
    EventType.REOPENED: TriggerType.REOPENED,
    EventType.COMMENT: TriggerType.COMMENT_ADDED,
    EventType.DESCRIPTION_EDITED: None,
}


class IllegalTransition(Exception):
    """The action does not apply to the ticket's current state; nothing was changed."""

    def __init__(self, action: Action, current: State) -> None:
        self.action = action
        self.current = current
        allowed = " or ".join(sorted(s.value for s in TRANSITIONS[action].sources))
        super().__init__(
            f"cannot {action.value} a ticket that is {current.value} (only when {allowed})"
        )


def apply(action: Action, current: State) -> Transition:
    """The transition `action` makes from `current`; raise IllegalTransition if none."""
    transition = TRANSITIONS[action]
    if current not in transition.sources:
        raise IllegalTransition(action, current)
    return transition
