"""The ticket state machine's pure rules (tocsin.tickets.transitions), one case per
(action, state) pair, and the event -> trigger table."""

from __future__ import annotations

import itertools

import pytest

from tocsin.tickets.model import EventType, State, TriggerType
from tocsin.tickets.transitions import TRIGGERS, Action, IllegalTransition, apply

# (action, current state) -> (target state, timeline event); absent pairs are illegal.
LEGAL: dict[tuple[Action, State], tuple[State, EventType]] = {
    (Action.START, State.OPEN): (State.IN_PROGRESS, EventType.STARTED),
    (Action.RESOLVE, State.OPEN): (State.RESOLVED, EventType.RESOLVED),
    (Action.RESOLVE, State.IN_PROGRESS): (State.RESOLVED, EventType.RESOLVED),
    (Action.REOPEN, State.RESOLVED): (State.OPEN, EventType.REOPENED),
}
ALL_PAIRS = list(itertools.product(Action, State))
ILLEGAL = [pair for pair in ALL_PAIRS if pair not in LEGAL]


def pair_id(pair: tuple[Action, State]) -> str:
    action, state = pair
    return f"{action.value}-from-{state.value}"


def test_the_tables_below_cover_every_action_from_every_state():
    assert len(ALL_PAIRS) == len(Action) * len(State) == 9
    assert set(LEGAL) | set(ILLEGAL) == set(ALL_PAIRS)
    assert not set(LEGAL) & set(ILLEGAL)


@pytest.mark.parametrize("pair", list(LEGAL), ids=pair_id)
def test_it_moves_a_ticket_to_the_target_state_with_its_event(pair):
    action, current = pair
    target, event = LEGAL[pair]

    transition = apply(action, current)

    assert transition.target is target
    assert transition.event is event
    assert current in transition.sources


@pytest.mark.parametrize("pair", ILLEGAL, ids=pair_id)
def test_it_refuses_an_action_that_does_not_apply_to_the_current_state(pair):
    action, current = pair

    with pytest.raises(IllegalTransition) as caught:
        apply(action, current)

    assert caught.value.action is action
    assert caught.value.current is current
    message = str(caught.value)
    assert f"cannot {action.value} a ticket that is {current.value}" in message


@pytest.mark.parametrize(
    ("action", "allowed"),
    [
        (Action.START, "open"),
        (Action.RESOLVE, "in_progress or open"),
        (Action.REOPEN, "resolved"),
    ],
    ids=[a.value for a in Action],
)
def test_its_refusal_says_from_which_states_the_action_would_apply(action, allowed):
    current = next(s for s in State if (action, s) not in LEGAL)

    with pytest.raises(IllegalTransition, match=rf"\(only when {allowed}\)$"):
        apply(action, current)


@pytest.mark.parametrize(
    ("event", "trigger"),
    [
        (EventType.OPENED, TriggerType.OPENED),
        (EventType.STARTED, TriggerType.STARTED),
        (EventType.RESOLVED, TriggerType.RESOLVED),
        (EventType.REOPENED, TriggerType.REOPENED),
        (EventType.COMMENT, TriggerType.COMMENT_ADDED),
        (EventType.DESCRIPTION_EDITED, None),
    ],
    ids=[e.value for e in EventType],
)
def test_each_timeline_event_fires_its_trigger_and_a_description_edit_fires_none(event, trigger):
    assert TRIGGERS[event] is trigger


def test_every_event_type_has_a_trigger_entry_and_every_trigger_is_fired_by_some_event():
    assert set(TRIGGERS) == set(EventType)
    assert {t for t in TRIGGERS.values() if t is not None} == set(TriggerType)


def test_the_trigger_names_are_the_ones_the_contract_lists():
    assert {t.value for t in TriggerType} == {
        "ticket.opened",
        "ticket.started",
        "ticket.comment_added",
        "ticket.resolved",
        "ticket.reopened",
    }
