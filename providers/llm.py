"""The auto-responder's language model: OpenAI-compatible chat completions over ``requests``.

Works with OpenAI and with local servers that speak the same API (vLLM, Ollama, llama.cpp).
Reference: OpenAI Chat Completions (``POST {base}/chat/completions``, protocols.md §8) and the OpenClaw
response generator (fact sheet §7.3): the model must answer with ``{"spoken": "..."}``; the reply is
extracted tolerantly (JSON, fenced JSON, the outermost object, an inline ``"spoken"`` field, else the
plain text with code fences and "thinking" preambles removed). An empty result means "say nothing".
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass

import requests

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_ANSWER_BYTES = 1024 * 1024  # a spoken reply is a few hundred bytes; bound what a server can make us hold
DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_SYSTEM_PROMPT = (
    "You are {name}, a helpful voice assistant on a phone call. Keep responses brief and conversational "
    "(1-2 sentences max). Be natural and friendly. The caller's phone number is {caller}."
)
SPOKEN_CONTRACT = (
    'Reply with only a JSON object of the form {"spoken": "..."} holding exactly the words to say to the '
    'caller. Use {"spoken": ""} when nothing should be said.'
)
_FENCED = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_INLINE_SPOKEN = re.compile(r'"spoken"\s*:\s*"((?:[^"\\]|\\.)*)"', re.DOTALL)
_THINKING_PARAGRAPH = re.compile(
    r"^\s*(thinking|analysis|reasoning|the user\b|i should\b|let me\b|okay, so\b)", re.IGNORECASE
)


class ResponderError(Exception):
    """The model could not produce a reply (timeout, HTTP error, malformed answer)."""


@dataclass(frozen=True)
class Turn:
    speaker: str  # "bot" | "user"
    text: str


def model_name(response_model: str | None) -> str:
    """``provider/model`` → ``model`` (the provider part picks the vendor in OpenClaw; here the base
    URL does); a bare model name is used as is."""
    if not response_model:
        return DEFAULT_MODEL
    return response_model.split("/", 1)[1] if "/" in response_model else response_model


def build_messages(*, history: list[Turn], utterance: str, caller: str, system_prompt: str | None,
                   assistant_name: str = "assistant") -> list[dict[str, str]]:
    prompt = system_prompt or DEFAULT_SYSTEM_PROMPT.format(name=assistant_name, caller=caller or "unknown")
    lines = [f"{'You' if turn.speaker == 'bot' else 'Caller'}: {turn.text}" for turn in history]
    system = prompt
    if lines:
        system += "\n\nConversation so far:\n" + "\n".join(lines)
    system += "\n\n" + SPOKEN_CONTRACT
    return [{"role": "system", "content": system}, {"role": "user", "content": utterance}]


def _spoken_from_json(candidate: str) -> str | None:
    try:
        value = json.loads(candidate)
    except (ValueError, TypeError):
        return None
    if isinstance(value, dict) and isinstance(value.get("spoken"), str):
        return value["spoken"]
    return None


def extract_spoken(content: str | None) -> str:
    """The words to say, from whatever the model answered (fact sheet §7.3 extraction order)."""
    text = (content or "").strip()
    if not text:
        return ""
    for candidate in (text, *(m.group(1).strip() for m in _FENCED.finditer(text))):
        spoken = _spoken_from_json(candidate)
        if spoken is not None:
            return _collapse(spoken)
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        spoken = _spoken_from_json(text[start : end + 1])
        if spoken is not None:
            return _collapse(spoken)
    inline = _INLINE_SPOKEN.search(text)
    if inline:
        try:
            return _collapse(json.loads(f'"{inline.group(1)}"'))
        except ValueError:
            return _collapse(inline.group(1))
    plain = _FENCED.sub(lambda m: m.group(1), text)
    paragraphs = [p for p in re.split(r"\n\s*\n", plain) if p.strip()]
    while len(paragraphs) > 1 and _THINKING_PARAGRAPH.match(paragraphs[0]):
        paragraphs.pop(0)
    return _collapse(" ".join(paragraphs))


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


class ChatResponder:
    """One chat-completions request per caller turn."""

    def __init__(self, *, base_url: str | None, api_key: str | None, model: str | None, timeout_ms: int):
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = api_key
        self.model = model_name(model)
        self.timeout_s = timeout_ms / 1000
        self.session = requests.Session()

    def reply(self, messages: list[dict[str, str]]) -> str:
        """The raw assistant text. Raises ResponderError -- with a message safe to show and log --
        for anything but a chat completion within the timeout: connect or total time over
        ``timeout_ms`` (a server that dribbles its answer is cut off too), any non-2xx (whatever
        its error shape: OpenAI's object, the plain string Ollama and vLLM send, HTML), a body over
        ``MAX_ANSWER_BYTES`` or one that is not a completion."""
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        body = {"model": self.model, "messages": messages, "stream": False}
        deadline = time.monotonic() + self.timeout_s
        too_slow = f"model did not answer within {int(self.timeout_s * 1000)}ms"
        try:
            with self.session.post(f"{self.base_url}/chat/completions", json=body, headers=headers,
                                   timeout=self.timeout_s, stream=True) as response:
                raw = bytearray()
                # read1: whatever has arrived (not a full 8 KB), so the deadline is checked as bytes come
                while chunk := response.raw.read1(8192, decode_content=True):
                    raw += chunk
                    if time.monotonic() > deadline:
                        raise ResponderError(too_slow)
                    if len(raw) > MAX_ANSWER_BYTES:
                        raise ResponderError(f"model answer is larger than {MAX_ANSWER_BYTES} bytes")
                status = response.status_code
        except requests.Timeout as exc:
            raise ResponderError(too_slow) from exc
        except requests.RequestException as exc:
            raise ResponderError(f"model endpoint unreachable: {type(exc).__name__}") from exc
        document = _json_or_none(bytes(raw))
        if not 200 <= status < 300:
            raise ResponderError(f"model endpoint answered HTTP {status} {_error_detail(document)}".strip())
        try:
            content = document["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            detail = _error_detail(document)
            raise ResponderError(f"model answer is not a chat completion {detail}".strip()) from exc
        return content if isinstance(content, str) else ""


def _json_or_none(raw: bytes):
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None


def _error_detail(document) -> str:
    """What an error body says, in any of the shapes OpenAI-compatible servers use:
    ``{"error": {"message": ...}}`` (OpenAI), ``{"error": "..."}`` (Ollama, vLLM), ``{"detail": ...}``;
    nothing for other bodies. Cut to 200 characters, one line."""
    if not isinstance(document, dict):
        return ""
    error = document.get("error", document.get("detail"))
    if isinstance(error, dict):
        error = error.get("message")
    if not isinstance(error, str):
        return ""
    return re.sub(r"\s+", " ", error).strip()[:200]
