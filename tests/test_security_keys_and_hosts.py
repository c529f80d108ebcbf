"""Webhook security beyond signatures: replay keys (OC §4.4), URL redaction, local and private hosts (§4.6), the media-stream client IP (§5.2) and the in-flight limiter (§4.1 step 5)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from calls.interfaces.limits import InFlightLimiter, TooManyInFlight
from providers.security import (
    UNKNOWN_CLIENT,
    ForwardingTrust,
    header,
    is_local_or_private_host,
    is_loopback_address,
    redact_url,
    skip_mode_replay_key,
    stream_client_ip,
    twilio_replay_key,
)
from tests.test_security import ALL_INTERFACES, TW_PARAMS, make_request, verify

# --- replay keys (OC §4.4) -----------------------------------------------------------------------


def test_twilio_replay_key_is_stable_and_ignores_unsigned_idempotency_header():
    first = make_request(
        params=TW_PARAMS,
        headers={"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "I-Twilio-Idempotency-Token": "one"},
    )
    resent = make_request(
        params=TW_PARAMS,
        headers={"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8=", "I-Twilio-Idempotency-Token": "two"},
    )
    keys = []
    for req in (first, resent):
        check = verify(req, "12345")
        assert check.ok
        keys.append(twilio_replay_key(check.matched_url, req.form_params, header(req, "X-Twilio-Signature")))
    assert keys[0] == keys[1]
    assert keys[0].startswith("twilio:req:")
    assert len(keys[0]) == len("twilio:req:") + 64


def test_twilio_replay_key_ignores_param_order_but_not_content():
    url, sig = "https://mycompany.com/myapp.php?foo=1&bar=2", "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    pairs = list(TW_PARAMS.items())
    key = twilio_replay_key(url, pairs, sig)
    assert twilio_replay_key(url, list(reversed(pairs)), sig) == key
    assert twilio_replay_key(url, [*pairs[:-1], ("To", "+18005551213")], sig) != key
    assert twilio_replay_key(url, pairs, "other-signature") != key
    assert twilio_replay_key(url + "&x=1", pairs, sig) != key
    # Separators inside values cannot forge another param set.
    assert twilio_replay_key(url, [("a", "1&b=2")], sig) != twilio_replay_key(
        url, [("a", "1"), ("b", "2")], sig
    )


def test_skip_mode_replay_key():
    key = skip_mode_replay_key("mock", "POST", "https://h.example/voice/webhook", b'{"a":1}')
    expected = hashlib.sha256(b'POST\nhttps://h.example/voice/webhook\n{"a":1}').hexdigest()
    assert key == f"mock:skip:{expected}"
    assert skip_mode_replay_key("mock", "POST", "https://h.example/voice/webhook", b'{"a":2}') != key
    assert skip_mode_replay_key("twilio", "POST", "https://h.example/voice/webhook", b'{"a":1}') != key


# --- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h.example/p?token=s3cr3t&callId=abc", "https://h.example/p?token=***&callId=***"),
        ("https://user:pa55@h.example:8443/p?x=1", "https://h.example:8443/p?x=***"),
        ("https://h.example/p?s3cr3t", "https://h.example/p?***"),
        ("https://h.example/p?a=&b", "https://h.example/p?a=***&***"),
        ("https://h.example/p#s3cr3t", "https://h.example/p"),
        ("https://h.example/p", "https://h.example/p"),
        ("https://[broken/p?token=s3cr3t", "<unparseable URL>"),
    ],
)
def test_redact_url_masks_query_values_and_userinfo(url, expected):
    redacted = redact_url(url)
    assert redacted == expected
    assert "s3cr3t" not in redacted
    assert "pa55" not in redacted


# --- local / private hosts (OC §4.6) -------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "private"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        (ALL_INTERFACES, True),
        ("::", True),
        ("::1", True),
        ("[::1]", True),
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("10.1.2.3", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("172.16.0.1", True),
        ("172.31.255.255", True),
        ("fc00::1", True),
        ("fd12:3456::1", True),
        ("::ffff:192.168.0.1", True),
        ("2130706433", True),  # 127.0.0.1 spelled as a number
        ("0x7f.1", True),
        ("172.15.0.1", False),
        ("172.32.0.1", False),
        ("192.169.0.1", False),
        ("8.8.8.8", False),
        ("2001:db8::1", False),
        ("fe80::1", False),  # not in the OpenClaw list
        ("example.ngrok.io", False),
        ("fcbarcelona.example", False),  # "fc*" is about IPv6 literals, not names
        ("10.example.com", False),
    ],
)
def test_is_local_or_private_host(host, private):
    assert is_local_or_private_host(host) is private


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        (ALL_INTERFACES, False),
        ("", False),
        (None, False),
    ],
)
def test_is_loopback_address(addr, loopback):
    assert is_loopback_address(addr) is loopback


# --- media-stream client IP (OC §5.2) ------------------------------------------------------------

PROXY_TRUST = ForwardingTrust(trust_forwarding_headers=True, trusted_proxy_ips=("10.0.0.1", "10.0.0.2"))


@pytest.mark.parametrize(
    ("remote", "headers", "trust", "expected"),
    [
        pytest.param(
            "198.51.100.7", {"X-Forwarded-For": "1.1.1.1"}, ForwardingTrust(), "198.51.100.7", id="no-trust"
        ),
        pytest.param(
            "198.51.100.7",
            {"X-Forwarded-For": "1.1.1.1"},
            PROXY_TRUST,
            "198.51.100.7",
            id="socket-not-a-proxy",
        ),
        pytest.param(
            "10.0.0.1",
            {"X-Forwarded-For": "1.1.1.1"},
            ForwardingTrust(trust_forwarding_headers=True),
            "10.0.0.1",
            id="no-proxy-list",
        ),
        pytest.param(
            "10.0.0.1",
            {"X-Forwarded-For": "1.1.1.1"},
            ForwardingTrust(allowed_hosts=("a.example",), trusted_proxy_ips=("10.0.0.1",)),
            "10.0.0.1",
            id="allowed-hosts-is-not-trust",
        ),
        pytest.param(
            "10.0.0.1",
            {"x-forwarded-for": "6.6.6.6, 203.0.113.4, 10.0.0.2"},
            PROXY_TRUST,
            "203.0.113.4",
            id="right-most-untrusted-hop",
        ),
        pytest.param(
            "::ffff:10.0.0.1",
            {"X-Forwarded-For": "[::ffff:203.0.113.4]"},
            PROXY_TRUST,
            "203.0.113.4",
            id="mapped",
        ),
        pytest.param(
            "10.0.0.1", {"X-Forwarded-For": "10.0.0.2, 10.0.0.1"}, PROXY_TRUST, "10.0.0.2", id="all-proxies"
        ),
        pytest.param("10.0.0.1", {"X-Real-IP": "203.0.113.9"}, PROXY_TRUST, "203.0.113.9", id="x-real-ip"),
        pytest.param("10.0.0.1", {}, PROXY_TRUST, "10.0.0.1", id="no-headers"),
        pytest.param(
            None, {"X-Forwarded-For": "1.1.1.1"}, PROXY_TRUST, UNKNOWN_CLIENT, id="no-socket-address"
        ),
    ],
)
def test_stream_client_ip(remote, headers, trust, expected):
    assert stream_client_ip(remote, headers, trust) == expected


# --- in-flight limiter (OC §4.1 step 5) ----------------------------------------------------------


def test_limiter_caps_per_key_and_releases():
    limiter = InFlightLimiter(max_per_key=2)
    assert limiter.acquire("1.2.3.4")
    assert limiter.acquire("1.2.3.4")
    assert not limiter.acquire("1.2.3.4")
    assert limiter.acquire("5.6.7.8")  # other keys are independent
    limiter.release("1.2.3.4")
    assert limiter.acquire("1.2.3.4")
    limiter.release("9.9.9.9")  # releasing an unknown key is harmless
    assert limiter.in_flight("9.9.9.9") == 0


def test_limiter_slot_raises_when_full_and_frees_on_exit():
    limiter = InFlightLimiter(max_per_key=1)
    with limiter.slot("1.2.3.4"):
        with pytest.raises(TooManyInFlight), limiter.slot("1.2.3.4"):
            pass
        assert limiter.in_flight("1.2.3.4") == 1
    assert limiter.in_flight("1.2.3.4") == 0
    with pytest.raises(RuntimeError), limiter.slot("1.2.3.4"):
        raise RuntimeError("handler failed")
    assert limiter.in_flight("1.2.3.4") == 0


def test_limiter_missing_key_shares_unknown_bucket():
    limiter = InFlightLimiter(max_per_key=1)
    assert limiter.acquire(None)
    assert not limiter.acquire(None)
    assert not limiter.acquire(UNKNOWN_CLIENT)
    limiter.release(None)
    assert limiter.in_flight(None) == 0


def test_limiter_is_thread_safe():
    limiter = InFlightLimiter(max_per_key=8)
    barrier = threading.Barrier(32)
    results: list[bool] = []

    def worker() -> None:
        barrier.wait()
        results.append(limiter.acquire("1.2.3.4"))

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count(True) == 8
    assert limiter.in_flight("1.2.3.4") == 8


def test_limiter_rejects_nonsense_limit():
    with pytest.raises(ValueError, match="at least 1"):
        InFlightLimiter(max_per_key=0)
