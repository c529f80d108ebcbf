"""The call state machine (OpenClaw fact sheet §2.2-2.3).

``initiated → ringing → answered → active → speaking ⇄ listening`` and nine terminal states.
Terminal is sticky, backwards moves are ignored, any live state may end. Kept free of Django so it
can be tested exhaustively.
"""

from __future__ import annotations

import enum


class CallState(enum.StrEnum):
    INITIATED = "initiated"
    RINGING = "ringing"
    ANSWERED = "answered"
    ACTIVE = "active"
    SPEAKING = "speaking"
    LISTENING = "listening"
    COMPLETED = "completed"
    HANGUP_USER = "hangup-user"
    HANGUP_BOT = "hangup-bot"
    TIMEOUT = "timeout"
    ERROR = "error"
    FAILED = "failed"
    NO_ANSWER = "no-answer"
    BUSY = "busy"
    VOICEMAIL = "voicemail"


LIVE_ORDER: tuple[CallState, ...] = (
    CallState.INITIATED,
    CallState.RINGING,
    CallState.ANSWERED,
    CallState.ACTIVE,
    CallState.SPEAKING,
    CallState.LISTENING,
)
TERMINAL_STATES: frozenset[CallState] = frozenset(set(CallState) - set(LIVE_ORDER))
LIVE_STATES: frozenset[CallState] = frozenset(LIVE_ORDER)
# Placed or ringing, not yet answered: speech waits for these to connect (up to ringTimeoutMs).
PRE_ANSWER_STATES: frozenset[CallState] = frozenset({CallState.INITIATED, CallState.RINGING})
# Once a call is answered it can be spoken to; before that the carrier has nothing to play into.
CONNECTED_STATES: frozenset[CallState] = frozenset(
    {CallState.ANSWERED, CallState.ACTIVE, CallState.SPEAKING, CallState.LISTENING}
)
END_REASONS: tuple[str, ...] = tuple(sorted(s.value for s in TERMINAL_STATES))

_RANK = {state: index for index, state in enumerate(LIVE_ORDER)}


def is_terminal(state: str) -> bool:
    return state in TERMINAL_STATES


def next_state(current: str, target: str) -> str:
    """The state after asking ``current`` to move to ``target`` (``current`` when the move is ignored)."""
    current_state, target_state = CallState(current), CallState(target)
    if current_state == target_state or current_state in TERMINAL_STATES:
        return current_state.value
    if target_state in TERMINAL_STATES:
        return target_state.value
    if {current_state, target_state} == {CallState.SPEAKING, CallState.LISTENING}:
        return target_state.value
    if _RANK[target_state] > _RANK[current_state]:
        return target_state.value
    return current_state.value


def can_transition(current: str, target: str) -> bool:
    return next_state(current, target) != current
