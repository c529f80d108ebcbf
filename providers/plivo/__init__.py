"""Plivo Voice API + Plivo XML: REST commands, V3/V2 webhook signatures, event mapping, XML replies.

References: OpenClaw fact sheet §3.3 (operations, flows, event mapping), §4.2 (which URL was signed),
§4.3 (signature algorithms), §4.4 (replay keys); protocols.md §6 (REST, XML, callback parameters,
signature construction from ``plivo/utils/signature_v3.py`` 4.63.0) and §9 (test vectors).

Wire shapes
-----------
* REST: ``{plivo.apiBaseUrl}/v1/Account/{authId}/…``, HTTP Basic ``authId:authToken``, JSON bodies.
  Make call ``POST /Call/`` answers 201 ``{"request_uuid": …}``; the ``CallUUID`` only arrives in
  callbacks, which also carry ``RequestUUID`` so the provisional id can be upgraded (we emit events
  with ``provider_call_id=CallUUID, previous_provider_call_id=RequestUUID``). Hang up
  ``DELETE /Call/{CallUUID}/``; cancel a call that has no CallUUID yet ``DELETE /Request/{RequestUUID}/``.
  Live "XML transfer" ``POST /Call/{CallUUID}/`` ``{legs: "aleg", aleg_url, aleg_method}``: Plivo
  fetches XML from ``aleg_url`` and runs it in place of the current flow. DTMF
  ``POST /Call/{CallUUID}/DTMF/``.
* Webhooks: form-encoded POSTs to our webhook URL; our query parameter ``flow`` says which one:
  ``answer`` (answer_url; also the default when ``flow`` is absent), ``ring``, ``hangup``,
  ``getinput`` (the ``<GetInput>`` action), ``xml-speak`` / ``xml-listen`` (transfer targets, no
  events) and ``keepalive`` (our ``<Redirect>`` after a long ``<Wait>``, no events). For inbound
  calls, point the Plivo application's Answer URL (POST) at the webhook URL as is and its Hangup URL
  at the same URL (``?flow=hangup`` optional: a final ``CallStatus`` ends the call either way).
  Every reply is ``text/xml`` Plivo XML built with the SDK's ``plivo.plivoxml`` (text is escaped by
  lxml; characters XML cannot carry are dropped first).
* Signatures: ``X-Plivo-Signature-V3`` (+ ``-V3-Nonce``) is preferred whenever present: HMAC-SHA256
  with the auth token over the SDK's base string (URL with sorted query, then sorted POST params)
  + ``"." + nonce``; the header may hold several comma-separated signatures, any may match. Without
  V3 headers, ``X-Plivo-Signature-V2`` (+ nonce) over ``URL-without-query + nonce``. The URL is
  ``publicUrl``'s origin + the request's path and query, or the URL reconstructed under the same
  forwarding-header trust rules as Twilio (``providers/security.py``), then the same port variants.

Decisions (where the fact sheet is silent or we deliberately differ)
--------------------------------------------------------------------
* REST goes through ``requests.Session``, not the ``plivo`` SDK's client: the SDK takes its API host
  from module-level constants (process-wide, not per config), silently fails over to other Plivo
  hosts on a 5xx with a retry counter it never resets, prints to stdout, and refuses auth ids not
  shaped like ``MA…``/``SA…``. None of that fits a configurable base URL pointed at a local fake.
  The SDK is still used for Plivo XML and, in tests, as the reference signature validator.
* Pending speech travels in the transfer URL, not in server-side state: providers never touch the
  ORM and any process may serve the XML fetch. ``say`` (``xml-speak``) / ``listen`` (``xml-listen``)
  hold ``v1.<base64url(zlib(JSON))>.<base64url(HMAC-SHA256)>`` with the call id, flow, text, language,
  whether to listen afterwards and the turn token. The HMAC key is derived from the auth token, so
  only whoever holds the token can make us speak; the payload is bound to the call id and flow in the
  query (it cannot be moved to another call or flow). A tampered or foreign payload is a 400, and a
  transfer URL longer than ``MAX_TRANSFER_URL_CHARS`` is refused before calling Plivo.
* Turn tokens: the ``<GetInput>`` action URL carries ``turnToken=…`` when a ``continue`` turn is
  pending, and Plivo signs that URL (V3 covers the query), so ``uses_turn_tokens = True``: a late
  answer to an earlier prompt cannot complete the current turn.
* Speaking inside ``<GetInput>`` (``<GetInput><Speak>…</Speak></GetInput>``) starts listening when the
  prompt ends, so the bot never transcribes itself and the caller may barge in.
* Keep-alive: after speaking or listening the call parks in ``<Wait length="300"/>`` followed by a
  ``<Redirect>`` to ``flow=keepalive``, which answers the same again, so a quiet call stays up until
  it is hung up or ``maxDurationSeconds`` ends it (upstream's bare ``<Wait>`` hung up after 5 min).
* ``speechEndTimeout`` is left out of ``<GetInput>`` so Plivo's default end-of-speech detection
  applies; the SDK cannot emit ``auto`` (it int-casts the value, protocols §6).
* Numbers: Plivo sends and takes numbers without ``+``. Callback numbers are normalised to E.164
  (``14155550100`` → ``+14155550100``); SIP URIs and non-numeric caller ids (``anonymous``) are kept.
  We dial digits only, Plivo's documented form.
* Make call sends ``hangup_on_ring`` *and* ``ring_timeout`` from ``ringTimeoutMs`` (both mean "stop
  ringing after N s"), ``ring_url`` (so the CallUUID and the ``ringing`` state arrive before answer)
  and ``time_limit`` = ``maxDurationSeconds`` + ``TIME_LIMIT_MARGIN_SECONDS`` as a carrier-side
  backstop should our own max-duration timer not run.
* Dedupe keys: lifecycle events (ringing, answered, ended) are keyed by call and type
  (``plivo:<CallUUID>:<type>``), so a retried callback with a fresh nonce is still applied once;
  speech and digits are keyed by the verified request key (two identical answers are two turns).
* Hang-up without knowing which id we hold (RequestUUID before the first callback, CallUUID after):
  ``DELETE /Call/{id}/`` first, and on 404 ``DELETE /Request/{id}/``; a 404 there too means the call
  is already gone, which is success.
* Status lookup (reaper / restore): live call (``?status=live``), then the call detail record (the
  call ended), then the queue (``?status=queued``); found nowhere is terminal ``not-found`` as
  upstream. The CDR field ``call_state`` is read leniently [unverified field values].
* ``CallStatus=timeout`` ends the call ``no-answer`` (it is the ring timeout), ``cancel`` ends it
  ``hangup-bot`` (we cancelled it), ``machine`` ends it ``voicemail``; an unknown status on a hang-up
  callback ends it ``failed`` (upstream: "other → failed"). A ``completed`` hang-up whose
  ``HangupSource`` is ``API Request`` (our own ``DELETE``) ends it ``hangup-bot``, so the end reason
  does not depend on whether that callback or ``end_call``'s own write lands first.
* Voice: replies set only ``language`` (default ``en-US``, or ``metadata.language`` of the call),
  as upstream; Plivo's default voice is used because the configured TTS voice names (OpenAI,
  ElevenLabs) mean nothing to Plivo.
* DTMF pause characters: ``w`` (0.5 s) and ``W`` (1 s) are Plivo's; ``,``/``p``/``P`` become ``W``.
"""

from providers.plivo.provider import PlivoProvider  # noqa: F401 - the package's face
from providers.plivo.signatures import (  # noqa: F401
    v2_replay_key,
    v2_signature,
    v3_base_string,
    v3_replay_key,
    v3_signature,
    verify_signature,
)
from providers.plivo.wire import TRANSFER_PARAMS, Flow, dial_number, normalize_number  # noqa: F401
