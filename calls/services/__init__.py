"""The domain: the one place that changes a call. Interfaces call ``services.<verb>``.

Rooms: ``records`` (messages, errors, finding calls, state steps), ``lifecycle`` (initiate, place,
end), ``ingest`` (carrier events and webhooks, inbound policy), ``turns`` (speak, continue, DTMF),
``responder`` (the LLM auto-reply), ``maintenance`` (reaper, restore, retention), ``reports``
(status, latency), ``operations`` (pollable continue), ``call_updates`` (cross-process wake-ups) and
``effects`` (the port side effects leave through, after commit; no module here imports tasks or
media code). Services own transactions; providers only translate wire formats (fact sheet §2, §8).
"""

from calls.services.ingest import (  # noqa: F401 - the public verbs, re-exported
    EventOutcome,
    WebhookResult,
    apply_event,
    inbound_allowed,
    process_events,
    process_webhook,
    storable_event,
)
from calls.services.lifecycle import (  # noqa: F401
    answer_inbound_call,
    end_call,
    enforce_max_duration,
    fail_call,
    hang_up_after_notify,
    hang_up_stray_leg,
    initiate_call,
    place_call,
    reject_inbound_call,
)
from calls.services.maintenance import prune_old_records, reap_stale_calls, restore_calls  # noqa: F401
from calls.services.records import (  # noqa: F401
    ALREADY_WAITING,
    CALL_ENDED_WHILE_WAITING,
    CALL_HAS_ENDED,
    CALL_NOT_CONNECTED,
    CALL_NOT_FOUND,
    DIGITS_REQUIRED,
    INVALID_DIGITS,
    INVALID_MODE,
    INVALID_NUMBER,
    MAX_SPOKEN_TEXT_CHARS,
    MESSAGE_REQUIRED,
    MOCK_DEFAULT_FROM,
    PLACEMENT_EXPIRED,
    PLACEMENT_INTERRUPTED,
    TEXT_TOO_LONG,
    TO_REQUIRED,
    ServiceError,
    carrier,
    find_call,
    snapshot,
)
from calls.services.reports import call_to_dict, get_status, latency_report  # noqa: F401
from calls.services.responder import generate_reply, responder_settings  # noqa: F401
from calls.services.turns import continue_call, deliver_initial_message, send_dtmf, speak, start_listening  # noqa: F401
