"""Plivo webhook signatures: V3 (preferred) and V2, their base strings and replay keys.

References: OpenClaw fact sheet §4.3 (algorithms), §4.4 (replay keys); protocols.md §6 (base string
construction from ``plivo/utils/signature_v3.py`` 4.63.0) and §9 (test vectors, which exercise these
pure functions; the SDK's own validator checks them in tests/test_plivo.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from urllib.parse import parse_qs, urlparse, urlsplit, urlunparse, urlunsplit

from providers.base import (
    VerifyResult,
)
from providers.security import (
    WebhookRequest,
    has_form_body,
    header,
    redact_url,
)

V3_SIGNATURE_HEADER = "X-Plivo-Signature-V3"
V3_NONCE_HEADER = "X-Plivo-Signature-V3-Nonce"
V2_SIGNATURE_HEADER = "X-Plivo-Signature-V2"
V2_NONCE_HEADER = "X-Plivo-Signature-V2-Nonce"
SIGNATURE_BYTES = 32  # HMAC-SHA256

REASON_MISSING = "missing Plivo signature headers"
REASON_METHOD = "Plivo signs only GET and POST requests"
REASON_V3_MISMATCH = "invalid X-Plivo-Signature-V3 for URL {url}"
REASON_V2_MISMATCH = "invalid X-Plivo-Signature-V2 for URL {url}"
REASON_V3_REQUIRED = (
    "X-Plivo-Signature-V3 required (a request signed only with V2 is accepted with plivo.allowV2Signatures)"
)


def _sorted_query(params: Mapping[str, Sequence[str]]) -> str:
    """``k=v&…`` over sorted keys, each key's values sorted (SDK ``get_sorted_query_string``)."""
    return "&".join("&".join(f"{key}={value}" for value in sorted(params[key])) for key in sorted(params))


def _sorted_params(params: Mapping[str, Sequence[str]]) -> str:
    """``kv…`` over sorted keys, each key's values sorted (SDK ``get_sorted_params_string``)."""
    return "".join("".join(f"{key}{value}" for value in sorted(params[key])) for key in sorted(params))


def v3_base_string(method: str, url: str, params: Mapping[str, Sequence[str]] | None = None) -> str:
    """The string a V3 signature covers, before ``"." + nonce`` (protocols §6, SDK 4.63.0
    ``construct_get_url``/``construct_post_url``).

    GET: URL query merged with ``params`` (query wins), ``?k=v&…`` sorted when non-empty. POST with
    params: ``?`` + sorted query + ``.`` (only when there is a query) + sorted ``kv`` params — note the
    bare ``?`` even without a query. POST without params: like GET with the query alone.
    """
    params = {k: [v] if isinstance(v, str) else list(v) for k, v in (params or {}).items()}
    parts = urlparse(url)
    base = urlunparse((parts.scheme, parts.netloc, parts.path, "", "", ""))
    query = parse_qs(parts.query, keep_blank_values=True)
    if method.upper() == "GET":
        merged = {**params, **query}
        sorted_query = _sorted_query(merged)
        return base + ("?" + sorted_query if sorted_query else "")
    sorted_query = _sorted_query(query)
    if not params:
        return base + ("?" + sorted_query if sorted_query else "")
    return base + "?" + (sorted_query + "." if sorted_query else "") + _sorted_params(params)


def _b64_hmac_sha256(token: str, message: str) -> str:
    digest = hmac.new(token.encode(), message.encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def v3_signature(auth_token: str, method: str, url: str, nonce: str,
                 params: Mapping[str, Sequence[str]] | None = None) -> str:
    """``X-Plivo-Signature-V3``: base64(HMAC-SHA256(token, base string + "." + nonce))."""
    return _b64_hmac_sha256(auth_token, f"{v3_base_string(method, url, params)}.{nonce}")


def v2_signature(auth_token: str, url: str, nonce: str) -> str:
    """``X-Plivo-Signature-V2``: base64(HMAC-SHA256(token, URL without query + nonce)); deprecated,
    it covers neither the query nor the body."""
    return _b64_hmac_sha256(auth_token, url_without_query(url) + nonce)


def url_without_query(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


def _canonical_signature(value: str) -> bytes | None:
    """Decode one offered signature (base64, whitespace-trimmed); None unless 32 bytes."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == SIGNATURE_BYTES else None


def _signature_matches(expected_b64: str, offered: Sequence[bytes]) -> bool:
    expected = base64.b64decode(expected_b64)
    matched = False
    for candidate in offered:  # constant time per candidate; no early exit on the first match
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def v3_replay_key(base_string: str, nonce: str) -> str:
    """Fact sheet §4.4: ``plivo:v3:`` + sha256(V3 base string \\n nonce)."""
    return "plivo:v3:" + hashlib.sha256(f"{base_string}\n{nonce}".encode()).hexdigest()


def v2_replay_key(url: str, nonce: str) -> str:
    """Fact sheet §4.4: ``plivo:v2:`` + sha256(URL without query \\n nonce)."""
    return "plivo:v2:" + hashlib.sha256(f"{url_without_query(url)}\n{nonce}".encode()).hexdigest()


def _form_params(request: WebhookRequest) -> dict[str, list[str]]:
    params: dict[str, list[str]] = {}
    for key, value in request.form_params:
        params.setdefault(key, []).append(value)
    return params


def verify_signature(
    request: WebhookRequest, auth_token: str, candidates: Sequence[str], *, allow_v2: bool = False
) -> VerifyResult:
    """V3 when its headers are present (fact sheet §4.3), against each candidate URL; V2 alone only
    with ``allow_v2`` (V2 covers neither the body nor the query, so a captured request's V2 headers
    would carry any forged body). The replay key is derived from the signed material only (§4.4); a
    V3-verified request that also carries valid V2 headers names its V2 key as equivalent, so a copy
    stripped to its V2 headers is still a replay."""
    method = request.method.upper()
    if method not in ("GET", "POST"):
        return VerifyResult(False, REASON_METHOD)
    v3, v3_nonce = header(request, V3_SIGNATURE_HEADER), header(request, V3_NONCE_HEADER)
    v2, v2_nonce = header(request, V2_SIGNATURE_HEADER), header(request, V2_NONCE_HEADER)
    if not ((v3 and v3_nonce) or (v2 and v2_nonce)):
        return VerifyResult(False, REASON_MISSING)
    if v3 and v3_nonce:
        offered = [sig for sig in (_canonical_signature(s) for s in v3.split(",")) if sig is not None]
        params = _form_params(request) if method == "POST" and has_form_body(request) else {}
        for url in candidates:
            base = v3_base_string(method, url, params)
            expected = _b64_hmac_sha256(auth_token, f"{base}.{v3_nonce}")
            if _signature_matches(expected, offered):
                v2_key = _v2_key(auth_token, candidates, v2, v2_nonce) if v2 and v2_nonce else None
                return VerifyResult(True, "ok", v3_replay_key(base, v3_nonce), (v2_key,) if v2_key else ())
        return VerifyResult(False, REASON_V3_MISMATCH.format(url=redact_url(candidates[0])))
    if not allow_v2:
        return VerifyResult(False, REASON_V3_REQUIRED)
    assert v2 is not None and v2_nonce is not None
    key = _v2_key(auth_token, candidates, v2, v2_nonce)
    if key is None:
        return VerifyResult(False, REASON_V2_MISMATCH.format(url=redact_url(candidates[0])))
    return VerifyResult(True, "ok", key)


def _v2_key(auth_token: str, candidates: Sequence[str], v2: str, v2_nonce: str) -> str | None:
    """The V2 replay key when the V2 signature is valid for one of the URLs, else None."""
    offered = [sig for sig in (_canonical_signature(s) for s in v2.split(",")) if sig is not None]
    for url in candidates:
        if _signature_matches(v2_signature(auth_token, url, v2_nonce), offered):
            return v2_replay_key(url, v2_nonce)
    return None
