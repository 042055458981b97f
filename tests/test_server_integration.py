"""Real uvicorn on a free loopback port: concurrent requests form batches and every answer is right.

The server runs as a subprocess, exactly as deployed (`uvicorn app.main:factory --factory`, settings
from the environment). Batches are read back from /metrics; answers are checked against the engine
called directly in the test process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import load_bench

ROOT = Path(__file__).resolve().parents[1]


free_port = load_bench("serve").free_port  # a loopback port nothing listens on


def wait_until_ready(url: str, proc: subprocess.Popen, limit_s: float) -> None:
    """Poll url/readyz until it answers 200; fail with the server's output if it exits first."""
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {''.join(out for out in proc.communicate() if out)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            pytest.fail(f"the server never became ready within {limit_s:.0f} s")
        time.sleep(0.1)


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one sample in Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@contextlib.contextmanager
def uvicorn_server(bundle: Path, **env: str) -> Iterator[str]:
    port = free_port()
    environment = {
        **os.environ,
        "POCKETBERT_BUNDLES": str(bundle),
        "POCKETBERT_ORT_THREADS": "1",
        **{f"POCKETBERT_{k.upper()}": v for k, v in env.items()},
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.main:factory",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-access-log",
        ],
        cwd=ROOT,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, proc, 60)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path):
    from model.engine import Engine

    return Engine.load(tiny_bundle, intra_op_threads=1)


def test_concurrent_requests_are_batched_and_right(tiny_bundle: Path, engine) -> None:
    subjects = [
        "the cat",
        "a dog",
        "my friend",
        "the teacher",
        "this movie",
        "the bird",
        "our team",
        "the city",
    ]
    fill_texts = [f"{s} [MASK] the {o}." for s in subjects for o in ("park", "river", "old tree")]  # 24
    cls_texts = [f"{s} is {a}." for s in subjects for a in ("good", "bad")]  # 16
    pairs = [
        (f"{s} sees the park.", f"{t} likes a book.")
        for s, t in zip(subjects, reversed(subjects), strict=True)
    ]

    async def fire(url: str) -> tuple[list, list, list]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            fills = [client.post("/fill-mask", json={"inputs": t, "top_k": 3}) for t in fill_texts]
            classes = [client.post("/classify", json={"inputs": t}) for t in cls_texts]
            nsps = [
                client.post("/next-sentence", json={"pairs": {"first": a, "second": b}}) for a, b in pairs
            ]
            responses = await asyncio.gather(*fills, *classes, *nsps)
        for r in responses:
            assert r.status_code == 200, r.text
        n1, n2 = len(fills), len(fills) + len(classes)
        return responses[:n1], responses[n1:n2], responses[n2:]

    # A generous max_wait makes batches form even if the requests trickle in.
    with uvicorn_server(tiny_bundle, max_wait_ms="50", max_batch_size="16") as url:
        fills, classes, nsps = asyncio.run(fire(url))
        metrics = httpx.get(f"{url}/metrics").text

    for text, response in zip(fill_texts, fills, strict=True):
        (expected,) = engine.fill_mask([text], top_k=3)
        got = response.json()["results"][0]
        assert [p["token"] for p in got] == [p["token"] for p in expected[0]]
        np.testing.assert_allclose(
            [p["score"] for p in got], [p["score"] for p in expected[0]], rtol=1e-4, atol=1e-6
        )
    for text, response in zip(cls_texts, classes, strict=True):
        (expected,) = engine.classify([text])
        got = response.json()["results"][0]
        assert [x["label"] for x in got] == [x["label"] for x in expected]
        np.testing.assert_allclose(
            [x["score"] for x in got], [x["score"] for x in expected], rtol=1e-4, atol=1e-6
        )
    for pair, response in zip(pairs, nsps, strict=True):
        (expected,) = engine.next_sentence([pair])
        assert response.json()["results"][0]["score"] == pytest.approx(expected["score"], rel=1e-4, abs=1e-6)

    for task, requests in (("fill-mask", 24), ("classify", 16), ("next-sentence", 8)):
        batches = metric(metrics, "pocketbert_batch_size_count", model="tiny", task=task)
        sequences = metric(metrics, "pocketbert_batch_size_sum", model="tiny", task=task)
        assert sequences == requests, (task, sequences)
        assert batches < requests, (
            f"{task}: {requests} requests ran in {batches} batches: no batch of more than one"
        )
        singles = metric(metrics, "pocketbert_batch_size_bucket", model="tiny", task=task, le="1")
        assert singles < batches or batches == 1
    assert (
        metric(metrics, "pocketbert_http_requests_total", endpoint="/fill-mask", method="POST", status="200")
        == 24
    )


def test_client_that_disconnects_costs_no_batch_slot(tiny_bundle: Path) -> None:
    """A request whose client hangs up while it waits in the queue is dropped before its batch runs."""
    # max_wait 5 s: the queued request would run only after 5 s; the client leaves long before that.
    with uvicorn_server(tiny_bundle, max_wait_ms="5000", max_batch_size="64") as url:
        port = int(url.rsplit(":", 1)[1])
        body = b'{"inputs": "the cat [MASK] the park."}'
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.sendall(
                b"POST /fill-mask HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            for _ in range(400):  # bounded: until the request sits in the queue
                if (
                    metric(
                        httpx.get(f"{url}/metrics").text,
                        "pocketbert_queue_depth",
                        model="tiny",
                        task="fill-mask",
                    )
                    == 1
                ):
                    break
                time.sleep(0.01)
            else:
                pytest.fail("the request never reached the queue")
        for _ in range(400):  # bounded: until the server noticed the hang-up
            metrics = httpx.get(f"{url}/metrics").text
            if metric(metrics, "pocketbert_queue_depth", model="tiny", task="fill-mask") == 0:
                break
            time.sleep(0.01)
        assert metric(metrics, "pocketbert_batch_size_count", model="tiny", task="fill-mask") == 0
        for _ in range(100):
            metrics = httpx.get(f"{url}/metrics").text
            if metric(
                metrics, "pocketbert_http_requests_total", endpoint="/fill-mask", method="POST", status="499"
            ):
                break
            time.sleep(0.01)
        assert (
            metric(
                metrics, "pocketbert_http_requests_total", endpoint="/fill-mask", method="POST", status="499"
            )
            == 1
        )
        # and the server still answers
        assert httpx.post(f"{url}/classify", json={"inputs": "fine"}, timeout=30).status_code == 200


def raw_request(port: int, head: bytes, body_parts: list[bytes]) -> tuple[int, bytes]:
    """Send a hand-made HTTP/1.1 request (head, then body parts as they are) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        for part in body_parts:
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):  # the server answered and closed early
                break
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 20:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    return int(answer.split(b" ", 2)[1]), answer


def test_body_limits_hold_over_real_http(tiny_bundle: Path) -> None:
    """413 for a chunked body past the limit (no Content-Length to go by), 408 for a client that stops
    sending, and the server answers normally afterwards."""
    with uvicorn_server(tiny_bundle, max_body_bytes="2048", body_timeout_s="0.5") as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        chunks = [b"3e8\r\n" + b" " * 1000 + b"\r\n"] * 5 + [b"0\r\n\r\n"]
        status, answer = raw_request(port, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks)
        assert status == 413 and b"the limit is 2048 bytes" in answer
        status, answer = raw_request(port, head + b"Content-Length: 100\r\n\r\n", [b'{"inputs": '])
        assert status == 408 and b"did not arrive within 0.5 s" in answer
        assert httpx.post(f"{url}/classify", json={"inputs": "fine"}, timeout=30).status_code == 200


def test_the_deployed_entry_point_takes_the_startup_heap_out_of_garbage_collection(tiny_bundle: Path) -> None:
    """`app.main:factory` (what uvicorn and the image run) freezes what start-up built, so that no full
    collection re-scans the models and the framework while serving (those pauses set the p99 latency);
    objects made afterwards are still collected. In a subprocess: freezing pytest's own heap would leak."""
    script = (
        "import gc, json\n"
        "from app.main import factory\n"
        "factory()\n"
        "frozen = gc.get_freeze_count()\n"
        "class Node: pass\n"
        "a, b = Node(), Node(); a.other, b.other = b, a; del a, b\n"  # a cycle made while serving
        "print(json.dumps({'frozen': frozen, 'collected': gc.collect()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "POCKETBERT_BUNDLES": str(tiny_bundle)}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["frozen"] > 10_000  # the framework and the model's objects, not a handful
    assert figures["collected"] >= 2  # the cycle made after start-up is still found and freed
