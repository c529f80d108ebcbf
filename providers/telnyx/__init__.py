"""Telnyx Call Control v2: REST commands, Ed25519 webhook verification and event mapping.

References: OpenClaw fact sheet §3.2 (operations and event mapping), §4.3 (signature checks), §4.4
(replay keys); protocols.md §5 (endpoints, webhook envelope, Ed25519 signatures) and §9 (vectors).

Wire shapes
-----------
* REST: ``{apiBaseUrl}/v2``, ``Authorization: Bearer <apiKey>``, JSON in and out. Commands answer
  ``{"data": {"result": "ok"}}``; errors are ``{"errors": [{"code", "title", "detail"}]}``.
* Webhooks: ``{"data": {"id", "event_type", "occurred_at", "payload": {...}}, "meta": {...}}``,
  signed with Ed25519 over ``f"{telnyx-timestamp}|{raw body}"``. Our reply is a plain ``OK``: Telnyx
  takes no commands in a webhook response.

Decisions (where the fact sheet is silent or we deliberately differ)
--------------------------------------------------------------------
* Every command carries a ``command_id``; Telnyx ignores a second command with the same id on the
  same call. Ids are deterministic where a retry must not act twice (dial, answer, hang-up, reject)
  and fresh per request for speech and transcription (each is a new utterance or turn). A command
  that fails with a timeout, a connection error or a 5xx is retried once with the same id.
* The event dedupe key is ``data.id``, so a redelivery of one event (new timestamp, new signature,
  hence a new request key) is still applied once. Events without an id fall back to the request key.
* ``call.speak.ended`` with ``status: call_hangup`` means the far end hung up mid-sentence: it yields
  no ``call.spoken`` (the ``call.hangup`` that follows ends the call with the carrier's cause), so
  we never send a hang-up or a transcription request into a dead call.
* Hang-up causes documented by Telnyx but absent from the OpenClaw table are mapped explicitly
  (``timeout`` → no-answer, ``time_limit`` → timeout, ``not_found`` → failed); unknown causes end
  the call ``completed`` with a warning, as upstream.
* The voice is the configured TTS voice only when it is one Telnyx understands (``male``/``female``
  or an engine-qualified name such as ``AWS.Polly.Joanna-Neural``); an OpenAI voice name like
  ``alloy`` falls back to ``female`` instead of failing every speak command.
* ``stop_listening`` is best effort: a failure is logged, never raised, because it runs after the
  caller's reply was already received.
"""

from providers.telnyx.provider import TelnyxProvider  # noqa: F401 - the package's face
from providers.telnyx.signatures import (  # noqa: F401
    REASON_BAD_PUBLIC_KEY,
    REASON_MISSING_HEADERS,
    REASON_NO_PUBLIC_KEY,
    REASON_SIGNATURE_MISMATCH,
    REASON_TIMESTAMP_IN_FUTURE,
    REASON_TIMESTAMP_TOO_OLD,
    load_public_key,
    verify_signature,
)
from providers.telnyx.wire import EVENT_TYPES, HANGUP_CAUSES, decode_client_state, encode_client_state  # noqa: F401
