"""providers.security: public URL reconstruction, trust in forwarding headers, Twilio signatures, replay
keys, redaction, private hosts, media-stream client IP and the in-flight limiter.

Twilio vectors T1-T5 are from reference/protocols.md §1/§9 (computed with twilio 9.13.0); the trust
rules from reference/openclaw-voice-call.md §4.2, §4.3, §4.6 and §5.2.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import urlencode

import pytest

from calls.config import config_from_dict
from providers.security import (
    REASON_BODY_HASH,
    REASON_MISSING_SIGNATURE,
    REASON_OK,
    REASON_UNCONFIGURED,
    ForwardingTrust,
    WebhookRequest,
    forwarding_headers_trusted,
    header,
    is_valid_hostname,
    reconstruct_public_url,
    url_port_variants,
    verification_url,
    verify_twilio_signature,
)
from providers.settings import WebhookTrustSettings

# --- vectors (protocols.md §9) -------------------------------------------------------------------

TW_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
T3_TOKEN = "test_auth_token_0123456789abcdef"
T3_PARAMS = {
    "AccountSid": "AC00000000000000000000000000000000",
    "ApiVersion": "2010-04-01",
    "CallSid": "CA11111111111111111111111111111111",
    "CallStatus": "in-progress",
    "Confidence": "0.92",
    "Direction": "outbound-api",
    "From": "+15005550006",
    "SpeechResult": "Yes, I'd like to book.",
    "To": "+14155550100",
}
T3_SIGNATURE = "UB7iI6C7EI8PyLKvH6qApqPq6gg="
T2_SIGNATURE = "kvajT1Ptam85bY51eRf/AJRuM3w="
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - a host value under test, nothing binds to it
TW_JSON_BODY = b'{"property": "value", "boolean": true}'
TW_JSON_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def twilio_sig(token: str, url: str, params: dict[str, str] | None = None, digest=hashlib.sha1) -> str:
    """protocols.md §9 reference signer (HMAC over url + sorted key+value), independent of the SDK."""
    params = params or {}
    s = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), s.encode(), digest).digest()).decode()


def make_request(
    *,
    path: str = "/myapp.php",
    query: str = "foo=1&bar=2",
    headers: dict[str, str] | None = None,
    params: dict[str, str | list[str]] | None = None,
    body: bytes | None = None,
    remote: str | None = "203.0.113.5",
    host: str | None = None,
    method: str = "POST",
) -> WebhookRequest:
    headers = {"Host": "mycompany.com", "Content-Type": "application/x-www-form-urlencoded"} | (headers or {})
    if body is None:
        body = urlencode(params or {}, doseq=True).encode()
    return WebhookRequest(
        method=method,
        path=path,
        query_string=query,
        headers=headers,
        body=body,
        remote_addr=remote,
        host=host,
    )


def make_cfg(
    *,
    allowed_hosts: list[str] | None = None,
    trust_forwarding_headers: bool = False,
    trusted_proxy_ips: list[str] | None = None,
    tunnel_provider: str = "none",
    ngrok_bypass: bool = False,
    bind: str = "127.0.0.1",
) -> WebhookTrustSettings:
    """The trust settings adapters get from a config with these ``webhookSecurity``/``tunnel`` keys."""
    config = config_from_dict(
        {
            "webhookSecurity": {
                "allowedHosts": allowed_hosts or [],
                "trustForwardingHeaders": trust_forwarding_headers,
                "trustedProxyIPs": trusted_proxy_ips or [],
            },
            "tunnel": {"provider": tunnel_provider, "allowNgrokFreeTierLoopbackBypass": ngrok_bypass},
            "serve": {"bind": bind, "port": 3334, "path": "/voice/webhook"},
        },
        env={},
    )
    return config.provider_settings.webhook_trust


def verify(
    req: WebhookRequest, token: str, trust: ForwardingTrust | None = None, public_url: str | None = None
):
    trust = trust or ForwardingTrust()
    url = verification_url(req, trust, public_url)
    urls = url_port_variants(url, public_url=public_url, host_header=header(req, "Host"))
    return verify_twilio_signature(req, token, urls)


# --- Twilio signatures ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "host", "path", "query", "params", "signature"),
    [
        pytest.param(
            "12345",
            "mycompany.com",
            "/myapp.php",
            "foo=1&bar=2",
            TW_PARAMS,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
            id="T1",
        ),
        pytest.param(
            T3_TOKEN, "example.ngrok.io", "/twilio/voice/gather", "call=42", T3_PARAMS, T3_SIGNATURE, id="T3"
        ),
        pytest.param(
            "12345",
            "mycompany.com",
            "/myapp.php",
            "foo=1&bar=2",
            {"Digits": ["5678", "1234"], "Sid": "CA123", "SidAccount": "AC123"},
            "IK+Dwps556ElfBT0I3Rgjkr1wJU=",
            id="T4-repeated-key",
        ),
    ],
)
def test_twilio_vectors_are_accepted(token, host, path, query, params, signature):
    req = make_request(
        path=path, query=query, params=params, headers={"Host": host, "X-Twilio-Signature": signature}
    )
    check = verify(req, token)
    assert check.ok, check.reason
    assert check.reason == REASON_OK
    assert check.matched_url == f"https://{host}{path}?{query}"


def test_twilio_port_quirk_signature_with_443_is_accepted_for_portless_url():
    # T2: Twilio signed https://mycompany.com:443/..., we rebuild the URL without a port.
    req = make_request(params=TW_PARAMS, headers={"X-Twilio-Signature": T2_SIGNATURE})
    check = verify(req, "12345")
    assert check.ok
    assert check.matched_url == "https://mycompany.com/myapp.php?foo=1&bar=2"


def test_twilio_signature_over_host_header_port_is_accepted_via_port_variant():
    signed_url = "https://mycompany.com:8443/myapp.php?foo=1&bar=2"
    req = make_request(
        params=TW_PARAMS,
        headers={
            "Host": "mycompany.com:8443",
            "X-Twilio-Signature": twilio_sig("12345", signed_url, TW_PARAMS),
        },
    )
    check = verify(req, "12345")
    assert check.ok
    assert check.matched_url == signed_url


def test_twilio_signature_over_public_url_port_is_accepted():
    signed_url = "https://hooks.example.com:8443/myapp.php?foo=1&bar=2"
    req = make_request(
        params=TW_PARAMS, headers={"X-Twilio-Signature": twilio_sig("12345", signed_url, TW_PARAMS)}
    )
    check = verify(req, "12345", public_url="https://hooks.example.com:8443/voice/webhook")
    assert check.ok
    assert check.matched_url == signed_url


def test_twilio_json_body_variant_t5_is_accepted():
    req = make_request(
        query=f"foo=1&bar=2&bodySHA256={TW_JSON_HASH}",
        body=TW_JSON_BODY,
        headers={"Content-Type": "application/json", "X-Twilio-Signature": "a9nBmqA0ju/hNViExpshrM61xv4="},
    )
    assert verify(req, "12345").ok


def test_twilio_json_body_variant_rejects_altered_body():
    req = make_request(
        query=f"foo=1&bar=2&bodySHA256={TW_JSON_HASH}",
        body=b'{"property": "evil", "boolean": true}',
        headers={"Content-Type": "application/json", "X-Twilio-Signature": "a9nBmqA0ju/hNViExpshrM61xv4="},
    )
    check = verify(req, "12345")
    assert not check.ok
    assert check.reason == REASON_BODY_HASH


def test_twilio_hmac_sha256_signature_settings_header_is_honoured():
    # protocols.md §1 lists "Rmm4Vzj+..." for T1 with HMAC_SHA256, but neither twilio 9.13.0 nor a
    # plain HMAC-SHA256 over the T1 string-to-sign reproduces it; the stdlib value below does.
    signature = twilio_sig("12345", "https://mycompany.com/myapp.php?foo=1&bar=2", TW_PARAMS, hashlib.sha256)
    assert signature == "033hgUJA9M/hXIZsYjwkerEP/DBm35nEri5FhCYjA5s="
    headers = {
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "key=webhooks_sharedkey_1,algorithm=HMAC_SHA256",
    }
    assert verify(make_request(params=TW_PARAMS, headers=headers), "12345").ok
    # The same SHA-256 signature without the settings header is checked as SHA-1 and fails.
    del headers["X-Twilio-Webhooks-Signature-Settings"]
    assert not verify(make_request(params=TW_PARAMS, headers=headers), "12345").ok


def test_twilio_unsupported_algorithm_is_rejected():
    headers = {
        "X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8=",
        "X-Twilio-Webhooks-Signature-Settings": "key=k,algorithm=HMAC_MD5",
    }
    check = verify(make_request(params=TW_PARAMS, headers=headers), "12345")
    assert not check.ok
    assert "HMAC_MD5" in check.reason


def test_twilio_http_vector_with_default_port_is_accepted_when_proxy_says_http():
    # protocols.md §1: T1 over http://mycompany.com:80/... -> 0ZXoZLH/DfblKGATFgpif+LLRf4=
    req = make_request(
        params=TW_PARAMS,
        headers={"X-Forwarded-Proto": "http", "X-Twilio-Signature": "0ZXoZLH/DfblKGATFgpif+LLRf4="},
    )
    assert verify(req, "12345", ForwardingTrust(trust_forwarding_headers=True)).ok
    assert not verify(req, "12345").ok  # untrusted proto header: https is assumed


def test_twilio_wrong_token_is_rejected_and_reason_never_contains_token():
    secret = "super-secret-auth-token"
    req = make_request(
        query="foo=1&apiKey=leaky-value",
        params=TW_PARAMS,
        headers={"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="},
    )
    check = verify(req, secret)
    assert not check.ok
    assert check.matched_url is None
    assert secret not in check.reason
    assert "leaky-value" not in check.reason
    assert "apiKey=***" in check.reason


def test_twilio_tampered_param_is_rejected():
    params = TW_PARAMS | {"Digits": "9999"}
    req = make_request(params=params, headers={"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="})
    assert not verify(req, "12345").ok


def test_twilio_missing_signature_header_or_token_is_rejected():
    req = make_request(params=TW_PARAMS)
    assert verify(req, "12345").reason == REASON_MISSING_SIGNATURE
    signed = make_request(params=TW_PARAMS, headers={"X-Twilio-Signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="})
    assert verify(signed, "").reason == REASON_UNCONFIGURED


def test_headers_are_case_insensitive():
    req = make_request(params=TW_PARAMS, headers={"x-twilio-signature": "RSOYDt4T1cUTdK1PDd93/VVr8B8="})
    assert header(req, "X-Twilio-Signature") == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert verify(req, "12345").ok


# --- public URL reconstruction and trust (OC §4.2) -----------------------------------------------

ATTACKER = {"X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"}


def test_attacker_forwarded_host_is_ignored_without_allowed_hosts_or_trust():
    req = make_request(headers=ATTACKER)
    trust = ForwardingTrust()
    assert not forwarding_headers_trusted(req, trust)
    assert reconstruct_public_url(req, trust) == "https://mycompany.com/myapp.php?foo=1&bar=2"


def test_trust_forwarding_headers_uses_forwarded_host_and_proto():
    req = make_request(headers={"X-Forwarded-Host": "public.example:8443", "X-Forwarded-Proto": "http"})
    assert reconstruct_public_url(req, ForwardingTrust(trust_forwarding_headers=True)) == (
        "http://public.example/myapp.php?foo=1&bar=2"
    )


def test_allowed_host_is_used_and_implies_trust():
    req = make_request(headers={"X-Forwarded-Host": "Public.Example"})
    trust = ForwardingTrust(allowed_hosts=("public.example",))
    assert forwarding_headers_trusted(req, trust)
    assert reconstruct_public_url(req, trust) == "https://public.example/myapp.php?foo=1&bar=2"


def test_disallowed_forwarded_host_is_rejected_and_falls_back_to_host_header():
    req = make_request(headers=ATTACKER)
    trust = ForwardingTrust(allowed_hosts=("public.example",))
    assert reconstruct_public_url(req, trust) == "http://mycompany.com/myapp.php?foo=1&bar=2"


def test_later_forwarding_header_is_used_when_earlier_is_disallowed():
    req = make_request(headers={"X-Forwarded-Host": "evil.example", "Ngrok-Forwarded-Host": "public.example"})
    trust = ForwardingTrust(allowed_hosts=("public.example",))
    assert reconstruct_public_url(req, trust).startswith("https://public.example/")


def test_forwarding_headers_are_consulted_in_order_first_comma_value():
    req = make_request(
        headers={"X-Original-Host": "second.example", "X-Forwarded-Host": "first.example, proxy.internal"}
    )
    assert reconstruct_public_url(req, ForwardingTrust(trust_forwarding_headers=True)).startswith(
        "https://first.example/"
    )


@pytest.mark.parametrize("bad", ["good.example@evil.example", "-bad.example", "bad_host.example", "a..b", ""])
def test_invalid_forwarded_host_falls_back_to_host_header(bad):
    req = make_request(headers={"X-Forwarded-Host": bad})
    assert reconstruct_public_url(req, ForwardingTrust(trust_forwarding_headers=True)).startswith(
        "https://mycompany.com/"
    )


def test_unknown_forwarded_proto_is_ignored():
    req = make_request(headers={"X-Forwarded-Proto": "javascript"})
    assert reconstruct_public_url(req, ForwardingTrust(trust_forwarding_headers=True)).startswith("https://")


@pytest.mark.parametrize(
    ("remote", "trusted"),
    [
        ("10.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("[::ffff:10.0.0.1]", True),
        ("10.0.0.2", False),
        (None, False),
        ("", False),
    ],
)
def test_trusted_proxy_ips_restrict_forwarding_headers(remote, trusted):
    req = make_request(headers=ATTACKER | {"X-Forwarded-Host": "public.example"}, remote=remote)
    trust = ForwardingTrust(trust_forwarding_headers=True, trusted_proxy_ips=("10.0.0.1",))
    assert forwarding_headers_trusted(req, trust) is trusted
    expected = "http://public.example/" if trusted else "https://mycompany.com/"
    assert reconstruct_public_url(req, trust).startswith(expected)


def test_trusted_proxy_ipv6_forms_are_normalised():
    trust = ForwardingTrust(trust_forwarding_headers=True, trusted_proxy_ips=("[2001:db8::1]",))
    assert forwarding_headers_trusted(make_request(remote="2001:DB8:0::1"), trust)


def test_trusted_proxy_ips_without_trust_or_allowed_hosts_trust_nothing():
    trust = ForwardingTrust(trusted_proxy_ips=("10.0.0.1",))
    assert not forwarding_headers_trusted(make_request(remote="10.0.0.1"), trust)


@pytest.mark.parametrize("bad_host", ["bad host", "[::1", "a:b:c", "x.example:99999", "user@x.example", ""])
def test_malformed_host_header_falls_back_without_raising(bad_host):
    req = make_request(headers={"Host": bad_host}, host="local.example:8000")
    assert reconstruct_public_url(req, ForwardingTrust()) == "https://local.example/myapp.php?foo=1&bar=2"
    no_fallback = make_request(headers={"Host": bad_host})
    assert reconstruct_public_url(no_fallback, ForwardingTrust()) == "https:///myapp.php?foo=1&bar=2"


def test_ipv6_host_header_keeps_brackets_and_drops_port():
    req = make_request(headers={"Host": "[2001:db8::1]:8443"}, query="")
    assert reconstruct_public_url(req, ForwardingTrust()) == "https://[2001:db8::1]/myapp.php"


def test_verification_url_uses_public_url_origin_with_request_path_and_query():
    req = make_request(path="/voice/webhook", query="callId=abc&type=status", headers=ATTACKER)
    url = verification_url(req, ForwardingTrust(), "https://user:pw@hooks.example.com:8443/ignored/path?x=1")
    assert url == "https://hooks.example.com:8443/voice/webhook?callId=abc&type=status"


def test_verification_url_without_or_with_unusable_public_url_reconstructs():
    req = make_request()
    expected = "https://mycompany.com/myapp.php?foo=1&bar=2"
    assert verification_url(req, ForwardingTrust(), None) == expected
    assert verification_url(req, ForwardingTrust(), "not a url") == expected
    assert verification_url(req, ForwardingTrust(), "https://[broken/x") == expected


def test_url_port_variants_are_ordered_and_deduplicated():
    url = "https://hooks.example.com:8080/voice?x=1"
    assert url_port_variants(
        url, public_url="https://hooks.example.com:8443/voice", host_header="h:8080"
    ) == [
        url,
        "https://hooks.example.com/voice?x=1",
        "https://hooks.example.com:8443/voice?x=1",
    ]
    assert url_port_variants("https://a.example/p") == ["https://a.example/p"]
    assert url_port_variants("https://[::1]/p", host_header="[::1]:3334") == [
        "https://[::1]/p",
        "https://[::1]:3334/p",
    ]


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("example.com", True),
        ("a-b.example.com", True),
        ("localhost", True),
        ("1.2.3.4", True),
        ("[2001:db8::1]", True),
        ("x" * 63 + ".com", True),
        ("x" * 64 + ".com", False),
        (".".join(["a" * 63] * 4), False),  # 255 chars
        ("-a.com", False),
        ("a-.com", False),
        ("a..com", False),
        ("user@example.com", False),
        ("exa mple.com", False),
        ("example.com.", False),
        ("[not-ipv6]", False),
        ("[fe80::1%eth0]", False),
        ("\u212a.example", False),  # Kelvin sign must not pass as "k"
        ("", False),
    ],
)
def test_is_valid_hostname(host, valid):
    assert is_valid_hostname(host) is valid


# --- ngrok free-tier loopback bypass (OC §4.3) ---------------------------------------------------

NGROK_HEADERS = {
    "Host": "127.0.0.1:3334",
    "X-Forwarded-Host": "example.ngrok.io",
    "X-Forwarded-Proto": "https",
    "X-Twilio-Signature": T3_SIGNATURE,
}


def ngrok_request(remote: str = "127.0.0.1", signature: str = T3_SIGNATURE) -> WebhookRequest:
    return make_request(
        path="/twilio/voice/gather",
        query="call=42",
        params=T3_PARAMS,
        headers=NGROK_HEADERS | {"X-Twilio-Signature": signature},
        remote=remote,
    )


@pytest.mark.parametrize("remote", ["127.0.0.1", "127.0.0.7", "::1", "::ffff:127.0.0.1"])
def test_ngrok_bypass_accepts_valid_signature_over_loopback(remote):
    cfg = make_cfg(tunnel_provider="ngrok", ngrok_bypass=True)
    trust = ForwardingTrust.for_request(cfg, remote)
    assert trust.ngrok_loopback_bypass
    check = verify(ngrok_request(remote), T3_TOKEN, trust)
    assert check.ok
    assert check.matched_url == "https://example.ngrok.io/twilio/voice/gather?call=42"


def test_ngrok_bypass_still_rejects_invalid_signature():
    cfg = make_cfg(tunnel_provider="ngrok", ngrok_bypass=True)
    trust = ForwardingTrust.for_request(cfg, "127.0.0.1")
    assert not verify(ngrok_request(signature="AAAAAAAAAAAAAAAAAAAAAAAAAAA="), T3_TOKEN, trust).ok


@pytest.mark.parametrize(
    ("cfg", "remote"),
    [
        pytest.param(
            make_cfg(tunnel_provider="ngrok", ngrok_bypass=True), "203.0.113.9", id="remote-not-loopback"
        ),
        pytest.param(make_cfg(tunnel_provider="ngrok", ngrok_bypass=True), None, id="remote-missing"),
        pytest.param(make_cfg(tunnel_provider="none", ngrok_bypass=True), "127.0.0.1", id="tunnel-not-ngrok"),
        pytest.param(
            make_cfg(tunnel_provider="tailscale-funnel", ngrok_bypass=True),
            "127.0.0.1",
            id="tunnel-tailscale",
        ),
        pytest.param(
            make_cfg(tunnel_provider="ngrok", ngrok_bypass=True, bind=ALL_INTERFACES),
            "127.0.0.1",
            id="bind-public",
        ),
        pytest.param(make_cfg(tunnel_provider="ngrok", ngrok_bypass=False), "127.0.0.1", id="flag-off"),
    ],
)
def test_ngrok_bypass_is_ignored_unless_ngrok_loopback_bind_and_loopback_remote(cfg, remote):
    trust = ForwardingTrust.for_request(cfg, remote)
    assert not trust.ngrok_loopback_bypass
    check = verify(ngrok_request(remote or "127.0.0.1"), T3_TOKEN, trust)
    assert not check.ok  # URL rebuilt from Host 127.0.0.1, not the ngrok host Twilio signed


def test_ngrok_bypass_with_localhost_bind_and_ipv6_bind():
    for bind in ("localhost", "::1"):
        cfg = make_cfg(tunnel_provider="ngrok", ngrok_bypass=True, bind=bind)
        assert ForwardingTrust.for_request(cfg, "127.0.0.1").ngrok_loopback_bypass


def test_ngrok_bypass_overrides_trusted_proxy_restriction():
    cfg = make_cfg(tunnel_provider="ngrok", ngrok_bypass=True, trusted_proxy_ips=["10.9.9.9"])
    trust = ForwardingTrust.for_request(cfg, "127.0.0.1")
    assert forwarding_headers_trusted(ngrok_request(), trust)


def test_trust_settings_copy_webhook_security_config():
    cfg = make_cfg(
        allowed_hosts=[" Public.Example "], trust_forwarding_headers=True, trusted_proxy_ips=["10.0.0.1"]
    )
    assert ForwardingTrust.for_request(cfg, "10.0.0.1") == ForwardingTrust(
        allowed_hosts=("public.example",), trust_forwarding_headers=True, trusted_proxy_ips=("10.0.0.1",)
    )
