"""A local fake of ElevenLabs streaming TTS.

``POST /v1/text-to-speech/{voice_id}/stream?output_format=…`` (reference/protocols.md §8 "ElevenLabs
streaming TTS"): header ``xi-api-key``, JSON ``text``/``model_id`` [/``voice_settings``], chunked raw
audio back. ``ulaw_8000`` answers raw mu-law bytes (no header) -- a recognisable ramp pattern the test
can compare byte for byte; ``pcm_<rate>`` answers s16le PCM at that rate. Errors use ElevenLabs'
``{"detail": {"status": …, "message": …}}`` shape.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
from aiohttp import web

from tests.fakes.aiohttp_server import LoopThreadServer

API_KEY = "fake-elevenlabs-key-0123456789"
VOICE_ID = "21m00Tcm4TlvDq8ikWAM"
CHUNK_BYTES = 1000  # deliberately not a multiple of 160: framing must carry the remainder


def ulaw_pattern(length: int) -> bytes:
    """The fake's mu-law 'speech': a repeating ramp of codes 0x10..0x6F (never silence 0xFF/0x7F)."""
    return bytes(0x10 + (i % 0x60) for i in range(length))


class FakeElevenLabs(LoopThreadServer):
    name = "fake ElevenLabs"

    def __init__(self, *, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        self.audio_ms = 300
        self.requests: list[dict[str, Any]] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def tts_config(self, **extra: Any) -> dict[str, Any]:
        return {
            "provider": "elevenlabs",
            "providers": {"elevenlabs": {"apiKey": self.api_key, "baseUrl": self.base_url, "voiceId": VOICE_ID, **extra}},
        }

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/text-to-speech/{voice_id}/stream", self._stream)

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response({"detail": {"status": code, "message": message}}, status=status)

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("xi-api-key") != self.api_key:
            return self._error(401, "invalid_api_key", "Invalid API key")
        body = await request.json()
        output_format = request.query.get("output_format", "mp3_44100_128")
        self.requests.append({"voice_id": request.match_info["voice_id"], "output_format": output_format,
                              "body": body, "accept": request.headers.get("Accept")})
        if not body.get("text"):
            return self._error(400, "invalid_text", "text is required")
        if output_format == "ulaw_8000":
            audio = ulaw_pattern(8 * self.audio_ms)
            content_type = "audio/basic"
        elif output_format.startswith("pcm_"):
            rate = int(output_format.split("_", 1)[1])
            audio = np.full(rate * self.audio_ms // 1000, 4000, dtype="<i2").tobytes()
            content_type = "audio/pcm"
        else:
            return self._error(400, "unsupported_format", "the fake speaks ulaw_8000 and pcm_* only")
        response = web.StreamResponse(headers={"Content-Type": content_type})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for offset in range(0, len(audio), CHUNK_BYTES):
            await response.write(audio[offset : offset + CHUNK_BYTES])
        await response.write_eof()
        return response


@contextlib.contextmanager
def running_fake_elevenlabs(**kwargs: Any) -> Iterator[FakeElevenLabs]:
    fake = FakeElevenLabs(**kwargs).start()
    try:
        yield fake
    finally:
        fake.stop()
