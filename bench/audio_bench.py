"""Audio transcoding throughput: providers.audio vs stdlib audioop, measured in the same run.

    .venv/bin/python bench/audio_bench.py [--seconds 60] [--repeat 9]

Workloads, all on 60 s of synthetic speech-like audio (voiced harmonics with a wandering pitch,
syllable-rate envelope, fricative noise bursts and pauses), fed chunk by chunk as a media consumer
would:

* encode: 8 kHz s16le -> mu-law, ``pcm16_to_mulaw`` vs ``audioop.lin2ulaw``;
* decode: mu-law -> 8 kHz s16le, ``mulaw_to_pcm16`` vs ``audioop.ulaw2lin`` (the inbound path);
* 24 kHz -> 8 kHz mu-law frames (OpenAI TTS ``pcm`` format): ``PcmToMulawFrames`` (soxr HQ stream +
  mu-law table + framing) vs ``audioop.ratecv`` + ``lin2ulaw`` + the same ``MulawFramer``.

Each cell is the best of N timed passes after one warm-up pass, with ours and audioop interleaved
pass by pass, so drift hits both.  Figures are "x real time" = seconds of audio per wall-clock second;
the ratio column is ours / audioop.  No Django needed; finishes in a few seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soxr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from providers.audio import (
    MulawFramer,
    PcmToMulawFrames,
    StreamingResampler,
    mulaw_to_pcm16,
    pcm16_to_mulaw,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib on 3.11; the baseline

TIME_BUDGET_S = 50.0  # hard stop well inside the 60 s the script is allowed


def speech_like(rate: int, seconds: float, seed: int = 7) -> bytes:
    """Deterministic speech-like s16le mono at ``rate``: harmonics + envelope + noise + pauses."""
    rng = np.random.default_rng(seed)
    n = round(rate * seconds)
    t = np.arange(n) / rate
    # pitch wandering between ~90 and ~220 Hz
    f0 = 150 + 50 * np.sin(2 * np.pi * 0.3 * t) + 20 * np.sin(2 * np.pi * 1.7 * t + 1.0)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = np.zeros(n)
    for k in range(1, 31):  # harmonics with a -6 dB/octave tilt, kept below Nyquist
        voiced += np.where(k * f0 < 0.45 * rate, np.sin(k * phase) / k, 0.0)
    # syllables ~4 Hz; every few seconds a pause; fricative noise bursts between syllables
    syll = np.clip(np.sin(2 * np.pi * 4.0 * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
    pauses = (np.sin(2 * np.pi * 0.23 * t) > -0.6).astype(float)
    noise = rng.standard_normal(n) * (np.sin(2 * np.pi * 4.0 * t) < -0.7)
    x = pauses * (0.8 * syll * voiced + 0.15 * noise)
    x *= 0.5 * 32767 / np.abs(x).max()  # peaks at -6 dBFS
    return x.astype("<i2").tobytes()


def chunked(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def best_of(fns: dict[str, Callable[[], object]], repeat: int, deadline: float) -> dict[str, float]:
    for fn in fns.values():  # warm-up
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            break
    return best


def machine() -> str:
    try:
        ncpu = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        ncpu = os.cpu_count() or 0
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (
        f"nproc={ncpu}, CPU: {model}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, soxr {soxr.__version__}"
    )


def alias_level_db(resample: Callable[[bytes], bytes]) -> float:
    """Level left of a full-band 5 kHz tone after 24k->8k (it would alias to 3 kHz); lower is better."""
    n = np.arange(24000)
    x = (16000 * np.sin(2 * np.pi * 5000 * n / 24000)).astype("<i2").tobytes()
    y = np.frombuffer(resample(x), dtype="<i2").astype(np.float64)[400:-400]
    rms = np.sqrt(np.mean(y**2))
    return 20 * np.log10(rms / (16000 / np.sqrt(2))) if rms > 0 else float("-inf")


def fmt_db(level: float) -> str:
    return f"{level:.1f} dB" if np.isfinite(level) else "< 1 LSB (digital silence)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="audio length (default 60)")
    ap.add_argument("--repeat", type=int, default=9, help="timed passes per cell, best kept (default 9)")
    args = ap.parse_args()
    started = time.perf_counter()
    deadline = started + TIME_BUDGET_S
    secs = args.seconds

    pcm8 = speech_like(8000, secs)
    pcm24 = speech_like(24000, secs)
    ulaw8 = audioop.lin2ulaw(pcm8, 2)
    assert pcm16_to_mulaw(pcm8) == ulaw8  # same work, same answer

    rows: list[tuple[str, str, float, float]] = []

    def add(label: str, chunk_label: str, ours: Callable[[], object], base: Callable[[], object]) -> None:
        best = best_of({"ours": ours, "audioop": base}, args.repeat, deadline)
        rows.append((label, chunk_label, secs / best["ours"], secs / best["audioop"]))

    # (a) encode / decode at 8 kHz
    for ms in (20, 100):
        pcm_chunks = chunked(pcm8, 16 * ms)  # 8 kHz * 2 bytes = 16 bytes/ms
        add(
            "encode PCM16 -> mu-law (8 kHz)",
            f"{ms} ms",
            lambda c=pcm_chunks: [pcm16_to_mulaw(x) for x in c],
            lambda c=pcm_chunks: [audioop.lin2ulaw(x, 2) for x in c],
        )
    add(
        "encode PCM16 -> mu-law (8 kHz)",
        f"whole {secs:g} s",
        lambda: pcm16_to_mulaw(pcm8),
        lambda: audioop.lin2ulaw(pcm8, 2),
    )
    ulaw_chunks = chunked(ulaw8, 160)
    add(
        "decode mu-law -> PCM16 (8 kHz)",
        "20 ms",
        lambda: [mulaw_to_pcm16(x) for x in ulaw_chunks],
        lambda: [audioop.ulaw2lin(x, 2) for x in ulaw_chunks],
    )

    # (b) 24 kHz -> 8 kHz -> mu-law -> 160-byte frames, streaming
    def ours_pipeline(chunks: list[bytes]) -> int:
        pipe = PcmToMulawFrames(24000)
        frames = 0
        for c in chunks:
            frames += len(pipe.push(c))
        return frames + len(pipe.flush())

    def audioop_pipeline(chunks: list[bytes]) -> int:
        state = None
        framer = MulawFramer()
        frames = 0
        for c in chunks:
            pcm, state = audioop.ratecv(c, 2, 1, 24000, 8000, state)
            frames += len(framer.push(audioop.lin2ulaw(pcm, 2)))
        return frames + (framer.flush() is not None)

    for ms in (20, 100):
        chunks = chunked(pcm24, 48 * ms)  # 24 kHz * 2 bytes = 48 bytes/ms
        assert abs(ours_pipeline(chunks) - audioop_pipeline(chunks)) <= 1  # same number of frames
        add(
            "24 kHz PCM16 -> 8 kHz mu-law frames",
            f"{ms} ms",
            lambda c=chunks: ours_pipeline(c),
            lambda c=chunks: audioop_pipeline(c),
        )

    def soxr_resample(x: bytes) -> bytes:
        rs = StreamingResampler(24000)
        return rs.process(x) + rs.flush()

    alias_ours = alias_level_db(soxr_resample)
    alias_base = alias_level_db(lambda x: audioop.ratecv(x, 2, 1, 24000, 8000, None)[0])

    elapsed = time.perf_counter() - started
    print(f"Machine: {machine()}")
    print(
        f"Audio: {secs:g} s synthetic speech-like; best of {args.repeat} after warm-up; "
        f"run took {elapsed:.1f} s"
    )
    print()
    print("| workload | chunk | ours (x real time) | audioop (x real time) | ours / audioop |")
    print("|---|---|---:|---:|---:|")
    for label, chunk_label, ours, base in rows:
        print(f"| {label} | {chunk_label} | {ours:,.0f} | {base:,.0f} | {ours / base:.2f} |")
    print()
    print(
        f"Alias rejection, 24 kHz -> 8 kHz PCM16, level of a 5 kHz tone that would fold to 3 kHz "
        f"(lower is better): ours (soxr HQ) {fmt_db(alias_ours)}, audioop.ratecv {fmt_db(alias_base)}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
