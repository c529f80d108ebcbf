"""Telephony TTS: text in, 160-byte G.711 mu-law frames out, streamed as the vendor sends audio.

Used by the Twilio media-stream consumer (``calls.media.consumer``) to speak over a live stream; the
configuration is ``cfg.effective_tts()`` -- core ``messages.tts`` deep-merged with the plugin ``tts``
(OpenClaw fact sheet §6.2-§6.3). Vendor requests (reference/protocols.md §8):

* OpenAI -- ``POST {baseUrl}/audio/speech`` (base includes ``/v1``; default
  ``https://api.openai.com/v1``), ``Authorization: Bearer``, JSON ``model``/``input``/``voice``/
  ``response_format: "pcm"``; the body is raw 24 kHz s16le mono PCM, chunked. ``instructions`` is
  sent only for ``gpt-4o-mini-tts`` (the tts-1 models reject it); ``speed`` is sent whenever set,
  including 0 (the vendor then answers the error, we do not second-guess it).
* ElevenLabs -- ``POST {baseUrl}/v1/text-to-speech/{voiceId}/stream?output_format=…`` (default base
  ``https://api.elevenlabs.io``), header ``xi-api-key``, JSON ``text``/``model_id``
  [/``voice_settings``]. ``ulaw_8000`` (the default here) is already telephony audio and is only
  re-framed; ``pcm_<rate>`` is resampled like OpenAI's PCM.
* Microsoft/Edge TTS has no telephony PCM output and is refused for calls with a clear message.

Config keys per vendor live under ``tts.providers.<name>`` (``tts.<name>`` is read too, the older
shape); API keys fall back to ``OPENAI_API_KEY`` / ``ELEVENLABS_API_KEY``. ``tts.timeoutMs``
(default 8000) bounds the wait for the first audio bytes and for each later read. Keys never appear
in errors or logs.

Audio is streamed: ``TelephonySynthesizer.frames()`` yields frames as soon as the first HTTP chunk
is converted, so playback starts before synthesis ends. HTTP runs on one shared ``aiohttp`` session
per event loop (the daphne loop), never blocking it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiohttp

from providers.audio import MulawFramer, PcmToMulawFrames

if TYPE_CHECKING:
    from providers.settings import ProviderSettings

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_MS = 8000
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
OPENAI_DEFAULT_MODEL = "gpt-4o-mini-tts"
OPENAI_DEFAULT_VOICE = "alloy"
OPENAI_PCM_RATE = 24000  # response_format "pcm": raw 24 kHz s16le mono, no header
OPENAI_INSTRUCTIONS_MODELS = frozenset({"gpt-4o-mini-tts"})
ELEVENLABS_DEFAULT_BASE_URL = "https://api.elevenlabs.io"
ELEVENLABS_DEFAULT_MODEL = "eleven_flash_v2_5"
ELEVENLABS_DEFAULT_FORMAT = "ulaw_8000"
#: ElevenLabs output formats we can put on a phone line: mu-law as is, PCM resampled.
ELEVENLABS_PCM_RATES = {
    "pcm_8000": 8000,
    "pcm_16000": 16000,
    "pcm_22050": 22050,
    "pcm_24000": 24000,
    "pcm_32000": 32000,
    "pcm_44100": 44100,
    "pcm_48000": 48000,
}
API_KEY_ENV = {"openai": "OPENAI_API_KEY", "elevenlabs": "ELEVENLABS_API_KEY"}
#: Vendors that cannot produce telephony audio (fact sheet §6.2: skipped for calls).
NO_TELEPHONY_OUTPUT = frozenset({"edge", "microsoft"})
SUPPORTED_PROVIDERS = ("openai", "elevenlabs")
READ_CHUNK_BYTES = 4096

EDGE_REFUSED = (
    "Microsoft/Edge TTS cannot produce telephony audio; set tts.provider to openai or elevenlabs "
    "for calls"
)
UNSUPPORTED_PROVIDER = "tts.provider {name} is not supported for calls (use openai or elevenlabs)"
MISSING_KEY = "tts.providers.{name}.apiKey is not set (or set {env})"
MISSING_VOICE = "tts.providers.elevenlabs.voiceId is not set"
UNSUPPORTED_FORMAT = "tts.providers.elevenlabs.outputFormat must be ulaw_8000 or pcm_<rate>"
NO_AUDIO = "Telephony TTS produced no audio"


class TtsUnavailable(Exception):
    """The configured TTS cannot speak on a call (config problem); the message says what to fix."""


class TtsError(Exception):
    """A synthesis request failed (vendor error, timeout, no audio)."""


@dataclass(frozen=True)
class TtsSettings:
    provider: str
    base_url: str
    api_key: str = field(repr=False)
    model: str
    voice: str
    timeout_s: float
    output_format: str = "pcm"
    speed: float | None = None
    instructions: str | None = None
    voice_settings: dict[str, Any] | None = None


def _vendor_section(tts: Mapping[str, Any], name: str) -> dict[str, Any]:
    """``tts.providers.<name>`` merged over the older ``tts.<name>`` shape."""
    merged: dict[str, Any] = {}
    legacy = tts.get(name)
    if isinstance(legacy, dict):
        merged.update(legacy)
    providers = tts.get("providers")
    if isinstance(providers, dict) and isinstance(providers.get(name), dict):
        merged.update(providers[name])
    return merged


def telephony_tts_settings(settings: ProviderSettings, env: Mapping[str, str] | None = None) -> TtsSettings:
    """The vendor settings for call audio, or ``TtsUnavailable`` saying why there are none."""
    env = os.environ if env is None else env
    tts = settings.effective_tts() or {}
    name = str(tts.get("provider") or "openai").strip().lower()
    if name in NO_TELEPHONY_OUTPUT:
        raise TtsUnavailable(EDGE_REFUSED)
    if name not in SUPPORTED_PROVIDERS:
        raise TtsUnavailable(UNSUPPORTED_PROVIDER.format(name=name))
    section = _vendor_section(tts, name)
    api_key = section.get("apiKey") or (env.get(API_KEY_ENV[name]) or "").strip()
    if not isinstance(api_key, str) or not api_key:
        raise TtsUnavailable(MISSING_KEY.format(name=name, env=API_KEY_ENV[name]))
    timeout_ms = tts.get("timeoutMs") or section.get("timeoutMs") or DEFAULT_TIMEOUT_MS
    timeout_s = max(0.1, float(timeout_ms) / 1000)
    speed = section.get("speed")
    speed = float(speed) if isinstance(speed, int | float) and not isinstance(speed, bool) else None
    if name == "openai":
        model = str(section.get("model") or OPENAI_DEFAULT_MODEL)
        return TtsSettings(
            provider=name,
            base_url=str(section.get("baseUrl") or OPENAI_DEFAULT_BASE_URL).rstrip("/"),
            api_key=api_key,
            model=model,
            voice=str(section.get("voice") or OPENAI_DEFAULT_VOICE),
            timeout_s=timeout_s,
            output_format="pcm",
            speed=speed,
            instructions=section.get("instructions") if model in OPENAI_INSTRUCTIONS_MODELS else None,
        )
    voice = section.get("voiceId") or section.get("voice")
    if not voice:
        raise TtsUnavailable(MISSING_VOICE)
    output_format = str(section.get("outputFormat") or ELEVENLABS_DEFAULT_FORMAT)
    if output_format != "ulaw_8000" and output_format not in ELEVENLABS_PCM_RATES:
        raise TtsUnavailable(UNSUPPORTED_FORMAT)
    voice_settings = section.get("voiceSettings")
    return TtsSettings(
        provider=name,
        base_url=str(section.get("baseUrl") or ELEVENLABS_DEFAULT_BASE_URL).rstrip("/"),
        api_key=api_key,
        model=str(section.get("modelId") or section.get("model") or ELEVENLABS_DEFAULT_MODEL),
        voice=str(voice),
        timeout_s=timeout_s,
        output_format=output_format,
        voice_settings=voice_settings if isinstance(voice_settings, dict) else None,
    )


def telephony_tts_problem(settings: ProviderSettings) -> str | None:
    """Why call audio cannot be synthesized with this config, or None when it can."""
    try:
        telephony_tts_settings(settings)
    except TtsUnavailable as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------------------------------
# HTTP session (one per event loop)
# --------------------------------------------------------------------------------------------------

_sessions: dict[int, tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]] = {}


def _session() -> aiohttp.ClientSession:
    """A pooled client session bound to the running loop (128 streams share its connections)."""
    loop = asyncio.get_running_loop()
    entry = _sessions.get(id(loop))
    if entry is None or entry[0] is not loop or entry[1].closed:
        connector = aiohttp.TCPConnector(limit=256, enable_cleanup_closed=True)
        entry = (loop, aiohttp.ClientSession(connector=connector))
        _sessions[id(loop)] = entry
    return entry[1]


async def close_session() -> None:
    """Close the running loop's HTTP session (tests, orderly shutdown)."""
    loop = asyncio.get_running_loop()
    entry = _sessions.pop(id(loop), None)
    if entry is not None and entry[0] is loop:
        await entry[1].close()


# --------------------------------------------------------------------------------------------------
# Synthesis
# --------------------------------------------------------------------------------------------------


class TelephonySynthesizer:
    """Streams one utterance at a time from the configured vendor as 160-byte mu-law frames."""

    def __init__(self, settings: TtsSettings):
        self.settings = settings

    @classmethod
    def from_settings(cls, settings: ProviderSettings) -> TelephonySynthesizer:
        return cls(telephony_tts_settings(settings))

    def _request(self, text: str) -> tuple[str, dict[str, str], dict[str, Any], Any]:
        """URL, headers, JSON body and the frame converter for one utterance."""
        s = self.settings
        if s.provider == "openai":
            body: dict[str, Any] = {"model": s.model, "input": text, "voice": s.voice, "response_format": "pcm"}
            if s.speed is not None:
                body["speed"] = s.speed
            if s.instructions:
                body["instructions"] = s.instructions
            headers = {"Authorization": f"Bearer {s.api_key}", "Content-Type": "application/json"}
            return f"{s.base_url}/audio/speech", headers, body, PcmToMulawFrames(OPENAI_PCM_RATE)
        body = {"text": text, "model_id": s.model}
        if s.voice_settings:
            body["voice_settings"] = s.voice_settings
        headers = {"xi-api-key": s.api_key, "Content-Type": "application/json", "Accept": "audio/basic"}
        url = f"{s.base_url}/v1/text-to-speech/{quote(s.voice, safe='')}/stream?output_format={s.output_format}"
        converter = (
            _MulawPassthrough() if s.output_format == "ulaw_8000" else PcmToMulawFrames(ELEVENLABS_PCM_RATES[s.output_format])
        )
        return url, headers, body, converter

    async def frames(self, text: str) -> AsyncIterator[list[bytes]]:
        """Yield lists of 160-byte mu-law frames as audio arrives; the last list ends the utterance
        (its final frame padded with silence). Raises ``TtsError`` on vendor errors, timeouts or an
        empty answer."""
        url, headers, body, converter = self._request(text)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.settings.timeout_s, sock_read=self.settings.timeout_s)
        vendor = "OpenAI" if self.settings.provider == "openai" else "ElevenLabs"
        produced = 0
        try:
            async with _session().post(url, json=body, headers=headers, timeout=timeout) as response:
                if response.status >= 400:
                    detail = _error_detail(await response.read())
                    raise TtsError(f"{vendor} TTS error: HTTP {response.status}{detail}")
                async for chunk in response.content.iter_any():
                    frames = converter.push(chunk)
                    if frames:
                        produced += len(frames)
                        yield frames
        except TimeoutError as exc:
            raise TtsError(f"{vendor} TTS timed out after {self.settings.timeout_s:g}s") from exc
        except aiohttp.ClientError as exc:
            raise TtsError(f"{vendor} TTS request failed: {type(exc).__name__}") from exc
        tail = converter.flush()
        if tail:
            produced += len(tail)
            yield tail
        if produced == 0:
            raise TtsError(NO_AUDIO)


class _MulawPassthrough:
    """mu-law from the vendor (ElevenLabs ``ulaw_8000``): only cut into 160-byte frames."""

    def __init__(self) -> None:
        self.framer = MulawFramer()

    def push(self, chunk: bytes) -> list[bytes]:
        return self.framer.push(chunk)

    def flush(self) -> list[bytes]:
        tail = self.framer.flush(pad=True)
        return [tail] if tail is not None else []


def _error_detail(body: bytes) -> str:
    """A vendor error's type/code (never its free text, which may quote part of a credential)."""
    try:
        document = json.loads(body or b"{}")
    except ValueError:
        return ""
    error = document.get("error") if isinstance(document, dict) else None
    if isinstance(document, dict) and isinstance(document.get("detail"), dict):
        error = document["detail"]  # ElevenLabs: {"detail": {"status": "...", "message": "..."}}
    if not isinstance(error, dict):
        return ""
    parts = [str(error[k]) for k in ("type", "code", "status") if isinstance(error.get(k), str | int)]
    return f" ({', '.join(parts)})" if parts else ""
