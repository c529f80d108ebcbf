"""Telnyx webhook signatures: Ed25519 over ``"{timestamp}|{raw body}"`` with a ±300 s window, the
public-key formats Telnyx hands out, and the replay key (OpenClaw fact sheet §4.3, §4.4; protocols.md §5)."""


import base64
import binascii
import hashlib
import re
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from providers.base import (
    VerifyResult,
)
from providers.security import header

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
PUBLIC_KEY_ENV = "TELNYX_PUBLIC_KEY"
# The official SDK rejects |now - timestamp| > 300 s; exactly 300 s passes (protocols §5).
TIMESTAMP_TOLERANCE_SECONDS = 300
ED25519_KEY_BYTES = 32
ED25519_SIGNATURE_BYTES = 64

# Verification failure reasons (logged by the webhook view; never contain key material).
REASON_NO_PUBLIC_KEY = (
    "Missing telnyx.publicKey: set telnyx.publicKey (or TELNYX_PUBLIC_KEY) to the public key from "
    "Telnyx Mission Control (Keys & Credentials > Public Key), or skipSignatureVerification for local development"
)
REASON_BAD_PUBLIC_KEY = (
    "telnyx.publicKey is not an Ed25519 public key (expected base64 of the raw 32-byte key, base64 DER "
    "SPKI, base64url or PEM)"
)
REASON_MISSING_HEADERS = f"missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header"
REASON_BAD_TIMESTAMP = f"{TIMESTAMP_HEADER} is not an integer number of seconds"
REASON_BAD_SIGNATURE_ENCODING = f"{SIGNATURE_HEADER} is not a base64 Ed25519 signature"
REASON_SIGNATURE_MISMATCH = "signature does not match"
REASON_TIMESTAMP_TOO_OLD = "Timestamp too old"
REASON_TIMESTAMP_IN_FUTURE = "Timestamp too far in the future"

_TIMESTAMP_RE = re.compile(r"^[0-9]{1,12}$")
_BASE64_CHARS_RE = re.compile(r"^[A-Za-z0-9+/_-]+={0,2}$")




# --- key and signature decoding ------------------------------------------------------------------


def _b64decode_any(text: str) -> bytes | None:
    """Decode standard base64 or base64url, padding optional; None when it is neither."""
    compact = "".join(text.split())
    if not compact or not _BASE64_CHARS_RE.match(compact):
        return None
    if any(c in compact for c in "+/") and any(c in compact for c in "-_"):
        return None  # one alphabet or the other, never a mix
    unpadded = compact.rstrip("=")
    padded = unpadded + "=" * (-len(unpadded) % 4)
    try:
        if "-" in padded or "_" in padded:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def _raw_key_from_spki(der_or_pem: bytes, *, pem: bool) -> bytes | None:
    try:
        key = (
            serialization.load_pem_public_key(der_or_pem)
            if pem
            else serialization.load_der_public_key(der_or_pem)
        )
    except (ValueError, TypeError):
        return None
    if not isinstance(key, Ed25519PublicKey):
        return None
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def load_public_key(text: str) -> VerifyKey:
    """An Ed25519 verify key from any spelling of reference §4.3: base64 of the raw 32-byte key,
    base64 of a DER SubjectPublicKeyInfo, either in base64url, or a PEM block. Raises ValueError."""
    text = (text or "").strip()
    if not text:
        raise ValueError(REASON_NO_PUBLIC_KEY)
    if "-----BEGIN" in text:
        raw = _raw_key_from_spki(text.encode(), pem=True)
    else:
        decoded = _b64decode_any(text)
        if decoded is None:
            raw = None
        elif len(decoded) == ED25519_KEY_BYTES:
            raw = decoded
        else:
            raw = _raw_key_from_spki(decoded, pem=False)
    if raw is None or len(raw) != ED25519_KEY_BYTES:
        raise ValueError(REASON_BAD_PUBLIC_KEY)
    return VerifyKey(raw)


def decode_signature(value: str) -> bytes | None:
    """The 64 signature bytes of a base64 or base64url header value; None when malformed."""
    decoded = _b64decode_any(value or "")
    if decoded is None or len(decoded) != ED25519_SIGNATURE_BYTES:
        return None
    return decoded


def replay_key(timestamp: str, signature: bytes, body: bytes) -> str:
    """OC §4.4: ``telnyx:`` + sha256(timestamp \\n canonical base64 signature \\n raw body). The
    signature is re-encoded as standard base64 so its base64url spelling is the same replay."""
    canonical = base64.b64encode(signature).decode()
    material = f"{timestamp}\n{canonical}\n".encode() + body
    return "telnyx:" + hashlib.sha256(material).hexdigest()


def verify_signature(verify_key: VerifyKey | None, key_problem: str | None, request: Any, now: float) -> VerifyResult:
    """Order as upstream (fact sheet §4.3): key configured, headers present, timestamp an integer,
    signature valid, then freshness. Fails closed when the public key is missing or unusable."""
    if verify_key is None:
        return VerifyResult(ok=False, reason=key_problem or REASON_NO_PUBLIC_KEY)
    signature_text = header(request, SIGNATURE_HEADER)
    timestamp = (header(request, TIMESTAMP_HEADER) or "").strip()
    if not signature_text or not timestamp:
        return VerifyResult(ok=False, reason=REASON_MISSING_HEADERS)
    if not _TIMESTAMP_RE.match(timestamp):
        return VerifyResult(ok=False, reason=REASON_BAD_TIMESTAMP)
    signature = decode_signature(signature_text)
    if signature is None:
        return VerifyResult(ok=False, reason=REASON_BAD_SIGNATURE_ENCODING)
    try:
        verify_key.verify(timestamp.encode() + b"|" + request.body, signature)
    except BadSignatureError:
        return VerifyResult(ok=False, reason=REASON_SIGNATURE_MISMATCH)
    skew = now - int(timestamp)
    if skew > TIMESTAMP_TOLERANCE_SECONDS:
        return VerifyResult(ok=False, reason=REASON_TIMESTAMP_TOO_OLD)
    if skew < -TIMESTAMP_TOLERANCE_SECONDS:
        return VerifyResult(ok=False, reason=REASON_TIMESTAMP_IN_FUTURE)
    return VerifyResult(ok=True, request_key=replay_key(timestamp, signature, request.body))
