"""Media streams under load: outbound frame pacing and speak-to-first-frame latency, one daphne.

    .venv/bin/python bench/media_bench.py [--streams 1,32,128] [--seconds 6] [--passes 2] [--speaks 30]
                                          [--drift-seconds 60]

Needs Redis on 127.0.0.1 (``--redis-url``, default db 12: the bench and daphne share the channel
layer, as production processes do). The database is a fresh SQLite file in a temp dir unless
``--database-url`` is given. The carriers are the local fakes from ``tests/fakes`` (Twilio REST for
hang-ups, OpenAI TTS that answers instantly, realtime STT); this script plays Twilio's side of every
media-stream WebSocket with the ``websockets`` asyncio client.

(b) **Pacing**: N calls (1, 32, 128) attach N streams to one daphne process at once; each call's
greeting (``--seconds`` of TTS audio) is paced out by the consumer. For every stream we take the
arrival times of its audio frames at the client and the gaps between consecutive frames; the table
gives p50/p99/max of all gaps and of |gap - 20 ms| (jitter), and the drift of the whole utterance
(last arrival - first arrival against (frames - 1) x 20 ms). A last run plays one ``--drift-seconds``
utterance on one stream to show that the deadline clock does not drift over minutes. Baselines in the same run: the ideal
20 ms clock and the 1-stream run (ratio column = p99 jitter / 1-stream p99 jitter).

(c) **Latency**: with one idle stream attached, ``services.speak`` is called from this process (a
different process from daphne, like the CLI or a Celery worker) ``--speaks`` times; we time from the
call to the first frame on the socket (the keep-alive silence while TTS starts) and to the first
frame of the utterance's audio. Baseline, interleaved with the speaks: ``streams.ping_stream`` --
the same channel-layer round trip to the consumer and back with no speech work. Ratios are
p50(latency) / p50(ping).

Finishes by itself (hard budget ``TIME_BUDGET_S``); prints a Markdown table for bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import websockets
from bench_support import free_port, percentile, process_cpu_s, wait_for_port

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TIME_BUDGET_S = 170.0
FRAME_S = 0.020
SILENCE_BYTE = 0xFF


class StreamClient:
    """Twilio's side of one media stream: records when each frame arrives (perf_counter)."""

    def __init__(self, url: str, call_sid: str, token: str, stream_sid: str):
        self.url, self.call_sid, self.token, self.stream_sid = url, call_sid, token, stream_sid
        self.arrivals: list[tuple[float, bool]] = []  # (time, is_audio)
        self.marks = 0
        self.mark_event = asyncio.Event()
        self.ws = None
        self.task: asyncio.Task | None = None

    async def open(self) -> None:
        self.ws = await websockets.connect(self.url, max_size=2**20, compression=None, open_timeout=30)
        await self.ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await self.ws.send(json.dumps({
            "event": "start", "sequenceNumber": "1", "streamSid": self.stream_sid,
            "start": {"streamSid": self.stream_sid, "callSid": self.call_sid, "tracks": ["inbound"],
                      "customParameters": {"token": self.token},
                      "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
        }))
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        import base64

        try:
            async for raw in self.ws:
                now = time.perf_counter()
                if raw.startswith('{"event":"media"'):
                    payload = raw[raw.index('"payload":"') + 11 : -3]
                    first = base64.b64decode(payload[:4])[0]
                    self.arrivals.append((now, first != SILENCE_BYTE))
                elif '"mark"' in raw:
                    self.marks += 1
                    self.mark_event.set()
        except websockets.ConnectionClosed:
            pass

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            await asyncio.wait([self.task], timeout=5)


def audio_gaps(client: StreamClient) -> tuple[list[float], float, int]:
    """Gaps between consecutive audio frames; drift of the utterance; audio frame count."""
    audio = [t for t, is_audio in client.arrivals if is_audio]
    gaps = [b - a for a, b in itertools.pairwise(audio)]
    drift = (audio[-1] - audio[0]) - (len(audio) - 1) * FRAME_S if len(audio) > 1 else 0.0
    return gaps, drift, len(audio)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.started = time.monotonic()
        self.tmp = Path(tempfile.mkdtemp(prefix="media-bench-"))
        self.database_url = args.database_url or f"sqlite:///{self.tmp / 'bench.sqlite3'}"
        self.secret = "media-bench-secret-key-" + "x" * 30
        os.environ.update({
            "DATABASE_URL": self.database_url, "REDIS_URL": args.redis_url, "DJANGO_SECRET_KEY": self.secret,
            "VOICECALL_VAR_DIR": str(self.tmp / "var"), "DJANGO_SETTINGS_MODULE": "voicecall_site.settings",
        })
        self.seq = 0

    def left(self) -> float:
        return TIME_BUDGET_S - (time.monotonic() - self.started)

    # --- set-up ----------------------------------------------------------------------------------
    def start(self) -> None:
        # The fake carriers run in a process of their own: streaming 128 TTS answers through Python
        # in this process would hold the GIL and delay the clients' arrival timestamps.
        self.fakes = subprocess.Popen(
            [sys.executable, __file__, "--serve-fakes"], cwd=REPO, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        fakes = json.loads(self.fakes.stdout.readline())
        self.set_tts_ms(int(self.args.seconds * 1000))
        self.port = free_port()
        document = {
            **fakes["twilio"],
            "maxConcurrentCalls": 1000,
            "serve": {"port": self.port},
            "tts": fakes["tts"],
            "streaming": {"enabled": True, "providers": fakes["streaming"],
                          "maxConnections": 1024, "maxPendingConnections": 1024,
                          "maxPendingConnectionsPerIp": 1024, "preStartTimeoutMs": 30000},
        }
        self.config_path = self.tmp / "voicecall.json5"
        self.config_path.write_text(json.dumps(document))
        os.environ["VOICECALL_CONFIG"] = str(self.config_path)
        env = {**os.environ, "PYTHONPATH": str(REPO), "VOICECALL_CELERY_EAGER": "1", "VOICECALL_LOG_LEVEL": "WARNING"}
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
        self.log = (self.tmp / "daphne.log").open("w")
        self.daphne = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "voicecall_site.asgi:application"],
            cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port, self.daphne)
        import django

        django.setup()

    def set_tts_ms(self, ms: int) -> None:
        self.fakes.stdin.write(f"tts_ms {ms}\n")
        self.fakes.stdin.flush()
        assert self.fakes.stdout.readline().strip() == "ok"

    def daphne_cpu_s(self) -> float:
        return process_cpu_s(self.daphne.pid)

    def daphne_rss_kib(self) -> int:
        for line in Path(f"/proc/{self.daphne.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    async def _sample_rss(self, peak: list[int], stop: asyncio.Event) -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], self.daphne_rss_kib())
            try:
                await asyncio.wait_for(stop.wait(), 0.05)
            except TimeoutError:
                pass

    def stop(self) -> None:
        for proc in (getattr(self, "daphne", None), getattr(self, "fakes", None)):
            if proc is None or proc.poll() is not None:
                continue
            if proc is getattr(self, "fakes", None):
                proc.stdin.close()
            else:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def new_calls(self, count: int, greeting: str | None) -> list:
        from django.utils import timezone

        from calls.media import control as streams
        from calls.models import Call

        calls = []
        for _ in range(count):
            sid = "CA" + uuid.uuid4().hex  # the fake Twilio answers 404 to its hang-up: "already gone"
            call = Call.objects.create(
                provider="twilio", provider_call_id=sid, direction="inbound", mode="conversation",
                state="listening", from_number="+15550001000", to_number="+15550002000",
                initial_message=greeting or "", initial_message_delivered=not greeting, answered_at=timezone.now(),
            )
            calls.append((call, streams.mint_stream_token(call)))
        return calls

    def client_for(self, call, token: str) -> StreamClient:
        self.seq += 1
        return StreamClient(f"ws://127.0.0.1:{self.port}/voice/stream", call.provider_call_id, token,
                            f"MZ{self.seq:032x}")

    # --- (b) pacing --------------------------------------------------------------------------------
    async def pacing(self, count: int, seconds: float | None = None) -> dict:
        seconds = seconds or self.args.seconds
        await asyncio.to_thread(self.set_tts_ms, int(seconds * 1000))
        calls = await asyncio.to_thread(self.new_calls, count, f"Pacing run with {count} streams")
        clients = [self.client_for(call, token) for call, token in calls]
        # Memory per stream: daphne's resident set while N streams play, over its size just before.
        # Python keeps freed memory, so a later pass at the same N reuses earlier growth; the largest
        # growth over the passes is reported.
        rss_before, rss_peak, sampling = self.daphne_rss_kib(), [0], asyncio.Event()
        sampler = asyncio.create_task(self._sample_rss(rss_peak, sampling))
        cpu_before, wall_before, own_before = self.daphne_cpu_s(), time.perf_counter(), time.process_time()
        await asyncio.gather(*(c.open() for c in clients))
        timeout = seconds * 4 + 30
        await asyncio.wait_for(asyncio.gather(*(c.mark_event.wait() for c in clients)), timeout)
        sampling.set()
        await sampler
        wall = time.perf_counter() - wall_before
        cpu_share = (self.daphne_cpu_s() - cpu_before) / wall
        client_share = (time.process_time() - own_before) / wall
        gaps, drifts, frames = [], [], 0
        for client in clients:
            g, drift, n = audio_gaps(client)
            gaps += g
            drifts.append(drift)
            frames += n
        # Steady state: only while all N streams are playing (after the last one started).
        audio = [[t for t, is_audio in c.arrivals if is_audio] for c in clients]
        window = (max(a[0] for a in audio), min(a[-1] for a in audio))
        steady = [b - a for times in audio for a, b in itertools.pairwise(times)
                  if a >= window[0] and b <= window[1]]
        steady_jitter = [abs(g - FRAME_S) for g in steady]
        await asyncio.gather(*(c.close() for c in clients))
        jitter = [abs(g - FRAME_S) for g in gaps]
        return {
            "streams": count, "seconds": seconds, "frames": frames,
            "gap_p50": percentile(gaps, 50), "gap_p99": percentile(gaps, 99), "gap_max": max(gaps),
            "jit_p50": percentile(jitter, 50), "jit_p99": percentile(jitter, 99), "jit_max": max(jitter),
            "drift_max": max(abs(d) for d in drifts), "cpu": cpu_share, "client_cpu": client_share,
            "rss_before_kib": rss_before, "rss_growth_kib": max(0, rss_peak[0] - rss_before),
            "steady_s": max(0.0, window[1] - window[0]), "steady_gaps": len(steady),
            "steady_p99": percentile(steady_jitter, 99) if steady else float("nan"),
            "steady_max": max(steady_jitter) if steady else float("nan"),
        }

    # --- (c) speak -> first frame ------------------------------------------------------------------
    async def latency(self, speaks: int) -> dict:
        from calls import services
        from calls.media import control as streams

        await asyncio.to_thread(self.set_tts_ms, 200)
        (call, token), = await asyncio.to_thread(self.new_calls, 1, None)
        client = self.client_for(call, token)
        await client.open()
        while not await asyncio.to_thread(streams.has_live_stream, str(call.id)):
            await asyncio.sleep(0.01)
        pings, first_any, first_audio, returned = [], [], [], []
        for index in range(speaks):
            if self.left() < 20:
                break
            rtt = await asyncio.to_thread(streams.ping_stream, str(call.id))
            pings.append(rtt)
            seen = len(client.arrivals)
            marks = client.marks
            client.mark_event.clear()
            started = time.perf_counter()
            await asyncio.to_thread(services.speak, str(call.id), f"Latency probe number {index}")
            returned.append(time.perf_counter() - started)
            while client.marks == marks:
                await asyncio.wait_for(client.mark_event.wait(), 10)
            new = client.arrivals[seen:]
            first_any.append(new[0][0] - started)
            first_audio.append(next(t for t, is_audio in new if is_audio) - started)
        await client.close()
        p50_ping = statistics.median(pings)
        return {
            "n": len(pings),
            "ping": (p50_ping, percentile(pings, 95)),
            "returned": (statistics.median(returned), percentile(returned, 95)),
            "first_any": (statistics.median(first_any), percentile(first_any, 95)),
            "first_audio": (statistics.median(first_audio), percentile(first_audio, 95)),
        }


def ms(value: float) -> str:
    return f"{value * 1000:.2f}"


async def run(bench: Bench) -> None:
    counts = [int(n) for n in bench.args.streams.split(",")]
    best: dict[int, dict] = {}
    growth: dict[int, int] = {}
    for _ in range(bench.args.passes):  # passes interleaved, so a load spike hits one pass of each
        for count in counts:
            if bench.left() < 40 + (bench.args.drift_seconds or 0):
                print(f"(skipping a {count}-stream pass: time budget)")
                continue
            result = await bench.pacing(count)
            growth[count] = max(growth.get(count, 0), result["rss_growth_kib"])
            if count not in best or result["jit_p99"] < best[count]["jit_p99"]:
                best[count] = result
            await asyncio.sleep(2.5)  # let the previous run's streams close and their calls end
    results = [best[count] for count in counts if count in best]
    drift_run = None
    if bench.args.drift_seconds and bench.left() > bench.args.drift_seconds + 40:
        drift_run = await bench.pacing(1, bench.args.drift_seconds)
    latency = await bench.latency(bench.args.speaks)

    print(f"\nMachine: nproc={os.cpu_count()}, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, websockets {websockets.__version__}; "
          f"database {bench.database_url.split(':', 1)[0]}, Redis channel layer\n")
    print(f"(b) Outbound pacing, one daphne process, {bench.args.seconds:g} s utterance per stream, best of "
          f"{bench.args.passes} passes by p99 jitter (ideal: every gap 20.00 ms, jitter 0)\n")
    print("| streams | audio frames | gap p50 ms | gap p99 ms | gap max ms | jitter p50 ms | jitter p99 ms "
          "| jitter max ms | max drift ms | p99 jitter / 1-stream | CPU daphne / clients (1 core = 100 %) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = next((r["jit_p99"] for r in results if r["streams"] == 1), None)
    for r in results:
        ratio = f"{r['jit_p99'] / base:.2f}" if base else "n/a"
        print(f"| {r['streams']} | {r['frames']} | {ms(r['gap_p50'])} | {ms(r['gap_p99'])} | {ms(r['gap_max'])} "
              f"| {ms(r['jit_p50'])} | {ms(r['jit_p99'])} | {ms(r['jit_max'])} | {ms(r['drift_max'])} | {ratio} "
              f"| {r['cpu'] * 100:.0f} % / {r['client_cpu'] * 100:.0f} % |")
    if drift_run is not None:
        r = drift_run
        print(f"\nOne stream, {r['seconds']:g} s utterance ({r['frames']} frames): drift {ms(r['drift_max'])} ms, "
              f"gap p50 {ms(r['gap_p50'])} / p99 {ms(r['gap_p99'])} / max {ms(r['gap_max'])} ms, "
              f"jitter p99 {ms(r['jit_p99'])} ms")
    print("\nCPU and memory per stream (daphne process; CPU over the whole run incl. admission and TTS start; "
          "memory = largest resident-set growth while the N streams played, over the size just before):\n")
    print("| streams | CPU % of a core | CPU per stream % | RSS before MiB | RSS growth MiB | RSS per stream KiB |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in results:
        n, g = r["streams"], growth.get(r["streams"], 0)
        print(f"| {n} | {r['cpu'] * 100:.0f} | {r['cpu'] * 100 / n:.2f} | {r['rss_before_kib'] / 1024:.0f} "
              f"| {g / 1024:.1f} | {g / n:.0f} |")
    print("\nSteady state only (gaps while all N streams were playing, after the last one started):\n")
    print("| streams | window s | gaps | jitter p99 ms | jitter max ms | p99 / 1-stream |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = next((r["steady_p99"] for r in results if r["streams"] == 1), None)
    for r in results:
        ratio = f"{r['steady_p99'] / base:.2f}" if base else "n/a"
        print(f"| {r['streams']} | {r['steady_s']:.1f} | {r['steady_gaps']} | {ms(r['steady_p99'])} "
              f"| {ms(r['steady_max'])} | {ratio} |")
    print(f"\n(c) speak -> first frame, {latency['n']} speaks from another process, fake TTS answering "
          "instantly (baseline: ping round trip to the consumer, same path, no speech work)\n")
    print("| measure | p50 ms | p95 ms | p50 / ping p50 |")
    print("|---|---:|---:|---:|")
    base = latency["ping"][0]
    for label, key in (("ping (baseline): channel-layer round trip to the consumer", "ping"),
                       ("`speak()` returns (DB transaction + acknowledged hand-off)", "returned"),
                       ("first frame on the socket (keep-alive while TTS starts)", "first_any"),
                       ("first frame of the utterance's audio", "first_audio")):
        p50, p95 = latency[key]
        print(f"| {label} | {ms(p50)} | {ms(p95)} | {p50 / base:.2f} |")
    print(f"\ntotal bench time {time.monotonic() - bench.started:.0f} s")


def serve_fakes() -> None:
    """Child process: the fake Twilio REST API and fake OpenAI, driven by lines on stdin."""
    from tests.fakes.openai import FakeOpenAI
    from tests.fakes.twilio import FakeTwilio, twilio_config

    twilio, openai = FakeTwilio().start(), FakeOpenAI().start()
    print(json.dumps({"twilio": twilio_config(twilio), "tts": openai.tts_config(),
                      "streaming": openai.streaming_config()}), flush=True)
    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if command == "tts_ms":
            openai.tts_ms = int(value)
        print("ok", flush=True)
    openai.stop()
    twilio.stop()


def main() -> None:
    if sys.argv[1:] == ["--serve-fakes"]:
        serve_fakes()
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", default="1,32,128")
    parser.add_argument("--seconds", type=float, default=6.0, help="utterance length per stream")
    parser.add_argument("--speaks", type=int, default=30)
    parser.add_argument("--passes", type=int, default=2, help="pacing passes per stream count; best kept")
    parser.add_argument("--drift-seconds", type=float, default=60.0, help="one long utterance (0: skip)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    bench = Bench(args)
    try:
        bench.start()
        asyncio.run(asyncio.wait_for(run(bench), bench.left()))
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
