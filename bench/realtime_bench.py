"""Realtime voice: how much our bridge adds between the carrier and the model, and 64 calls at once.

    .venv/bin/python bench/realtime_bench.py [--calls 64] [--turns 20] [--barge-ins 10] [--workers 2]

Needs PostgreSQL and Redis on 127.0.0.1 (a throwaway database, Redis db 12), like media_bench.py. In a
child process: the fake Twilio REST API and the fake OpenAI Realtime server (GA protocol,
``tests/fakes/openai_realtime.py``) with timestamps on (``perf_counter`` = CLOCK_MONOTONIC, the same
clock in every process). This script plays Twilio's side of the media streams.

**Ours**: ``voicecall serve --no-worker --workers W`` with ``realtime.enabled``. **Floor**, in the same
run, interleaved: a minimal asyncio relay (``--relay`` mode of this script, one process) that opens the
same realtime session on ``start``, forwards each caller frame as an append at once, sends each model
audio delta on as Twilio frames at once and answers ``speech_started`` with a ``clear`` -- no database,
no pacing, no marks. The differences are what our bridge adds.

1. **caller frame -> model**: one stream sends 250 marked caller frames at 50 a second; the fake notes
   when each arrives in an ``input_audio_buffer.append``.
2. **model audio -> caller**: ``--turns`` caller turns (200 ms of audio each, then quiet until the
   answer has played); from the fake sending an answer's first audio delta to its first frame
   arriving at the caller.
3. **barge-in -> clear**: ``--barge-ins`` times, during a 5 s answer, the fake reports
   ``speech_started``; until the ``clear`` reaches the caller.
4. **load**: ``--calls`` realtime calls at once (6 s greeting from the model each, caller audio 50
   frames/s forwarded to the model), outbound frame gaps at the caller, CPU per call -- against the
   media floor of ``media_bench.py`` (paced prebuilt frames) in the same run.
5. **pcmu vs pcm**: the per-frame work our side would do for the model's ``audio/pcm`` (24 kHz) format
   -- mu-law -> PCM -> 24 kHz up, 24 kHz -> 8 kHz -> mu-law down, with ``providers/audio.py`` -- against
   passing ``audio/pcmu`` through (nothing).

Prints Markdown for bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import websockets
from bench_support import (
    admin_connect,
    cpu_model,
    free_port,
    percentile,
    processes_cpu_s,
    release_throwaway_stores,
    stop_process,
    wait_for_port,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

FRAME_S = 0.020
QUIET = bytes([0x7F]) * 160


def marked_frame(stream: int, seq: int) -> bytes:
    return (b"\x01" + struct.pack(">HI", stream, seq) + b"\x01" + QUIET)[:160]


class Caller:
    """Twilio's side of one stream: arrival times of audio frames by level byte, and of clears."""

    def __init__(self, url: str, call_sid: str, token: str, stream_sid: str):
        self.url, self.call_sid, self.token, self.stream_sid = url, call_sid, token, stream_sid
        self.first_by_level: dict[int, float] = {}
        self.clears: list[float] = []
        self.audio_times: list[float] = []
        self.ws = None
        self.reader: asyncio.Task | None = None

    async def open(self) -> None:
        from media_bench import start_frames

        self.ws = await websockets.connect(self.url, max_size=2**20, compression=None, open_timeout=60)
        for frame in start_frames("twilio", self.stream_sid, self.call_sid, self.token):
            await self.ws.send(frame)
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                now = time.perf_counter()
                if raw.startswith('{"event":"media"'):
                    payload = raw[raw.index('"payload":"') + 11:]
                    level = base64.b64decode(payload[:4])[0]
                    if level != 0xFF:
                        self.audio_times.append(now)
                        self.first_by_level.setdefault(level, now)
                elif '"clear"' in raw:
                    self.clears.append(now)
        except websockets.ConnectionClosed:
            pass

    async def send_audio(self, frames: list[bytes]) -> list[float]:
        """Send frames at 50 a second (deadline-paced); returns when each was sent."""
        from media_bench import caller_frame_parts

        loop = asyncio.get_running_loop()
        sent, next_at = [], loop.time()
        for index, frame in enumerate(frames):
            prefix, middle, suffix = caller_frame_parts("twilio", self.stream_sid, base64.b64encode(frame).decode())
            sent.append(time.perf_counter())
            await self.ws.send(f"{prefix}{index + 2}{middle}{index + 1}{suffix}")
            next_at += FRAME_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))
        return sent

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.wait([self.reader], timeout=5)


class Fakes:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve-fakes"], cwd=REPO, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        self.info = json.loads(self.proc.stdout.readline())

    def command(self, **command) -> dict:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    async def acommand(self, **command) -> dict:
        return await asyncio.to_thread(self.command, **command)


def distinct_texts(count: int, prefix: str) -> list[str]:
    """Texts whose fake audio levels differ, so the caller can tell the answers apart."""
    from tests.fakes.openai_realtime import level_byte

    texts, levels, n = [], set(), 0
    while len(texts) < count:
        n += 1
        text = f"{prefix} number {n}"
        if level_byte(text) not in levels:
            levels.add(level_byte(text))
            texts.append(text)
    return texts


class Bench:
    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="realtime-bench-"))
        self.db_name = f"vc_realtime_bench_{os.getpid()}"
        self.database_url = f"{args.pg_url.rsplit('/', 1)[0]}/{self.db_name}"
        os.environ.update({"DATABASE_URL": self.database_url, "REDIS_URL": args.redis_url,
                           "DJANGO_SECRET_KEY": "realtime-bench-secret-" + "x" * 30,
                           "VOICECALL_VAR_DIR": str(self.tmp / "var"), "DJANGO_SETTINGS_MODULE": "voicecall_site.settings"})
        self.admin, self.db_created, self.procs, self.seq = None, False, [], 0

    def start(self) -> None:
        import redis

        self.admin = admin_connect(self.args.pg_url)
        self.admin.execute(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        redis.Redis.from_url(self.args.redis_url).flushdb()
        self.fakes = Fakes()
        self.port = free_port()
        document = {**self.fakes.info["twilio"], "maxConcurrentCalls": 10000, "serve": {"port": self.port},
                    "realtime": {**self.fakes.info["realtime"], "idleHangupMs": 600000},
                    "streaming": {"maxConnections": 1024, "maxPendingConnections": 1024,
                                  "maxPendingConnectionsPerIp": 1024, "preStartTimeoutMs": 60000}}
        config = self.tmp / "voicecall.json5"
        config.write_text(json.dumps(document))
        os.environ["VOICECALL_CONFIG"] = str(config)
        env = {**os.environ, "PYTHONPATH": str(REPO), "VOICECALL_CELERY_EAGER": "1", "VOICECALL_LOG_LEVEL": "WARNING"}
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=REPO, env=env, check=True)
        self.serve = subprocess.Popen([sys.executable, "manage.py", "voicecall", "serve", "--no-worker", "--workers",
                                       str(self.args.workers)], cwd=REPO, env=env,
                                      stdout=(self.tmp / "serve.log").open("w"), stderr=subprocess.STDOUT)
        self.procs.append(self.serve)
        wait_for_port(self.port, self.serve)
        self.relay_port = free_port()
        self.relay = subprocess.Popen([sys.executable, __file__, "--relay", str(self.relay_port),
                                       self.fakes.info["realtime"]["providers"]["openai"]["baseUrl"],
                                       self.fakes.info["realtime"]["providers"]["openai"]["apiKey"]], cwd=REPO,
                                      env={**os.environ, "PYTHONPATH": str(REPO)})
        self.procs.append(self.relay)
        wait_for_port(self.relay_port, self.relay)
        self.floor_port = free_port()
        self.floor = subprocess.Popen([sys.executable, str(REPO / "bench" / "media_bench.py"), "--floor",
                                       str(self.floor_port), "twilio"], cwd=REPO,
                                      env={**os.environ, "PYTHONPATH": str(REPO), "MEDIA_BENCH_SECONDS": "6"})
        self.procs.append(self.floor)
        wait_for_port(self.floor_port, self.floor)
        time.sleep(1.0)
        import django

        django.setup()

    def stop(self) -> None:
        fakes = getattr(self, "fakes", None)
        if fakes is not None and fakes.proc.poll() is None:
            fakes.proc.stdin.close()
            try:
                fakes.proc.wait(10)
            except subprocess.TimeoutExpired:
                fakes.proc.kill()
        for proc in reversed(self.procs):
            stop_process(proc)
        release_throwaway_stores(admin=self.admin, db_name=self.db_name, db_created=self.db_created,
                                 redis_url=self.args.redis_url)

    def daphne_pids(self) -> list[int]:
        out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(self.serve.pid)], capture_output=True, text=True).stdout
        return [int(line.split()[0]) for line in out.splitlines() if "daphne" in line]

    def new_calls(self, count: int, greeting: str) -> list:
        from django.utils import timezone

        from calls.media import control as streams
        from calls.models import Call

        made = []
        for _ in range(count):
            call = Call.objects.create(
                provider="twilio", provider_call_id="CA" + uuid.uuid4().hex, direction="inbound", mode="conversation",
                state="listening", from_number="+15550001000", to_number="+15550002000", initial_message=greeting,
                initial_message_delivered=not greeting, answered_at=timezone.now())
            made.append((call, streams.mint_stream_token(call)))
        return made

    async def caller(self, floor: bool, greeting: str = "") -> Caller:
        self.seq += 1
        if floor:
            caller = Caller(f"ws://127.0.0.1:{self.relay_port}/", f"CA{self.seq:032x}", "floor", f"MZ{self.seq:032x}")
        else:
            (call, token), = await asyncio.to_thread(self.new_calls, 1, greeting)
            caller = Caller(f"ws://127.0.0.1:{self.port}/voice/stream", call.provider_call_id, token,
                            f"MZ{self.seq:032x}")
        await caller.open()
        return caller

    # --- 1-3: one stream ---------------------------------------------------------------------------
    async def latencies(self, floor: bool) -> dict:
        fakes = self.fakes
        await fakes.acommand(cmd="reset", audio_per_turn=10**9)
        caller = await self.caller(floor)
        await asyncio.sleep(1.0)  # the session is open
        frames = [marked_frame(self.seq, n) for n in range(250)]
        sent = await caller.send_audio(frames)
        await asyncio.sleep(0.5)
        arrived = (await fakes.acommand(cmd="dump"))["frame_times"]
        to_model = [arrived[f[:8].hex()] - t for f, t in zip(frames, sent, strict=True) if f[:8].hex() in arrived]

        texts = distinct_texts(self.args.turns, "Answer")
        await fakes.acommand(cmd="reset", audio_per_turn=1600, script=[f"caller turn {n}" for n in range(len(texts))],
                             replies=texts, reply_ms=200)
        for _ in texts:
            await caller.send_audio([QUIET] * 10)
            await asyncio.sleep(0.6)  # the 200 ms answer plays out before the next turn
        timing = await fakes.acommand(cmd="dump")
        to_caller = [caller.first_by_level[level] - t for text, t, level in timing["first_deltas"]
                     if level in caller.first_by_level]

        barges = []
        long_texts = distinct_texts(self.args.barge_ins, "A very long answer")
        for text in long_texts:
            await fakes.acommand(cmd="reset", audio_per_turn=1600, script=["go on"], replies=[text], reply_ms=5000)
            await caller.send_audio([QUIET] * 10)
            deadline = time.monotonic() + 5
            while len([t for t in caller.audio_times if t > time.perf_counter() - 0.3]) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            clears_before = len(caller.clears)  # (the floor also clears on the turn's own speech_started)
            barge_sent = (await fakes.acommand(cmd="barge"))["at"]
            deadline = time.monotonic() + 5
            while len(caller.clears) == clears_before and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            if len(caller.clears) > clears_before:
                barges.append(caller.clears[clears_before] - barge_sent)
            await asyncio.sleep(0.3)
        await caller.close()
        return {"to_model": to_model, "to_caller": to_caller, "barge": barges}

    # --- 4: many calls -----------------------------------------------------------------------------
    async def load(self, count: int, floor: bool) -> dict:
        from media_bench import LoopLag, StreamClient, audio_gaps

        await self.fakes.acommand(cmd="reset", audio_per_turn=10**9, reply_ms=6000)
        if floor:
            clients = [StreamClient(f"ws://127.0.0.1:{self.floor_port}/voice/stream", f"CA{n:032x}", "floor",
                                    f"MZ{n:032x}") for n in range(count)]
            pids = [self.floor.pid]
        else:
            calls = await asyncio.to_thread(self.new_calls, count, "Realtime load greeting")
            clients = [StreamClient(f"ws://127.0.0.1:{self.port}/voice/stream", call.provider_call_id, token,
                                    f"MZ{uuid.uuid4().hex}") for call, token in calls]
            pids = self.daphne_pids()
        cpu_before, wall_before = processes_cpu_s(pids), time.perf_counter()
        print(f"load round ({'floor' if floor else 'ours'}) starting, server pids {pids}", file=sys.stderr, flush=True)
        with LoopLag() as lag:
            await asyncio.gather(*(c.open() for c in clients))
            # 6 s of audio each: done when every caller has it all (realtime sends progress marks too).
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and any(
                    sum(1 for _, is_audio in c.arrivals if is_audio) < 295 for c in clients):
                await asyncio.sleep(0.1)
        wall = time.perf_counter() - wall_before
        cpu = (processes_cpu_s(pids) - cpu_before) / wall
        await asyncio.gather(*(c.close() for c in clients))
        gaps, frames = [], 0
        for client in clients:
            g, _, _, n = audio_gaps(client)
            gaps += g
            frames += n
        firsts = [f for f in (c.first_audio_s() for c in clients) if f is not None]
        return {"frames": frames, "gap_p50": percentile(gaps, 50), "gap_p99": percentile(gaps, 99),
                "gap_max": max(gaps), "cpu": cpu, "first_p50": percentile(firsts, 50), "first_max": max(firsts),
                "lag_p99": percentile(lag.lags, 99), "lag_max": max(lag.lags, default=0.0)}


def transcode_cost(frames: int = 5000) -> tuple[float, float]:
    """Seconds per 20 ms frame, both directions, of the audio/pcm path (passthrough costs nothing)."""
    import numpy as np

    from providers import audio

    mulaw = bytes(range(160))
    pcm24 = (np.sin(np.arange(480) / 7) * 8000).astype("<i2").tobytes()
    up, down = audio.StreamingResampler(8000, 24000), audio.StreamingResampler(24000, 8000)
    started = time.perf_counter()
    for _ in range(frames):
        _ = base64.b64encode(up.process(audio.mulaw_to_pcm16(base64.b64decode(base64.b64encode(mulaw)))))
        _ = base64.b64encode(audio.pcm16_to_mulaw(down.process(base64.b64decode(base64.b64encode(pcm24)))))
    pcm_path = (time.perf_counter() - started) / frames
    started = time.perf_counter()
    payload = base64.b64encode(mulaw).decode()
    for _ in range(frames):
        _ = '{"type":"input_audio_buffer.append","audio":"' + payload + '"}'
    return pcm_path, (time.perf_counter() - started) / frames


def ms(value: float) -> str:
    return f"{value * 1000:.1f}"


async def run(bench: Bench) -> None:
    lat = {True: {"to_model": [], "to_caller": [], "barge": []}, False: {"to_model": [], "to_caller": [], "barge": []}}
    for floor in (True, False):
        if not bench.args.only_load:
            lat[floor] = await bench.latencies(floor)
    load = {}
    for floor in (True, False):
        load[floor] = await bench.load(bench.args.calls, floor)
        await asyncio.sleep(3)
    pcm_path, passthrough = transcode_cost()

    print(f"\nMachine: nproc={os.cpu_count()}, {cpu_model()}; ours = `voicecall serve --workers {bench.args.workers}` "
          f"with realtime.enabled (PostgreSQL, Redis channel layer); floor = minimal asyncio relay, one process; "
          f"load average at the end {' / '.join(f'{x:.1f}' for x in os.getloadavg())}\n")
    print("| path (one stream) | floor p50 / p95 ms | ours p50 / p95 ms | ours - floor p50 ms | n |")
    print("|---|---|---|---:|---:|")
    for label, key in (("caller frame -> append at the model", "to_model"),
                       ("model's first audio delta -> first frame at the caller", "to_caller"),
                       ("barge-in speech_started -> clear at the caller", "barge")):
        f, o = lat[True][key], lat[False][key]
        if not f or not o:
            print(f"| {label} | (no samples: floor {len(f)}, ours {len(o)}) | | | |")
            continue
        print(f"| {label} | {ms(percentile(f, 50))} / {ms(percentile(f, 95))} | {ms(percentile(o, 50))} / "
              f"{ms(percentile(o, 95))} | {(percentile(o, 50) - percentile(f, 50)) * 1000:+.1f} | {len(o)} |")
    print(f"\n| {bench.args.calls} calls at once | audio frames | gap p50 / p99 / max ms | p99 - floor p99 ms "
          "| start -> first audio p50 / max ms | CPU % of a core | per call % | load-gen lag p99 / max ms |")
    print("|---|---:|---|---:|---|---:|---:|---|")
    for floor in (True, False):
        r = load[floor]
        diff = "" if floor else f"{(r['gap_p99'] - load[True]['gap_p99']) * 1000:+.1f}"
        print(f"| {'media floor (paced, no model)' if floor else 'ours (realtime)'} | {r['frames']} | {ms(r['gap_p50'])} / "
              f"{ms(r['gap_p99'])} / {ms(r['gap_max'])} | {diff} | {ms(r['first_p50'])} / {ms(r['first_max'])} "
              f"| {r['cpu'] * 100:.0f} | {r['cpu'] * 100 / bench.args.calls:.2f} | {ms(r['lag_p99'])} / {ms(r['lag_max'])} |")
    print(f"\naudio/pcm (24 kHz) path per 20 ms frame, both directions: {pcm_path * 1e6:.1f} µs; audio/pcmu "
          f"passthrough: {passthrough * 1e6:.2f} µs ({pcm_path / passthrough:.0f}x)")


def relay(port: int, base_url: str, api_key: str) -> None:
    """The floor: carrier <-> model with nothing in between."""
    from providers import realtime as rt

    settings = rt.RealtimeSettings(url=f"{base_url}/realtime?model=gpt-realtime", api_key=api_key)

    async def handler(carrier) -> None:
        model = await websockets.connect(settings.url, additional_headers={"Authorization": f"Bearer {api_key}"},
                                         max_size=2**22, compression=None)
        await model.send(json.dumps(rt.session_update(settings)))
        stream_sid = "MZ"

        async def down() -> None:
            async for raw in model:
                event = json.loads(raw)
                kind = event.get("type")
                if kind == "response.output_audio.delta":
                    audio = base64.b64decode(event["delta"])
                    for start in range(0, len(audio), 160):
                        await carrier.send('{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"'
                                           + base64.b64encode(audio[start:start + 160]).decode() + '"}}')
                elif kind == "input_audio_buffer.speech_started":
                    await carrier.send('{"event":"clear","streamSid":"' + stream_sid + '"}')

        task = asyncio.get_running_loop().create_task(down())
        try:
            async for raw in carrier:
                message = json.loads(raw)
                if message.get("event") == "start":
                    stream_sid = message["streamSid"]
                elif message.get("event") == "media":
                    await model.send('{"type":"input_audio_buffer.append","audio":"' + message["media"]["payload"] + '"}')
        except websockets.ConnectionClosed:
            pass
        finally:
            task.cancel()
            await model.close()

    async def main() -> None:
        async with websockets.serve(handler, "127.0.0.1", port, compression=None):
            await asyncio.Future()

    asyncio.run(main())


def serve_fakes() -> None:
    from tests.fakes.openai_realtime import FakeRealtime, level_byte
    from tests.fakes.twilio import FakeTwilio, twilio_config

    twilio, model = FakeTwilio().start(), FakeRealtime().start()
    model.timing = True
    print(json.dumps({"twilio": twilio_config(twilio), "realtime": model.realtime_config()}), flush=True)
    for line in sys.stdin:
        command = json.loads(line)
        answer: dict = {"ok": True}
        if command["cmd"] == "reset":
            model.reset()
            model.frame_times.clear()
            model.first_delta_times.clear()
            model.audio_per_turn = command.get("audio_per_turn", 1600)
            model.script.extend(command.get("script", []))
            model.replies.extend(command.get("replies", []))
            model.reply_ms = command.get("reply_ms", 600)
        elif command["cmd"] == "dump":
            answer = {"frame_times": {k.hex(): v for k, v in model.frame_times.items()},
                      "first_deltas": [(text, t, level_byte(text)) for text, t in model.first_delta_times]}
        elif command["cmd"] == "barge":
            model.barge_in()
            answer = {"at": model.barge_times[-1] if model.barge_times else time.perf_counter()}
        print(json.dumps(answer), flush=True)
    model.stop()
    twilio.stop()


def main() -> None:
    if sys.argv[1:] == ["--serve-fakes"]:
        serve_fakes()
        return
    if sys.argv[1:2] == ["--relay"]:
        relay(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=64)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--barge-ins", type=int, default=10)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--only-load", action="store_true", help="skip the one-stream latencies (for profiling)")
    parser.add_argument("--pg-url", default=os.environ.get("BENCH_PG_URL", "postgres://postgres@127.0.0.1:5432/postgres"))
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    bench = Bench(parser.parse_args())
    try:
        bench.start()
        asyncio.run(asyncio.wait_for(run(bench), 600))
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
