"""Soak test: minutes of mixed traffic and hostile clients against a real server, on loopback only.

    python bench/soak.py --bundles bundles --duration 300          # the long run (the benchmark)
    python bench/soak.py --bundles DIR --duration 30               # the CI version (tests/test_soak.py)

It starts the server itself (`python -m uvicorn app.main:factory` on 127.0.0.1, a free port, the
interpreter running this script) and, until --duration seconds or --max-requests requests:
- --concurrency clients send mixed traffic over every endpoint (fill-mask, next-sentence, classify,
  attention, /v1/models, /metrics) in each loaded model's language, enough to keep the server saturated;
- --hostile clients cycle through what an attacker or a broken client sends: bodies over the size limit
  (declared and chunked), malformed JSON, a wrong content type, invalid UTF-8, lone surrogates, a huge
  top_k, 4,000-character texts made only of [MASK], a sender too slow for the body timeout, and clients
  that hang up mid-body or before their answer;
- a probe asks /healthz every 50 ms: its latency is the event loop's lag.

It reports requests served, answers by status (and per hostile kind), p50/p99 latency, the /healthz p99,
and the server's resident memory after the warm-up and at the end. Criteria (booleans in the report, and
the exit status): no 5xx other than the designed 503/504, every hostile request refused with a 4xx (or
503), resident memory grown by less than 10%, and the server ready afterwards. The last line printed is
the JSON report {"bench": "soak", ...}; it compares against nothing external.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from serve import free_port  # bench/serve.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # loopback only: nothing here may send traffic anywhere else
DESIGNED_5XX = {503, 504}
TEXTS = {
    "en": [
        "the movie was [MASK] and I loved it.",
        "The capital of France is [MASK].",
        "a [MASK] day at the [MASK].",
        "She went to the store to buy [MASK].",
    ],
    "ko": ["오늘은 날씨가 [MASK] 좋다.", "이 영화 정말 [MASK].", "나는 [MASK]에 갔다."],
}
PAIRS = {
    "en": [("I went to the store.", "I bought some milk."), ("It rained.", "The streets were wet.")],
    "ko": [("나는 가게에 갔다.", "우유를 샀다."), ("비가 왔다.", "길이 젖었다.")],
}
REVIEWS = {
    "en": ["A wonderful, moving film.", "Dull and far too long.", "not bad at all", "the worst"],
    "ko": ["정말 재미있는 영화였다.", "지루했다.", "배우들 연기가 좋았다."],
}


# --- the server -----------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextlib.contextmanager
def server(bundles: str, port: int, env: dict[str, str], log: Path):
    environment = {**os.environ, "POCKETBERT_BUNDLES": bundles, **env}
    command = [sys.executable, "-m", "uvicorn", "app.main:factory", "--factory", "--host", HOST]
    command += ["--port", str(port), "--no-access-log", "--log-level", "warning"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = f"http://{HOST}:{port}"
        for _ in range(1200):  # bounded: 120 s
            if proc.poll() is not None:
                raise SystemExit(f"the server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.1)
        else:
            raise SystemExit("the server never became ready")
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# --- traffic ---------------------------------------------------------------------------------------------
@dataclass
class Tally:
    """Everything the run observed."""

    statuses: Counter = field(default_factory=Counter)  # normal traffic: status (or error name) -> count
    hostile: dict[str, Counter] = field(default_factory=dict)  # kind -> status -> count
    latencies: list[float] = field(default_factory=list)  # seconds, normal traffic
    healthz: list[float] = field(default_factory=list)  # seconds
    requests: int = 0


def normal_request(models: list[dict[str, Any]], rng: random.Random) -> tuple[str, str, Any]:
    """(method, path, json body) of one request of the mixed traffic."""
    model = rng.choice(models)
    language = model["language"] if model["language"] in TEXTS else "en"
    name = model["name"] if rng.random() < 0.5 else None  # half named, half routed by language
    choices = ["fill-mask", "next-sentence"] + [t for t in ("classify", "attention") if t in model["tasks"]]
    weights = {"fill-mask": 4, "next-sentence": 2, "classify": 4, "attention": 1}
    roll = rng.random()
    if roll < 0.04:
        return "GET", "/v1/models", None
    if roll < 0.06:
        return "GET", "/metrics", None
    task = rng.choices(choices, [weights[c] for c in choices])[0]
    body: dict[str, Any] = {"model": name} if name else {}
    if task == "fill-mask":
        body |= {"inputs": rng.sample(TEXTS[language], rng.randint(1, 3)), "top_k": rng.randint(1, 10)}
    elif task == "next-sentence":
        body |= {"pairs": [list(p) for p in rng.sample(PAIRS[language], rng.randint(1, 2))]}
    elif task == "classify":
        body |= {"inputs": rng.choices(REVIEWS[language], k=rng.randint(1, 8))}
    else:
        body |= {"text": rng.choice(REVIEWS[language])}
    return "POST", f"/{task}", body


async def mixed_client(url: str, models: list, stop: Callable[[], bool], tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        while not stop():
            method, path, body = normal_request(models, rng)
            began = time.perf_counter()
            try:
                response = await client.request(method, path, json=body)
                tally.statuses[response.status_code] += 1
                if response.status_code < 400:
                    tally.latencies.append(time.perf_counter() - began)
                if response.status_code == 503:
                    await asyncio.sleep(min(1.0, float(response.headers.get("retry-after", "1"))))
            except httpx.HTTPError as exc:
                tally.statuses[type(exc).__name__] += 1
            tally.requests += 1


def healthz_probe(url: str, stop: Callable[[], bool], tally: Tally) -> None:
    """Ask /healthz every 50 ms. A thread of its own, not a task on this script's busy event loop, so the
    latency measured is the server's (its event loop's lag), not this client's."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop():
            began = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                if client.get("/healthz").status_code == 200:
                    tally.healthz.append(time.perf_counter() - began)
            time.sleep(0.05)


# --- hostile clients (raw sockets: they break HTTP on purpose) -------------------------------------------
async def raw_exchange(
    port: int, head: bytes, parts: list[bytes], pause: float = 0.0, hang_up: bool = False
) -> int | None:
    """Send head, then the body parts (pause seconds apart) while listening for an early answer (a 413 or
    408 comes before the body is complete); return its status, or None when the client hangs up on
    purpose or the server closed without an answer."""
    reader, writer = await asyncio.open_connection(HOST, port)
    answer = asyncio.ensure_future(reader.readline())
    try:
        writer.write(head)
        for part in parts:
            if pause:
                await asyncio.sleep(pause)
            if answer.done():
                break
            writer.write(part)
            try:
                await writer.drain()
            except (ConnectionResetError, BrokenPipeError):
                break  # the server answered early and closed
        if hang_up:
            return None
        line = await asyncio.wait_for(answer, 60)
        return int(line.split()[1]) if line.startswith(b"HTTP/") else None
    except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError):
        return None
    finally:
        answer.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def _head(path: str, content_type: str | None, length: int | None, chunked: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def hostile_kinds(
    port: int, max_body: int, body_timeout: float
) -> dict[str, Callable[[], Awaitable[int | None]]]:
    """Each kind of hostile request, as a coroutine factory answering the status it got."""
    json_type = "application/json"

    def send(body: bytes, path: str = "/classify", content_type: str | None = json_type, **kw: Any):
        return raw_exchange(port, _head(path, content_type, len(body)), [body], **kw)

    oversized = b'{"inputs": "' + b"a" * (max_body + 1024) + b'"}'
    chunk = b"%x\r\n" % 65536 + b"a" * 65536 + b"\r\n"
    masks = json.dumps({"inputs": "[MASK]" * 666}).encode()  # 3,996 characters of [MASK]
    slow = json.dumps({"inputs": "a slow sender"}).encode()
    return {
        "oversized_declared": lambda: send(oversized),
        "oversized_chunked": lambda: raw_exchange(
            port,
            _head("/classify", json_type, None, chunked=True),
            [chunk] * (max_body // 65536 + 2) + [b"0\r\n\r\n"],
        ),
        "malformed_json": lambda: send(b'{"inputs": ["unterminated'),
        "wrong_content_type": lambda: send(
            b"inputs=hello&top_k=1", content_type="application/x-www-form-urlencoded"
        ),
        "invalid_utf8": lambda: send(b'{"inputs": "caf\xe9 \xff"}'),
        "lone_surrogate": lambda: send(b'{"inputs": "\\ud800 [MASK]"}', path="/fill-mask"),
        "huge_top_k": lambda: send(b'{"inputs": "a [MASK].", "top_k": 1000000000}', path="/fill-mask"),
        "only_masks": lambda: send(masks, path="/fill-mask"),
        "slow_sender": lambda: raw_exchange(
            port,
            _head("/classify", json_type, len(slow)),
            [slow[i : i + 4] for i in range(0, len(slow), 4)],
            pause=body_timeout / 4,
        ),
        "hang_up_mid_body": lambda: raw_exchange(
            port, _head("/classify", json_type, 1000), [b'{"inputs": "half'], hang_up=True
        ),
        "hang_up_before_answer": lambda: send(
            json.dumps({"inputs": ["the cat [MASK] the park."] * 8}).encode(), path="/fill-mask", hang_up=True
        ),
    }


async def hostile_client(kinds: dict, stop: Callable[[], bool], tally: Tally, seed: int) -> None:
    rng = random.Random(seed)
    names = list(kinds)
    while not stop():
        kind = rng.choice(names)
        try:
            status = await kinds[kind]()
        except (OSError, asyncio.TimeoutError) as exc:
            status = type(exc).__name__
        tally.hostile.setdefault(kind, Counter())["no answer" if status is None else status] += 1
        tally.requests += 1


# --- the run ---------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(args: argparse.Namespace, url: str, pid: int, tally: Tally) -> dict[str, Any]:
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        models = (await client.get("/v1/models")).json()["models"]
    began = time.monotonic()
    deadline = began + args.duration

    def stop() -> bool:
        return time.monotonic() >= deadline or tally.requests >= args.max_requests

    kinds = hostile_kinds(port, args.max_body_bytes, args.body_timeout)
    tasks = [
        asyncio.ensure_future(mixed_client(url, models, stop, tally, i)) for i in range(args.concurrency)
    ]
    tasks += [
        asyncio.ensure_future(hostile_client(kinds, stop, tally, 1000 + i)) for i in range(args.hostile)
    ]
    probe = threading.Thread(target=healthz_probe, args=(url, stop, tally), daemon=True)
    probe.start()
    await asyncio.sleep(min(args.warmup, args.duration / 4))
    rss_start = rss_bytes(pid)
    rss_max = rss_start
    while not stop():
        await asyncio.sleep(0.5)
        rss_max = max(rss_max, rss_bytes(pid))
    done, pending = await asyncio.wait(tasks, timeout=90)  # requests in flight finish (bounded)
    probe.join(30)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    elapsed = time.monotonic() - began
    await asyncio.sleep(1.0)  # let the server settle before the last reading
    rss_end = rss_bytes(pid)
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        ready = (await client.get("/readyz")).status_code == 200
    return {"elapsed": elapsed, "rss": (rss_start, rss_end, rss_max), "ready": ready, "models": models}


def report(args: argparse.Namespace, tally: Tally, outcome: dict[str, Any]) -> dict[str, Any]:
    rss_start, rss_end, rss_max = outcome["rss"]
    every_status = Counter(tally.statuses)
    for counts in tally.hostile.values():
        every_status.update(counts)
    unexpected_5xx = {
        str(s): n
        for s, n in every_status.items()
        if isinstance(s, int) and s >= 500 and s not in DESIGNED_5XX
    }
    hostile_answers = [s for counts in tally.hostile.values() for s in counts if isinstance(s, int)]
    growth = rss_end / rss_start - 1
    criteria = {
        "no_unexpected_5xx": not unexpected_5xx,
        "no_connection_errors": all(isinstance(s, int) for s in tally.statuses),
        "hostile_refused_4xx": all(400 <= s < 500 or s == 503 for s in hostile_answers),
        "memory_growth_under_10pct": growth < 0.10,
        "ready_after": outcome["ready"],
    }
    ms = lambda seconds: None if seconds is None else round(seconds * 1000, 2)  # noqa: E731
    served = sum(n for s, n in tally.statuses.items() if isinstance(s, int) and s < 400)
    return {
        "bench": "soak",
        "duration_s": round(outcome["elapsed"], 1),
        "concurrency": args.concurrency,
        "hostile_clients": args.hostile,
        "models": [m["name"] for m in outcome["models"]],
        "requests": tally.requests,
        "served": served,
        "served_per_s": round(served / outcome["elapsed"], 1),
        "by_status": {str(k): v for k, v in sorted(tally.statuses.items(), key=str)},
        "hostile_by_kind": {k: {str(s): n for s, n in v.items()} for k, v in sorted(tally.hostile.items())},
        "unexpected_5xx": unexpected_5xx,
        "latency_ms": {
            "p50": ms(percentile(tally.latencies, 0.5)),
            "p99": ms(percentile(tally.latencies, 0.99)),
        },
        "healthz_ms": {
            "p50": ms(percentile(tally.healthz, 0.5)),
            "p99": ms(percentile(tally.healthz, 0.99)),
            "samples": len(tally.healthz),
        },
        "rss_mb": {
            "start": round(rss_start / 2**20, 1),
            "end": round(rss_end / 2**20, 1),
            "max": round(rss_max / 2**20, 1),
        },
        "memory_growth": round(growth, 4),
        "criteria": criteria,
        "passed": all(criteria.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", default="bundles", help="bundle folder(s) to serve (default: bundles)")
    parser.add_argument("--duration", type=float, default=300, help="seconds of traffic (default: 300)")
    parser.add_argument("--max-requests", type=int, default=1_000_000, help="stop after this many requests")
    parser.add_argument("--concurrency", type=int, default=64, help="clients of mixed traffic (default: 64)")
    parser.add_argument("--hostile", type=int, default=4, help="hostile clients (default: 4)")
    parser.add_argument("--warmup", type=float, default=10, help="seconds before the first memory reading")
    parser.add_argument("--max-body-bytes", type=int, default=1 << 20, help="the server's body limit")
    parser.add_argument("--body-timeout", type=float, default=2.0, help="the server's body timeout (s)")
    parser.add_argument("--ort-threads", type=int, default=None, help="onnxruntime threads per model")
    args = parser.parse_args(argv)
    env = {
        "POCKETBERT_MAX_BODY_BYTES": str(args.max_body_bytes),
        "POCKETBERT_BODY_TIMEOUT_S": str(args.body_timeout),
        **({"POCKETBERT_ORT_THREADS": str(args.ort_threads)} if args.ort_threads else {}),
    }
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="pocketbert-soak-") as tmp:
        log = Path(tmp) / "server.log"
        with server(args.bundles, free_port(), env, log) as (proc, url):
            outcome = asyncio.run(drive(args, url, proc.pid, tally))
        result = report(args, tally, outcome)
        if not result["passed"]:
            print(f"server log (tail):\n{log.read_text()[-4000:]}", file=sys.stderr)
    print(json.dumps(result))
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
