"""Serving benchmark: pocketbert's batched ONNX server against a naive one-request-one-forward server.

    python bench/serve.py [--seconds 8] [--concurrency 1 8 32] [--workers 1 2] [--keep DIR]

Self-contained: builds a random-weight bundle of the default pocketbert shape (3 layers, hidden 256,
4 heads, vocabulary 8,000; INT8 + onnxruntime fusions) with the project's own export in a temp folder
(or in --keep DIR, reused by the next run), then, one server at a time on 127.0.0.1:
  ours   `pocketbert serve --workers N` (python -m app.serve: uvicorn + app.main, dynamic batching,
         onnxruntime), default settings, once per --workers value; engine plans are timed afresh (a plan
         cache of the run's own);
  naive  FastAPI + PyTorch eager on the same weights, one forward per request (this file, --naive-server).
An asyncio load generator (raw HTTP/1.1 keep-alive, one connection per concurrent client: light enough
not to be the bottleneck on 2 cores) sends the same POST /fill-mask requests at each concurrency for a
bounded time. Finally the bare engine runs fill-mask batches of the size our server formed at the highest
concurrency: server requests/s over engine sequences/s is `engine_fraction` (the engine is the limit;
the rest is HTTP, JSON and queueing). The top-level figures are those of the first --workers value;
`by_workers` has each. With --profile, one more run at the highest concurrency (after the measured
ones, so the sampling does not touch their figures) is recorded by py-spy, and `profile` gives, per
server thread (the event loop, the batch worker, onnxruntime's chunk threads), the share of samples in
each part of the work: HTTP and framework, validation, tokenization, the engine, post-processing, JSON,
metrics, queueing, idle. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TOP_K = 5
_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


# --- the bundle ------------------------------------------------------------------------------------------
def synthetic_corpus(path: Path, lines: int = 40_000, seed: int = 0) -> list[str]:
    """Zipf-distributed made-up words (enough distinct pieces for an 8,000-piece vocabulary); returns a
    few words to build request texts from."""
    rng = random.Random(seed)
    lexicon = sorted({"".join(rng.choices(_SYLLABLES, k=rng.randint(1, 4))) for _ in range(40_000)})
    rng.shuffle(lexicon)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choices(lexicon, weights, k=rng.randint(6, 24))) + ".\n")
    return lexicon[:400]


def build_bundle(work: Path) -> tuple[Path, Path, Path, list[str]]:
    """(bundle dir, pretraining checkpoint, tokenizer dir, request texts); a complete earlier build in
    `work` is reused."""
    bundle = work / "bundles" / "bench"
    if (work / "texts.json").is_file() and (bundle / "bundle.json").is_file():
        texts = json.loads((work / "texts.json").read_text(encoding="utf-8"))
        return bundle, work / "pretrained.pt", work / "tokenizer", texts
    import torch

    from model.bert import BertForPreTraining, BertForSequenceClassification
    from model.checkpoint import save_model
    from model.config import BertConfig
    from model.tokenizer import Tokenizer
    from training.export import export_bundle
    from training.tokenizer_train import train_tokenizer

    words = synthetic_corpus(work / "corpus.txt")
    train_tokenizer([work / "corpus.txt"], work / "tokenizer", vocab_size=8000)
    tokenizer = Tokenizer(work / "tokenizer")
    config = BertConfig(vocab_size=tokenizer.vocab_size)  # the default pocketbert: 3 x 256, 4 heads
    torch.manual_seed(0)
    meta = {"tokenizer_sha256": tokenizer.checksum}
    save_model(work / "pretrained.pt", BertForPreTraining(config).eval(), meta)
    save_model(
        work / "classifier.pt",
        BertForSequenceClassification(config, 2).eval(),
        {**meta, "label_names": ["negative", "positive"]},
    )
    export_bundle(
        work / "pretrained.pt",
        work / "classifier.pt",
        work / "tokenizer",
        bundle,
        quantize="int8",
        optimize=True,
        max_length=128,
    )
    rng = random.Random(1)
    texts = []
    for _ in range(256):
        sentence = rng.choices(words, k=rng.randint(6, 20))
        sentence[rng.randrange(len(sentence))] = "[MASK]"
        texts.append(" ".join(sentence) + ".")
    (work / "texts.json").write_text(json.dumps(texts), encoding="utf-8")
    return bundle, work / "pretrained.pt", work / "tokenizer", texts


# --- the naive peer ----------------------------------------------------------------------------------------
class NaiveRequest(BaseModel):
    inputs: str
    top_k: int = TOP_K


def naive_app(checkpoint: str, tokenizer_dir: str, max_length: int = 128):
    """FastAPI + PyTorch eager: each request runs its own forward pass (no batching, no ONNX)."""
    import torch
    from fastapi import FastAPI

    from model.checkpoint import load_model
    from model.tokenizer import MASK_ID, Tokenizer

    model, _ = load_model(checkpoint)
    tokenizer = Tokenizer(tokenizer_dir)
    app = FastAPI()

    @app.post("/fill-mask")
    def fill_mask(
        body: NaiveRequest,
    ) -> dict:  # a plain def: FastAPI runs it in its thread pool, as tutorials do
        enc = tokenizer.encode(body.inputs, max_length=max_length)
        ids = torch.tensor([enc.input_ids])
        positions = [i for i, t in enumerate(enc.input_ids) if t == MASK_ID]
        with torch.inference_mode():
            out = model(
                ids,
                torch.tensor([enc.token_type_ids]),
                torch.ones_like(ids),
                masked_positions=torch.tensor([positions]),
            )
            probs = out.mlm_logits.softmax(-1)[0]
        results = []
        for slot, position in enumerate(positions):
            scores, tokens = probs[slot].topk(body.top_k)
            preds = []
            for score, token in zip(scores.tolist(), tokens.tolist(), strict=True):
                filled = list(enc.input_ids)
                filled[position] = token
                preds.append(
                    {
                        "score": score,
                        "token": token,
                        "token_str": tokenizer.decode([token], skip_special_tokens=False),
                        "sequence": tokenizer.decode(filled),
                    }
                )
            results.append(preds)
        return {"model": "naive", "results": [results[0] if len(results) == 1 else results]}

    return app


# --- servers ------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, limit_s: float = 300.0, workers_ready=lambda: True) -> None:
    """Until `url` answers 200 and workers_ready() (every worker has loaded its models)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200 and workers_ready():
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {limit_s:g} s")


@contextlib.contextmanager
def server(argv: list[str], env: dict[str, str], ready_url: str, workers_ready=lambda: True):
    proc = subprocess.Popen(
        argv,
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            wait_ready(ready_url, workers_ready=workers_ready)
        except RuntimeError:
            proc.kill()
            raise RuntimeError(f"server failed: {proc.communicate(timeout=10)[1][-2000:]}") from None
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- load generator -----------------------------------------------------------------------------------------
async def _client(
    port: int, bodies: list[bytes], start: int, stop_at: float, latencies: list[float], errors: list[str]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while time.perf_counter() < stop_at:
            body = bodies[i % len(bodies)]
            i += 1
            request = (
                b"POST /fill-mask HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            began = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            match = re.search(rb"(?i)content-length:\s*(\d+)", head)
            payload = await reader.readexactly(int(match.group(1)) if match else 0)
            latencies.append(time.perf_counter() - began)
            if not head.startswith(b"HTTP/1.1 200") or b'"results"' not in payload:
                errors.append(head.split(b"\r\n", 1)[0].decode(errors="replace"))
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _load(port: int, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    # Warm-up: a short burst at the same concurrency, not measured.
    sink: list[float] = []
    warm_stop = time.perf_counter() + min(1.0, seconds / 4)
    await asyncio.gather(*(_client(port, bodies, c * 7, warm_stop, sink, []) for c in range(concurrency)))
    latencies: list[float] = []
    errors: list[str] = []
    began = time.perf_counter()
    stop_at = began + seconds
    await asyncio.gather(
        *(_client(port, bodies, c * 7, stop_at, latencies, errors) for c in range(concurrency))
    )
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 2) if latencies else None,
        "p99_ms": round(1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)
        if latencies
        else None,
    }


def run_load(port: int, bodies: list[bytes], levels: list[int], seconds: float, on_level=None) -> list[dict]:
    results = []
    for concurrency in levels:
        before = on_level() if on_level else None
        result = asyncio.run(_load(port, bodies, concurrency, seconds))
        if on_level:
            result["batch"] = on_level(before)
        results.append(result)
        print(f"  c={concurrency:>3}: {result}", flush=True)
    return results


def batch_stats(port: int):
    """A callable: with no argument, a snapshot of the fill-mask batch histogram's (sum, count); with a
    snapshot, the mean batch size since it (includes the warm-up burst, which runs at the same load)."""

    def read() -> tuple[float, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = count = 0.0
        for line in text.splitlines():
            if line.startswith("pocketbert_batch_size_sum") and 'task="fill-mask"' in line:
                total = float(line.rsplit(" ", 1)[1])
            elif line.startswith("pocketbert_batch_size_count") and 'task="fill-mask"' in line:
                count = float(line.rsplit(" ", 1)[1])
        return total, count

    def call(before: tuple[float, float] | None = None):
        now = read()
        if before is None:
            return now
        batches = now[1] - before[1]
        return {
            "batches": int(batches),
            "mean_size": round((now[0] - before[0]) / batches, 2) if batches else None,
        }

    return call


# --- where the server's time goes (--profile) ---------------------------------------------------------------
# Each sample's stack is given to the first part whose marker appears in its deepest matching frame.
PROFILE_PARTS = [
    ("engine (onnxruntime)", ("onnxruntime",)),
    ("tokenization", ("sentencepiece", "model/tokenizer.py")),
    ("post-processing (top-k, decoding)", ("model/engine.py", "numpy/")),
    ("metrics", ("prometheus_client", "app/metrics.py")),
    ("JSON", ("json/", "orjson")),
    ("validation (pydantic, input checks)", ("pydantic", "app/schemas.py", ".check_")),
    ("queueing and batching", ("app/batching.py", "concurrent/futures", "threading.py", "queue.py")),
    ("HTTP and framework", ("uvicorn", "starlette", "fastapi", "app/")),  # the rest of app/: routes etc.
]
# A stack that ends in the asyncio runner is the event loop in C (uvloop): socket I/O, parsing, or idle.
EVENT_LOOP_C = "Runner.run (asyncio/runners.py"


def profile_part(frames: list[str]) -> str:
    for frame in reversed(frames):
        for part, markers in PROFILE_PARTS:
            if any(marker in frame for marker in markers):
                return part
        if frame.startswith(EVENT_LOOP_C):
            return "event loop in C (I/O, HTTP parsing, idle)"
    return "other"


def thread_role(name: str) -> str:
    if "MainThread" in name:
        return "event_loop"
    if "inference" in name:
        return "batch_worker"
    if "chunk" in name:
        return "onnxruntime_chunks"
    return "other_threads"


def summarise_profile(raw: str) -> dict:
    """py-spy's raw (collapsed) stacks -> per thread role, the share of samples in each part."""
    counts: dict[str, dict[str, int]] = {}
    for line in raw.splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if len(frames) < 2 or not n.isdigit():
            continue
        role = counts.setdefault(thread_role(frames[1]), {})
        part = profile_part(frames[2:])
        role[part] = role.get(part, 0) + int(n)
    report = {}
    for role, parts in sorted(counts.items()):
        total = sum(parts.values())
        shares = sorted(parts.items(), key=lambda kv: -kv[1])
        report[role] = {"samples": total, **{part: round(n / total, 3) for part, n in shares}}
    return report


def profile_server(pid: int, port: int, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """Load the server at `concurrency` while py-spy samples every thread of it (and of its workers)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).is_file():
        return {"run": False, "reason": "py-spy not found (pip install py-spy)"}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stacks.txt"
        cmd = [spy, "record", "--pid", str(pid), "--subprocesses", "--idle", "--threads", "--nonblocking"]
        cmd += ["--format", "raw", "--rate", "200", "--duration", str(max(1, int(seconds))), "-o", str(out)]
        recorder = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)  # py-spy attaches
        load = asyncio.run(_load(port, bodies, concurrency, seconds + 1))
        _, err = recorder.communicate(timeout=60)
        if recorder.returncode != 0 or not out.is_file():
            return {"run": False, "reason": f"py-spy failed: {err.strip()[-300:]}"}
        shares = summarise_profile(out.read_text())
    return {"run": True, "concurrency": concurrency, "rps_while_sampled": load["rps"], **shares}


def uvicorn_flavour() -> str:
    """What uvicorn's 'auto' picks: httptools + uvloop when installed (uvicorn[standard]), else h11."""
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return f"{http}+{loop}"


def engine_throughput(
    bundle: Path, texts: list[str], batch_size: int, seconds: float, threads: int | None = None
) -> float:
    """Sequences/s of Engine.fill_mask alone (tokenize, onnxruntime, top-k) at this batch size."""
    from model.engine import Engine

    engine = Engine.load(bundle, intra_op_threads=threads, spinning=False)  # as the server runs it
    batches = [[texts[(i * batch_size + j) % len(texts)] for j in range(batch_size)] for i in range(64)]
    for batch in batches[:3]:
        engine.fill_mask(batch, top_k=TOP_K)
    done = 0
    began = time.perf_counter()
    while time.perf_counter() - began < seconds:
        engine.fill_mask(batches[done % len(batches)], top_k=TOP_K)
        done += 1
    return done * batch_size / (time.perf_counter() - began)


# --- main ---------------------------------------------------------------------------------------------------
def ours_workers_ready(metrics_dir: Path, workers: int):
    """A check that every worker has loaded its models: each writes its gauge file (prometheus-client's
    multiprocess mode, gauge_livesum_PID.db) when its queues are set up."""
    return lambda: len(list(metrics_dir.glob("gauge_livesum_*.db"))) >= workers


def run_ours(
    args: argparse.Namespace, work: Path, bundle: Path, bodies: list[bytes], workers: int
) -> list[dict]:
    """`pocketbert serve --workers N` on the bundle, loaded at each concurrency level."""
    port = free_port()
    metrics_dir = work / f"metrics-{workers}"
    print(f"ours: pocketbert serve --workers {workers} on 127.0.0.1:{port}", flush=True)
    argv = [sys.executable, "-m", "app.serve", "--host", "127.0.0.1", "--port", str(port)]
    env = {
        "POCKETBERT_BUNDLES": str(bundle.parent),
        "POCKETBERT_LOG_LEVEL": "warning",
        "POCKETBERT_CACHE_DIR": str(work / "plans"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        **({"POCKETBERT_ORT_THREADS": str(args.ort_threads)} if args.ort_threads else {}),
    }
    with server(
        [*argv, "--workers", str(workers), "--log-level", "warning"],
        env,
        f"http://127.0.0.1:{port}/readyz",
        ours_workers_ready(metrics_dir, workers),
    ) as proc:
        runs = run_load(port, bodies, sorted(args.concurrency), args.seconds, on_level=batch_stats(port))
        if args.profile and workers == args.workers[0]:
            runs[-1]["profile"] = profile_server(proc.pid, port, bodies, max(args.concurrency), args.seconds)
            print(f"  profile: {json.dumps(runs[-1]['profile'])}", flush=True)
        return runs


def run_naive(
    args: argparse.Namespace, checkpoint: Path, tokenizer_dir: Path, bodies: list[bytes]
) -> list[dict]:
    port = free_port()
    print(f"naive: FastAPI + PyTorch eager on 127.0.0.1:{port}", flush=True)
    argv = [sys.executable, __file__, "--naive-server", "--checkpoint", str(checkpoint)]
    with server(
        [*argv, "--tokenizer", str(tokenizer_dir), "--port", str(port)], {}, f"http://127.0.0.1:{port}/docs"
    ):
        return run_load(port, bodies, sorted(args.concurrency), args.seconds)


def summarise(
    by_workers: dict[int, list[dict]], naive: list[dict], engine_sps: float, batch_size: int
) -> dict:
    """The JSON report: the first --workers value's figures at the top, each one's under by_workers."""
    first = next(iter(by_workers))
    top, top_naive = by_workers[first][-1], naive[-1]
    c = top["concurrency"]
    return {
        "bench": "serve",
        f"ratio_c{c}": round(top["rps"] / top_naive["rps"], 2),
        "p99_ms": top["p99_ms"],
        "p99_naive_ms": top_naive["p99_ms"],
        "engine_fraction": round(top["rps"] / engine_sps, 3),
        "rps": top["rps"],
        "rps_naive": top_naive["rps"],
        "workers": first,
        "by_workers": {
            str(workers): {
                "rps": runs[-1]["rps"],
                "p50_ms": runs[-1]["p50_ms"],
                "p99_ms": runs[-1]["p99_ms"],
                "mean_batch_size": runs[-1]["batch"]["mean_size"],
                f"ratio_c{c}": round(runs[-1]["rps"] / top_naive["rps"], 2),
            }
            for workers, runs in by_workers.items()
        },
        "engine_sequences_per_s": round(engine_sps, 1),
        "mean_batch_size": top["batch"]["mean_size"],
        "engine_batch_size": batch_size,
        "uvicorn": uvicorn_flavour(),
        "errors": sum(r["errors"] for runs in [*by_workers.values(), naive] for r in runs),
        "cpus": os.cpu_count(),
        "profile": top.get("profile", {"run": False, "reason": "no --profile"}),
        "ours": [{k: v for k, v in run.items() if k != "profile"} for run in by_workers[first]],
        "naive": naive,
    }


def print_table(by_workers: dict[int, list[dict]], naive: list[dict]) -> None:
    columns = f"{'rps':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(f"\n{'':>10} ours {columns} | naive {columns} | ratio")
    for workers, runs in by_workers.items():
        for a, b in zip(runs, naive, strict=True):
            print(
                f"w={workers} c={a['concurrency']:<4}      {a['rps']:>9} {a['p50_ms']:>8} {a['p99_ms']:>8} | "
                f"      {b['rps']:>9} {b['p50_ms']:>8} {b['p99_ms']:>8} | {a['rps'] / b['rps']:.2f}x"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="uvicorn workers of our server")
    parser.add_argument(
        "--ort-threads",
        type=int,
        default=None,
        help="onnxruntime threads of our server (per worker) and the bare engine (default: the server's)",
    )
    parser.add_argument("--keep", metavar="DIR", help="build the bundle here, or reuse the one built here")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the measured runs, sample our server with py-spy at the highest concurrency and report "
        "where each of its threads spends its time",
    )
    parser.add_argument("--naive-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--tokenizer", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.naive_server:
        import uvicorn

        uvicorn.run(
            naive_app(args.checkpoint, args.tokenizer), host="127.0.0.1", port=args.port, log_level="warning"
        )
        return 0

    from app.settings import Settings

    # The bare engine gets the threads the server gives each model (its default unless --ort-threads).
    threads = args.ort_threads or Settings(workers=args.workers[0]).inference_threads
    with tempfile.TemporaryDirectory(prefix="pocketbert-bench-") as tmp:
        work = Path(args.keep or tmp)
        work.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work / "plans", ignore_errors=True)  # plans timed afresh by each run's servers
        print("building a 3-layer/256/4-head, vocab-8000 random bundle (INT8, optimized) ...", flush=True)
        bundle, checkpoint, tokenizer_dir, texts = build_bundle(work)
        bodies = [json.dumps({"inputs": t, "top_k": TOP_K}).encode() for t in texts]
        by_workers = {workers: run_ours(args, work, bundle, bodies, workers) for workers in args.workers}
        # The bare engine right after (other load on the machine drifts), and again at the end: the better
        # of the two is the engine's capacity, which makes engine_fraction the conservative figure.
        top = next(iter(by_workers.values()))[-1]
        batch_size = max(1, round(top["batch"]["mean_size"] or 1))
        os.environ["POCKETBERT_CACHE_DIR"] = str(work / "plans")  # the plans the server timed
        engine_runs = [engine_throughput(bundle, texts, batch_size, min(args.seconds, 5.0), threads)]
        naive = run_naive(args, checkpoint, tokenizer_dir, bodies)
        engine_runs.append(engine_throughput(bundle, texts, batch_size, min(args.seconds, 5.0), threads))
        engine_sps = max(engine_runs)
        print(
            f"bare engine: {' and '.join(f'{r:.1f}' for r in engine_runs)} sequences/s at batch size "
            f"{batch_size}",
            flush=True,
        )
    print_table(by_workers, naive)
    summary = summarise(by_workers, naive, engine_sps, batch_size)
    summary.update({"ort_threads": threads, "seconds_per_level": args.seconds})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
