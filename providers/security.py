"""Carrier-independent webhook security: which URL a carrier signed, whether to believe it, replays.

Pure functions over a small `WebhookRequest` snapshot (no ORM, no settings, no network), used by the
webhook view, the media-stream consumer and the carrier modules in `providers/`. The rules come from
the OpenClaw voice-call fact sheet (`reference/openclaw-voice-call.md`, cited as "OC §x") and the
carrier protocol notes (`reference/protocols.md`, cited as "protocols §x").

Reading order:
1. `WebhookRequest` / `header` — what the local server saw.
2. `ForwardingTrust` / `forwarding_headers_trusted` — may we believe X-Forwarded-* (OC §4.2, §4.3)?
3. `reconstruct_public_url` / `verification_url` / `url_port_variants` — the URL the carrier signed.
4. `verify_twilio_signature` — X-Twilio-Signature via the official SDK (protocols §1).
5. Replay keys, URL redaction, local/private host checks, media-stream client IP.

Decisions worth knowing:
* Forwarding headers are never trusted by default; a bad or disallowed forwarded host silently falls
  back to `Host`, so an attacker's header can at worst make a valid signature fail, never pass.
* The ngrok free-tier bypass only widens *URL reconstruction* trust; it never skips the signature.
* Hostnames with a trailing dot are rejected (they could never match `allowed_hosts` entries anyway).
* `trusted_proxy_ips` are exact addresses (no CIDR), compared after normalising `[brackets]` and
  IPv4-mapped IPv6 (`::ffff:10.0.0.1` == `10.0.0.1`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from urllib.parse import parse_qs, parse_qsl, urlencode, urlsplit, urlunsplit

from twilio.request_validator import (
    HMAC_SHA1,
    HMAC_SHA256,
    SIGNATURE_HEADER,
    SIGNATURE_SETTINGS_HEADER,
    RequestValidator,
    get_signature_algorithm,
)

from providers.settings import WebhookTrustSettings

# Forwarded-host headers in the order they are consulted (OC §4.2).
FORWARDED_HOST_HEADERS = ("X-Forwarded-Host", "X-Original-Host", "Ngrok-Forwarded-Host")
LOOPBACK_NAMES = frozenset({"localhost"})
UNKNOWN_CLIENT = "unknown"  # shared bucket / client id when the socket address is missing
REDACTED = "***"
UNPARSEABLE_URL = "<unparseable URL>"

# Local or private webhook hosts that a carrier can never reach (OC §4.6).
PRIVATE_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "0.0.0.0/32",
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::/128",
        "::1/128",
        "fc00::/7",  # fc* and fd* unique-local addresses
    )
)

REASON_OK = "ok"
REASON_UNCONFIGURED = "no Twilio auth token configured"
REASON_MISSING_SIGNATURE = f"missing {SIGNATURE_HEADER} header"
REASON_NO_URL = "no verification URL"
REASON_UNSUPPORTED_ALGORITHM = "unsupported Twilio signature algorithm {algorithm!r}"
REASON_BODY_HASH = "bodySHA256 does not match the request body"
REASON_MISMATCH = "invalid signature for URL {url}"

_HOSTNAME_RE = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    re.IGNORECASE | re.ASCII,
)
_PORT_RE = re.compile(r"[0-9]{1,5}")
# Numeric IPv4 spellings that resolvers accept but `ipaddress` does not: 2130706433, 0x7f.1, 10.1 ...
_LEGACY_IPV4_RE = re.compile(r"(?:0x[0-9a-f]+|[0-9]+)(?:\.(?:0x[0-9a-f]+|[0-9]+)){0,3}", re.IGNORECASE)


# --- the request ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookRequest:
    """What the local server saw; built by the interface (Django view, Channels consumer, test).

    `path` should be the path as sent on the wire (percent-encoded), `query_string` the raw query
    without `?`. `scheme`/`host` describe the local hop and are only a last-resort host fallback:
    the public scheme is `https` unless a trusted proxy says otherwise (OC §4.2).
    """

    method: str
    path: str
    query_string: str
    headers: Mapping[str, str]
    body: bytes
    remote_addr: str | None
    scheme: str = "http"
    host: str | None = None

    @cached_property
    def query_params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.query_string, keep_blank_values=True)

    @cached_property
    def form_params(self) -> list[tuple[str, str]]:
        return parse_qsl(self.body.decode("utf-8", errors="replace"), keep_blank_values=True)


def header(source: WebhookRequest | Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup on a request or a plain header mapping."""
    headers = source.headers if isinstance(source, WebhookRequest) else source
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


# --- trust in forwarding headers -----------------------------------------------------------------


@dataclass(frozen=True)
class ForwardingTrust:
    """The webhook-security config that matters for one request (OC §1.1 `webhookSecurity`)."""

    allowed_hosts: tuple[str, ...] = ()
    trust_forwarding_headers: bool = False
    trusted_proxy_ips: tuple[str, ...] = ()
    ngrok_loopback_bypass: bool = False  # already resolved for this request, see `for_request`

    @classmethod
    def for_request(cls, trust: WebhookTrustSettings, remote_addr: str | None) -> ForwardingTrust:
        """The deployment's trust settings, resolved for a request from `remote_addr`.

        OC §4.3 "ngrok free-tier mode": the loopback bypass is effective only when it is configured
        (tunnel ngrok, bypass allowed, server bound to loopback: `trust.ngrok_loopback_bypass`) and
        the request came over loopback (i.e. from the local ngrok agent).
        """
        return cls(
            allowed_hosts=trust.allowed_hosts,
            trust_forwarding_headers=trust.trust_forwarding_headers,
            trusted_proxy_ips=trust.trusted_proxy_ips,
            ngrok_loopback_bypass=trust.ngrok_loopback_bypass and is_loopback_address(remote_addr),
        )


def _normalize_ip(addr: str) -> str:
    """`[::1]` -> `::1`, `::ffff:1.2.3.4` -> `1.2.3.4`, canonical IPv6 spelling; other text as-is."""
    addr = addr.strip()
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return addr.lower()
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _is_trusted_proxy(addr: str | None, trust: ForwardingTrust) -> bool:
    if not addr:
        return False
    return _normalize_ip(addr) in {_normalize_ip(p) for p in trust.trusted_proxy_ips}


def forwarding_headers_trusted(req: WebhookRequest, trust: ForwardingTrust) -> bool:
    """OC §4.2: (allowedHosts set OR trustForwardingHeaders) AND (no trustedProxyIPs OR the socket
    address is one of them; a missing address is never trusted). The effective ngrok loopback
    bypass (OC §4.3) trusts them outright."""
    if trust.ngrok_loopback_bypass:
        return True
    if not (trust.allowed_hosts or trust.trust_forwarding_headers):
        return False
    return not trust.trusted_proxy_ips or _is_trusted_proxy(req.remote_addr, trust)


# --- the public URL the carrier signed -----------------------------------------------------------


def is_valid_hostname(host: str) -> bool:
    """RFC 1123 hostname (≤253 chars, labels ≤63, alnum/hyphen, no edge hyphens) or `[ipv6]`;
    anything with `@` is rejected so userinfo can't be smuggled into a URL (OC §4.2)."""
    if not host or len(host) > 253 or "@" in host:
        return False
    if host.startswith("[") and host.endswith("]"):
        inner = host[1:-1]
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            return False
        return "%" not in inner  # no zone ids in a public URL
    return _HOSTNAME_RE.fullmatch(host) is not None


def _split_host_port(value: str) -> tuple[str, int | None] | None:
    """`host`, `host:port`, `[v6]`, `[v6]:port` -> (host, port); None when malformed."""
    value = value.strip()
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            return None
        host, rest = value[: end + 1], value[end + 1 :]
    else:
        host, colon, port = value.partition(":")
        rest = colon + port
    if not rest:
        return host, None
    if rest[0] != ":" or not _PORT_RE.fullmatch(rest[1:]) or int(rest[1:]) > 65535:
        return None
    return host, int(rest[1:])


def _host_from_header(value: str | None) -> str | None:
    """First comma-separated value, port stripped, lower-cased; None unless a valid hostname."""
    if not value:
        return None
    split = _split_host_port(value.split(",", 1)[0])
    if split is None or not is_valid_hostname(split[0]):
        return None
    return split[0].lower()


def _path_and_query(req: WebhookRequest) -> str:
    path = req.path if req.path.startswith("/") else "/" + req.path
    return path + ("?" + req.query_string if req.query_string else "")


def reconstruct_public_url(req: WebhookRequest, trust: ForwardingTrust) -> str:
    """The URL the carrier most likely requested (OC §4.2 `reconstructWebhookUrl`).

    Scheme `https` unless a trusted `X-Forwarded-Proto` says `http`. Host: the first valid (and, when
    `allowed_hosts` is set, allowed) forwarded host from a trusted proxy, else the `Host` header, else
    `req.host`; ports are always stripped (see `url_port_variants`). Never raises: with no usable
    host the URL has an empty host and simply fails verification.
    """
    scheme, host = "https", None
    allowed = {h.lower() for h in trust.allowed_hosts}
    if forwarding_headers_trusted(req, trust):
        proto = (header(req, "X-Forwarded-Proto") or "").split(",", 1)[0].strip().lower()
        if proto in ("http", "https"):
            scheme = proto
        for name in FORWARDED_HOST_HEADERS:
            candidate = _host_from_header(header(req, name))
            if candidate and (not allowed or candidate in allowed):
                host = candidate
                break
    host = host or _host_from_header(header(req, "Host")) or _host_from_header(req.host) or ""
    return f"{scheme}://{host}{_path_and_query(req)}"


def verification_url(req: WebhookRequest, trust: ForwardingTrust, public_url: str | None) -> str:
    """OC §4.2 (Baseline B): with a known public URL, its scheme+host(+port) and the request's path
    and query; otherwise the reconstructed URL. An unparseable `public_url` falls back too."""
    if public_url:
        try:
            parts = urlsplit(public_url)
            split = _split_host_port(parts.netloc.rpartition("@")[2])
        except ValueError:
            split = None
        if split is not None and parts.scheme in ("http", "https") and is_valid_hostname(split[0]):
            netloc = split[0] + (f":{split[1]}" if split[1] is not None else "")
            return f"{parts.scheme}://{netloc}{_path_and_query(req)}"
    return reconstruct_public_url(req, trust)


def _with_port(url: str, port: int | None) -> str | None:
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    userinfo, at, hostport = parts.netloc.rpartition("@")
    split = _split_host_port(hostport)
    if split is None:
        return None
    netloc = userinfo + at + split[0] + (f":{port}" if port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _port_of(value: str | None, *, is_url: bool) -> int | None:
    if not value:
        return None
    try:
        netloc = urlsplit(value).netloc if is_url else value
    except ValueError:
        return None
    split = _split_host_port(netloc.rpartition("@")[2])
    return split[1] if split else None


def url_port_variants(
    url: str, *, public_url: str | None = None, host_header: str | None = None
) -> list[str]:
    """OC §4.3 (issue #6334, Twilio signs without the port): `url`, then `url` without a port, with
    the `public_url` port, with the `Host`-header port; deduplicated, order kept. The SDK itself
    also tries the default port (protocols §1 "Port quirk")."""
    candidates = [url, _with_port(url, None)]
    for port in (_port_of(public_url, is_url=True), _port_of(host_header, is_url=False)):
        if port is not None:
            candidates.append(_with_port(url, port))
    return list(dict.fromkeys(c for c in candidates if c))


# --- Twilio signatures ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    ok: bool
    reason: str  # safe to log: never the token, URLs redacted
    matched_url: str | None = None


class _MultiParams:
    """Form params with `getlist`, so the SDK signs every value of a repeated key (protocols §1)."""

    def __init__(self, pairs: Iterable[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for key, value in pairs:
            self._values.setdefault(key, []).append(value)

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def getlist(self, key: str) -> list[str]:
        return self._values[key]


FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"


def has_form_body(req: WebhookRequest) -> bool:
    """The body is form-encoded: that content type, or none (carriers' default for callbacks)."""
    content_type = (header(req, "Content-Type") or "").split(";", 1)[0].strip().lower()
    return content_type in ("", FORM_CONTENT_TYPE)


def _body_sha256(url: str) -> str | None:
    try:
        values = parse_qs(urlsplit(url).query).get("bodySHA256")
    except ValueError:
        return None
    return values[0] if values else None


def verify_twilio_signature(req: WebhookRequest, auth_token: str, urls: Sequence[str]) -> SignatureCheck:
    """Check `X-Twilio-Signature` against each candidate URL in turn (protocols §1, OC §4.3).

    Form posts are signed as URL + sorted key/value pairs (repeated keys included); JSON posts whose
    URL carries `bodySHA256` are signed over the URL alone and the body must hash to that value.
    `X-Twilio-Webhooks-Signature-Settings` selects HMAC-SHA256 (then `auth_token` must be the
    SharedKey secret; the caller picks). The SDK's `validate` also accepts the URL with/without the
    default port and compares in constant time (signatures of one algorithm have a fixed length).
    """
    if not auth_token:
        return SignatureCheck(False, REASON_UNCONFIGURED)
    signature = header(req, SIGNATURE_HEADER)
    if not signature:
        return SignatureCheck(False, REASON_MISSING_SIGNATURE)
    algorithm = get_signature_algorithm(header(req, SIGNATURE_SETTINGS_HEADER))
    if algorithm.upper() not in (HMAC_SHA1, HMAC_SHA256):
        return SignatureCheck(False, REASON_UNSUPPORTED_ALGORITHM.format(algorithm=algorithm[:40]))
    candidates = list(dict.fromkeys(urls))
    if not candidates:
        return SignatureCheck(False, REASON_NO_URL)

    validator = RequestValidator(auth_token)
    form = _MultiParams(req.form_params if req.method.upper() != "GET" and has_form_body(req) else ())
    raw_body = req.body.decode("utf-8", errors="replace")
    for url in candidates:
        params: str | _MultiParams = raw_body if _body_sha256(url) is not None else form
        try:
            if validator.validate(url, params, signature, algorithm):
                return SignatureCheck(True, REASON_OK, url)
        except ValueError:  # e.g. a non-numeric port in a configured public URL
            continue
    expected_hash = _body_sha256(candidates[0])
    if expected_hash is not None and validator.compute_hash(raw_body) != expected_hash:
        return SignatureCheck(False, REASON_BODY_HASH)
    return SignatureCheck(False, REASON_MISMATCH.format(url=redact_url(candidates[0])))


# --- replay keys ---------------------------------------------------------------------------------


def twilio_replay_key(matched_url: str, form_params: Iterable[tuple[str, str]], signature: str) -> str:
    """OC §4.4: `twilio:req:` + sha256(url \\n sorted "k=v&…" \\n signature). Only signed material
    goes in, so a re-sent request with a new (unsigned) `I-Twilio-Idempotency-Token` is a replay."""
    canonical = urlencode(sorted(form_params))
    material = f"{matched_url}\n{canonical}\n{signature}".encode()
    return "twilio:req:" + hashlib.sha256(material).hexdigest()


def skip_mode_replay_key(provider: str, method: str, url: str, body: bytes) -> str:
    """OC §4.3 `skipSignatureVerification`: `<provider>:skip:` + sha256(method \\n url \\n body), so
    replays are still caught in development mode."""
    material = f"{method}\n{url}\n".encode() + body
    return f"{provider}:skip:" + hashlib.sha256(material).hexdigest()


def redact_url(url: str) -> str:
    """URL for logs (OC §4.3, PR #102089): userinfo dropped, every query value (and any bare query
    segment) replaced by `***`, fragment dropped. Never raises."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return UNPARSEABLE_URL
    netloc = parts.netloc.rpartition("@")[2]
    segments = []
    for segment in parts.query.split("&") if parts.query else ():
        key, eq, _ = segment.partition("=")
        segments.append(f"{key}={REDACTED}" if eq else REDACTED)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(segments), ""))


# --- local / private addresses -------------------------------------------------------------------


def _strip_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.split("%", 1)[0]  # IPv6 zone id


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _LEGACY_IPV4_RE.fullmatch(host):
            return None
        try:  # resolvers read 2130706433 / 0x7f.1 / 127.1 as IPv4; so must we
            ip = ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def is_loopback_address(addr: str | None) -> bool:
    """127.*, ::1, ::ffff:127.*, `[::1]` and the name `localhost` (OC §4.3 ngrok rule)."""
    if not addr:
        return False
    host = _strip_host(addr)
    if host in LOOPBACK_NAMES:
        return True
    ip = _ip_literal(host)
    return ip is not None and ip.is_loopback


def is_local_or_private_host(host: str) -> bool:
    """OC §4.6: a webhook host a carrier cannot reach (localhost, *.localhost, 0.0.0.0, ::, ::1,
    127.*, 10.*, 172.16-31.*, 192.168.*, 169.254.*, fc*/fd*). Other hostnames count as public."""
    name = _strip_host(host)
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    ip = _ip_literal(name)
    return ip is not None and any(ip in net for net in PRIVATE_NETWORKS if net.version == ip.version)


# --- media-stream client IP ----------------------------------------------------------------------


def stream_client_ip(remote_addr: str | None, headers: Mapping[str, str], trust: ForwardingTrust) -> str:
    """OC §5.2: the socket address, unless `trust_forwarding_headers` is on and the socket address is a
    trusted proxy; then the right-most `X-Forwarded-For` hop that is not a trusted proxy (the first
    hop when all are), else `X-Real-IP`. `UNKNOWN_CLIENT` when there is no address at all."""
    socket_ip = _normalize_ip(remote_addr) if remote_addr else UNKNOWN_CLIENT
    if not (trust.trust_forwarding_headers and _is_trusted_proxy(remote_addr, trust)):
        return socket_ip
    hops = [h.strip() for h in (header(headers, "X-Forwarded-For") or "").split(",") if h.strip()]
    if hops:
        untrusted = [h for h in reversed(hops) if not _is_trusted_proxy(h, trust)]
        return _normalize_ip(untrusted[0] if untrusted else hops[0])
    real_ip = (header(headers, "X-Real-IP") or "").strip()
    return _normalize_ip(real_ip) if real_ip else socket_ip
