"""`pocketbert serve --workers 2`: requests spread over both worker processes, and one scrape of /metrics
(prometheus-client's multiprocess mode) counts every one of them."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from test_server_integration import free_port, metric, wait_until_ready

from app import metrics

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = "pocketbert_http_requests_total"
CLASSIFY = {"endpoint": "/classify", "method": "POST", "status": "200"}


def served_by_each_worker(folder: Path) -> dict[str, float]:
    """Per worker process (by the pid in its file names), the /classify answers it counted."""
    counts = {}
    for path in folder.glob("counter_*.db"):
        samples = [s for m in MultiProcessCollector.merge([str(path)]) for s in m.samples]
        counts[path.stem.split("_")[-1]] = sum(
            s.value for s in samples if s.name == REQUESTS and s.labels == CLASSIFY
        )
    return counts


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def classify(url: str) -> None:
    """One request on a connection of its own: the kernel hands each to whichever worker accepts it."""
    request = urllib.request.Request(
        f"{url}/classify",
        data=b'{"inputs": "the cat sees the park."}',
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


@contextlib.contextmanager
def two_workers(bundle: Path, metrics_dir: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "POCKETBERT_LOG_LEVEL": "warning",
        "POCKETBERT_ENGINE_PLAN": "fixed",
    }
    argv = [
        sys.executable,
        "-m",
        "app.serve",
        "--bundles",
        str(bundle),
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while len(list(metrics_dir.glob("gauge_livesum_*.db"))) < 2:  # each worker's queues, once loaded
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr and proc.stderr.read()
            time.sleep(0.1)
        wait_until_ready(url, proc, max(1.0, deadline - time.monotonic()))
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.mark.slow
def test_one_scrape_counts_the_requests_of_both_workers(tiny_bundle: Path, tmp_path: Path) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"an earlier server's file")  # serve must clear it
    with two_workers(tiny_bundle, metrics_dir) as url, ThreadPoolExecutor(8) as pool:
        assert not (metrics_dir / "counter_1.db").exists()
        sent = 0
        while sent < 400 and not all(served_by_each_worker(metrics_dir).values()):
            list(pool.map(lambda _: classify(url), range(16)))
            sent += 16
        # a worker counts a request once its answer is sent, so the client may see the answer a moment
        # before its worker's file holds the count: wait (bounded) for the last ones
        deadline = time.monotonic() + 10
        per_worker = served_by_each_worker(metrics_dir)
        while sum(per_worker.values()) < sent and time.monotonic() < deadline:
            time.sleep(0.05)
            per_worker = served_by_each_worker(metrics_dir)
        scraped = metric(get(f"{url}/metrics"), REQUESTS, **CLASSIFY)
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker.values()), per_worker
    assert scraped == sent == sum(per_worker.values())


def test_serve_sets_up_the_multiprocess_folder_only_for_several_workers(tmp_path: Path, monkeypatch) -> None:
    # setenv first so that monkeypatch records the variable's original state (usually unset) and puts it
    # back after the test: prepare_multiprocess_dir writes os.environ itself, and a deleted folder left
    # there would break every server a later test starts
    monkeypatch.setenv(metrics.MULTIPROC_ENV, "")
    monkeypatch.delenv(metrics.MULTIPROC_ENV)
    assert metrics.prepare_multiprocess_dir(1) is None and metrics.MULTIPROC_ENV not in os.environ
    created = metrics.prepare_multiprocess_dir(2)
    assert created is not None and created.is_dir() and os.environ[metrics.MULTIPROC_ENV] == str(created)
    metrics.remove_multiprocess_dir(created)
    assert not created.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "histogram_7.db").write_bytes(b"stale")
    (mine / "notes.txt").write_text("not ours")
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(mine))
    assert metrics.prepare_multiprocess_dir(1) is None  # the user's folder: used, emptied of .db files, kept
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
