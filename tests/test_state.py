"""The call state machine, exhaustively (fact sheet §2.3)."""

import itertools

import pytest

from calls.state import LIVE_ORDER, TERMINAL_STATES, CallState, can_transition, is_terminal, next_state

ALL = list(CallState)


def test_there_are_nine_terminal_states_and_six_live_ones():
    assert len(TERMINAL_STATES) == 9
    assert len(LIVE_ORDER) == 6
    assert {s.value for s in TERMINAL_STATES} == {
        "completed", "hangup-user", "hangup-bot", "timeout", "error", "failed", "no-answer", "busy", "voicemail"
    }


@pytest.mark.parametrize(("current", "target"), list(itertools.product(ALL, ALL)))
def test_every_pair_follows_the_rules(current, target):
    result = next_state(current, target)
    if current in TERMINAL_STATES:
        assert result == current, "terminal is sticky"
    elif current == target:
        assert result == current
    elif target in TERMINAL_STATES:
        assert result == target, "any live state may end"
    elif {current, target} == {CallState.SPEAKING, CallState.LISTENING}:
        assert result == target, "speaking and listening alternate"
    elif LIVE_ORDER.index(target) > LIVE_ORDER.index(current):
        assert result == target, "forward moves are allowed"
    else:
        assert result == current, "backward moves are ignored"


def test_ringing_after_answered_is_ignored():
    assert next_state("answered", "ringing") == "answered"
    assert not can_transition("answered", "ringing")


def test_speaking_listening_round_trip():
    assert next_state(next_state("speaking", "listening"), "speaking") == "speaking"


def test_is_terminal():
    assert is_terminal("busy") and not is_terminal("listening")


def test_unknown_state_is_rejected():
    with pytest.raises(ValueError):
        next_state("answered", "on-hold")
