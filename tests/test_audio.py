"""providers.audio: G.711 mu-law bit-exactness against stdlib audioop, streaming resampling, framing.

Vectors are from /work/shared/reference/protocols.md §9.
"""

import hashlib
import warnings

import numpy as np
import pytest
import soxr

from providers.audio import (
    FRAME_BYTES,
    FRAME_SECONDS,
    MULAW_SILENCE,
    MulawFramer,
    PcmToMulawFrames,
    StreamingResampler,
    mulaw_to_pcm16,
    pcm16_to_mulaw,
    silence_frame,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # stdlib on 3.11: the bit-exact reference

G711_PCM16 = [0, 1, -1, -4, 100, -100, 1000, -1000, 8000, -8000, 32767, -32768]
G711_ULAW = bytes.fromhex("ffff7e7ef272ce4ea0208000")
G711_DECODED = [0, 0, -8, -8, 104, -104, 988, -988, 7932, -7932, 32124, -32124]
G711_SINE_ULAW_SHA256 = "db13fe88c62aa5ccd03dee93d192fa625ab8710bc0b8eeba09af50088398e022"
G711_SINE_ULAW_FIRST16_HEX = "ffa9a0a9ff292029ffa9a0a9ff292029"


def s16(samples) -> bytes:
    return np.asarray(samples).astype("<i2").tobytes()


def from_s16(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float64)


def tone(freq: float, rate: int, seconds: float, amplitude: float = 8000.0) -> np.ndarray:
    n = np.arange(round(rate * seconds))
    return np.round(amplitude * np.sin(2 * np.pi * freq * n / rate)).astype(np.int16)


def chunks_of(data: bytes, sizes):
    """Split data into pieces cycling through sizes (byte counts, odd ones included)."""
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i : i + n])
        i += n
        k += 1
    return out


ODD_SIZES = [1, 7, 960, 333, 2, 1001, 3, 4799, 64]


# ---------------------------------------------------------------------------------------- constants


def test_constants():
    assert MULAW_SILENCE == 0xFF
    assert FRAME_BYTES == 160
    assert FRAME_SECONDS == pytest.approx(0.020)
    assert FRAME_BYTES == round(8000 * FRAME_SECONDS)
    assert silence_frame() == b"\xff" * 160
    assert mulaw_to_pcm16(silence_frame()) == bytes(320)


# ------------------------------------------------------------------------------------ G.711 exactness


def test_encode_all_65536_int16_values_match_audioop():
    pcm = np.arange(-32768, 32768, dtype="<i2").tobytes()
    ours = pcm16_to_mulaw(pcm)
    assert len(ours) == 65536
    assert ours == audioop.lin2ulaw(pcm, 2)


def test_decode_all_256_codes_match_audioop():
    codes = bytes(range(256))
    ours = mulaw_to_pcm16(codes)
    assert len(ours) == 512
    assert ours == audioop.ulaw2lin(codes, 2)


def test_round_trip_is_idempotent_after_one_pass():
    # decode(encode(decode(c))) == decode(c) for all codes except -0 (0x7F), which re-encodes as +0.
    codes = bytes(range(256))
    once = mulaw_to_pcm16(codes)
    again = pcm16_to_mulaw(once)
    assert mulaw_to_pcm16(again) == once


def test_protocols_vectors():
    assert pcm16_to_mulaw(s16(G711_PCM16)) == G711_ULAW
    assert list(np.frombuffer(mulaw_to_pcm16(G711_ULAW), dtype="<i2")) == G711_DECODED


def test_1khz_20ms_frame_vector():
    n = np.arange(160)
    pcm = s16(np.round(8000 * np.sin(2 * np.pi * 1000 * n / 8000)))
    ulaw = pcm16_to_mulaw(pcm)
    assert len(ulaw) == FRAME_BYTES
    assert ulaw[:16].hex() == G711_SINE_ULAW_FIRST16_HEX
    assert hashlib.sha256(ulaw).hexdigest() == G711_SINE_ULAW_SHA256
    assert ulaw == audioop.lin2ulaw(pcm, 2)


def test_codec_accepts_bytearray_memoryview_and_empty():
    pcm = s16(G711_PCM16)
    assert pcm16_to_mulaw(bytearray(pcm)) == G711_ULAW
    assert pcm16_to_mulaw(memoryview(pcm)) == G711_ULAW
    assert mulaw_to_pcm16(memoryview(G711_ULAW)) == s16(G711_DECODED)
    assert pcm16_to_mulaw(b"") == b""
    assert mulaw_to_pcm16(b"") == b""


def test_encode_rejects_odd_byte_count():
    with pytest.raises(ValueError):
        pcm16_to_mulaw(b"\x00\x01\x02")


def test_random_long_buffer_matches_audioop():
    rng = np.random.default_rng(1)
    pcm = rng.integers(-32768, 32768, size=48_000, dtype=np.int16).astype("<i2").tobytes()
    assert pcm16_to_mulaw(pcm) == audioop.lin2ulaw(pcm, 2)
    ulaw = rng.integers(0, 256, size=48_000, dtype=np.uint8).tobytes()
    assert mulaw_to_pcm16(ulaw) == audioop.ulaw2lin(ulaw, 2)


# ---------------------------------------------------------------------------------------- resampling


def test_20ms_at_24k_becomes_one_160_byte_frame():
    pcm = tone(1000, 24000, 0.020).astype("<i2").tobytes()
    assert len(pcm) == 960
    # one-shot: 480 samples -> 160 samples
    assert len(soxr.resample(np.frombuffer(pcm, "<i2"), 24000, 8000)) == 160
    # streaming: soxr holds back look-ahead, flush releases it -- 160 samples in total
    rs = StreamingResampler(24000)
    out = rs.process(pcm) + rs.flush()
    assert len(out) == 320
    # pipeline: exactly one full frame, no padding needed
    pipe = PcmToMulawFrames(24000)
    frames = pipe.push(pcm) + pipe.flush()
    assert [len(f) for f in frames] == [160]
    assert pipe.framer.pending == 0


def _one_shot(pcm: bytes, src: int, dst: int = 8000) -> bytes:
    """Reference: resample the whole signal at once, round to nearest, clip to int16."""
    x = np.frombuffer(pcm, dtype="<i2").astype(np.float32)
    y = soxr.resample(x, src, dst, quality="HQ")
    return np.clip(np.rint(y), -32768, 32767).astype("<i2").tobytes()


@pytest.mark.parametrize("src", [16000, 22050, 24000, 44100, 48000])
def test_streaming_in_odd_chunks_equals_one_shot_exactly(src):
    rng = np.random.default_rng(src)
    # 1.5 s of a tone plus white noise at speech level
    x = tone(440, src, 1.5, 6000).astype(np.float64) + rng.standard_normal(round(src * 1.5)) * 2000
    pcm = x.clip(-32768, 32767).astype("<i2").tobytes()

    rs = StreamingResampler(src)
    pieces = chunks_of(pcm, ODD_SIZES)
    assert any(len(p) % 2 for p in pieces)  # odd byte counts really are exercised
    streamed = b"".join(rs.process(p) for p in pieces) + rs.flush()

    reference = _one_shot(pcm, src)
    assert len(reference) // 2 == pytest.approx(len(pcm) // 2 * 8000 / src, abs=1)
    # Exact, not approximately equal: the float32 soxr stream is chunking-invariant and we round
    # deterministically (no libsoxr int16 dither), so any lost/duplicated byte or chunk-edge click fails.
    assert streamed == reference


def test_soxr_int16_dither_is_why_we_stream_in_float32():
    """Documents the design choice: soxr's own int16 output is not reproducible for small chunks."""
    x = tone(700, 24000, 0.5)
    runs = []
    for _ in range(3):
        rs = soxr.ResampleStream(24000, 8000, 1, dtype="int16", quality="HQ")
        parts = [rs.resample_chunk(x[i : i + 1], last=False) for i in range(len(x))]
        runs.append(np.concatenate([*parts, rs.resample_chunk(x[:0], last=True)]).astype(np.int64))
    diffs = [np.abs(runs[0] - r).max() for r in runs[1:]]
    assert max(diffs) <= 2  # +-1 LSB TPDF dither at most; typically nonzero


def test_streaming_is_deterministic_for_same_chunking():
    pcm = tone(700, 24000, 0.5).astype("<i2").tobytes()
    runs = []
    for _ in range(2):
        rs = StreamingResampler(24000)
        runs.append(b"".join(rs.process(p) for p in chunks_of(pcm, ODD_SIZES)) + rs.flush())
    assert runs[0] == runs[1]


def test_odd_byte_is_carried_not_lost():
    # Split every sample across two calls: 1 byte, then 1 byte, ...
    samples = tone(1000, 24000, 0.05)
    pcm = samples.astype("<i2").tobytes()
    rs = StreamingResampler(24000)
    byte_wise = b"".join(rs.process(pcm[i : i + 1]) for i in range(len(pcm))) + rs.flush()
    rs2 = StreamingResampler(24000)
    whole = rs2.process(pcm) + rs2.flush()
    assert len(byte_wise) == len(whole) == 2 * 400
    assert byte_wise == whole


def test_identity_when_rates_equal():
    pcm = s16(G711_PCM16) * 10
    rs = StreamingResampler(8000, 8000)
    out = b"".join(rs.process(p) for p in chunks_of(pcm, [3, 1, 5, 2]))
    assert out + rs.flush() == pcm
    assert rs.process(b"\x01") == b""  # a dangling half-sample waits...
    assert rs.process(b"\x02") == b"\x01\x02"  # ...and is completed by the next chunk


def test_flush_resets_for_reuse_and_reset_discards():
    pcm = tone(1000, 24000, 0.1).astype("<i2").tobytes()
    rs = StreamingResampler(24000)
    first = rs.process(pcm) + rs.flush()
    second = rs.process(pcm) + rs.flush()
    assert first == second
    rs.process(pcm[:1001])
    rs.reset()
    assert rs.process(pcm) + rs.flush() == first


def test_1khz_tone_keeps_frequency_and_amplitude():
    src = tone(1000, 24000, 1.0, amplitude=8000)
    pcm = src.astype("<i2").tobytes()
    rs = StreamingResampler(24000)
    out = from_s16(b"".join(rs.process(p) for p in chunks_of(pcm, [960, 333, 1])) + rs.flush())
    assert len(out) == 8000
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    freqs = np.fft.rfftfreq(len(out), d=1 / 8000)
    assert freqs[np.argmax(spectrum)] == pytest.approx(1000, abs=1)  # 1 Hz bins
    body = out[400:-400]  # skip the filter's edge transients
    rms_ratio = np.sqrt(np.mean(body**2)) / (8000 / np.sqrt(2))
    assert 20 * np.log10(rms_ratio) == pytest.approx(0.0, abs=0.05)  # within 0.05 dB
    assert np.abs(body).max() == pytest.approx(8000, rel=0.01)


def test_above_nyquist_is_filtered_not_aliased():
    # 5 kHz at 24 kHz would alias to 3 kHz with naive decimation (x[::3]); soxr must reject it.
    pcm = tone(5000, 24000, 1.0, amplitude=16000).astype("<i2").tobytes()
    rs = StreamingResampler(24000)
    out = from_s16(rs.process(pcm) + rs.flush())[400:-400]
    level_db = 20 * np.log10(max(np.sqrt(np.mean(out**2)), 1e-9) / (16000 / np.sqrt(2)))
    assert level_db < -60
    naive = from_s16(pcm)[::3][400:-400]
    assert 20 * np.log10(np.sqrt(np.mean(naive**2)) / (16000 / np.sqrt(2))) > -1  # what we avoid


def test_full_scale_overshoot_clips_instead_of_wrapping():
    n = np.arange(24000)
    square = np.where(np.sin(2 * np.pi * 700 * n / 24000) >= 0, 32767, -32768).astype("<i2")
    rs = StreamingResampler(24000)
    out = from_s16(b"".join(rs.process(p) for p in chunks_of(square.tobytes(), ODD_SIZES)) + rs.flush())
    ideal = soxr.resample(square.astype(np.float64), 24000, 8000, quality="HQ")
    assert ideal.max() > 32767 and ideal.min() < -32768  # the filter really overshoots
    assert out.max() == 32767 and out.min() == -32768
    assert np.abs(out - ideal.clip(-32768, 32767)).max() <= 1  # int16 wrap-around would be ~65536


def test_invalid_rates():
    with pytest.raises(ValueError):
        StreamingResampler(0)


# ------------------------------------------------------------------------------------------- framing


def test_framer_boundaries():
    f = MulawFramer()
    assert f.push(b"") == []
    assert f.push(b"\x01" * 159) == []
    assert f.pending == 159
    frames = f.push(b"\x02")
    assert frames == [b"\x01" * 159 + b"\x02"]
    assert f.pending == 0
    frames = f.push(bytes(range(256)) * 2)  # 512 bytes -> 3 frames + 32 left
    assert [len(x) for x in frames] == [160, 160, 160]
    assert b"".join(frames) == (bytes(range(256)) * 2)[:480]
    assert f.pending == 32
    frames = f.push(b"\x03" * 128)  # exactly completes the 4th frame
    assert frames == [(bytes(range(256)) * 2)[480:] + b"\x03" * 128]
    assert f.pending == 0


def test_framer_flush_padding():
    f = MulawFramer()
    assert f.flush() is None
    f.push(b"\x10" * 170)
    tail = f.flush()
    assert tail == b"\x10" * 10 + b"\xff" * 150
    assert len(tail) == FRAME_BYTES
    assert f.flush() is None  # flushed means empty

    f.push(b"\x10" * 10)
    assert f.flush(pad=False) == b"\x10" * 10
    f.push(b"\x10" * 10)
    f.reset()
    assert f.pending == 0 and f.flush() is None


def test_framer_accepts_any_buffer_type_and_loses_nothing():
    f = MulawFramer()
    data = np.random.default_rng(3).integers(0, 256, 10_007, dtype=np.uint8).tobytes()
    out = []
    for p in chunks_of(data, ODD_SIZES):
        out += f.push(memoryview(p))
    tail = f.flush(pad=False)
    assert all(len(x) == FRAME_BYTES for x in out)
    assert b"".join(out) + tail == data


# ------------------------------------------------------------------------------------------ pipeline


@pytest.mark.parametrize("src", [8000, 16000, 24000, 44100])
def test_pipeline_equals_resample_then_encode_and_loses_nothing(src):
    pcm = tone(1000, src, 0.737, 12000).astype("<i2").tobytes()  # not a whole number of frames
    pipe = PcmToMulawFrames(src)
    frames = []
    for p in chunks_of(pcm, ODD_SIZES):
        frames += pipe.push(p)
    frames += pipe.flush()
    assert frames and all(len(x) == FRAME_BYTES for x in frames)

    rs = StreamingResampler(src)
    resampled = b"".join(rs.process(p) for p in chunks_of(pcm, ODD_SIZES)) + rs.flush()
    expected = audioop.lin2ulaw(resampled, 2)
    joined = b"".join(frames)
    assert joined[: len(expected)] == expected
    assert set(joined[len(expected) :]) <= {MULAW_SILENCE}  # padding only
    assert len(joined) - len(expected) < FRAME_BYTES
    assert len(expected) == pytest.approx(0.737 * 8000, abs=1)


def test_pipeline_output_decodes_to_the_tone():
    pcm = tone(1000, 24000, 1.0, 8000).astype("<i2").tobytes()
    pipe = PcmToMulawFrames(24000)
    frames = []
    for p in chunks_of(pcm, [960]):
        frames += pipe.push(p)
    frames += pipe.flush()
    assert len(frames) == 50  # 1 s = 50 x 20 ms
    out = from_s16(mulaw_to_pcm16(b"".join(frames)))
    spectrum = np.abs(np.fft.rfft(out * np.hanning(len(out))))
    assert np.fft.rfftfreq(len(out), 1 / 8000)[np.argmax(spectrum)] == pytest.approx(1000, abs=1)
    body = out[400:-400]
    # mu-law keeps ~38 dB SNR at this level, so the RMS stays within a few tenths of a dB
    assert 20 * np.log10(np.sqrt(np.mean(body**2)) / (8000 / np.sqrt(2))) == pytest.approx(0, abs=0.3)


def test_pipeline_reset_drops_pending_audio():
    pipe = PcmToMulawFrames(24000)
    pipe.push(tone(1000, 24000, 0.1).astype("<i2").tobytes()[:1001])
    pipe.reset()
    assert pipe.flush() == []
