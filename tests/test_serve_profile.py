"""bench/serve.py --profile: py-spy's collapsed stacks are summed per server thread and part of the work."""

from __future__ import annotations

from conftest import load_bench

PROCESS = 'process 7:"python -m app.serve"'
RAW = "\n".join(
    [
        f"{PROCESS};thread (7): MainThread;run (uvicorn/main.py:632);Runner.run (asyncio/runners.py:118) 50",
        f"{PROCESS};thread (7): MainThread;Runner.run (asyncio/runners.py:118);"
        "ServedModel.check_masks (app/registry.py:189);Tokenizer.encode_ids (model/tokenizer.py:154);"
        "SentencePieceProcessor.Encode (sentencepiece/__init__.py:361) 10",
        f"{PROCESS};thread (7): MainThread;Runner.run (asyncio/runners.py:118);"
        "ServedModel.check_masks (app/registry.py:190) 5",
        f"{PROCESS};thread (7): MainThread;Runner.run (asyncio/runners.py:118);"
        "MetricsMiddleware.__call__ (app/middleware.py:74);dumps (json/__init__.py:238) 15",
        f"{PROCESS};thread (7): MainThread;Runner.run (asyncio/runners.py:118);"
        "Starlette.__call__ (starlette/applications.py:96) 20",
        f"{PROCESS};thread (9): inference_0;Engine.fill_mask (model/engine.py:362);"
        "GraphRunner.run (model/runtime.py:116);Session.run (onnxruntime/capi/session.py:406) 30",
        f"{PROCESS};thread (9): inference_0;Engine.fill_mask (model/engine.py:364);"
        "logsumexp (model/engine.py:105) 10",
        "garbage line without a count",
    ]
)


def test_profile_shares_per_thread_role_and_part() -> None:
    report = load_bench("serve").summarise_profile(RAW)
    loop, worker = report["event_loop"], report["batch_worker"]
    assert loop["samples"] == 100 and worker["samples"] == 40
    assert loop["event loop in C (I/O, HTTP parsing, idle)"] == 0.5
    assert loop["tokenization"] == 0.1  # the deepest frame decides: Encode, not check_masks
    assert loop["validation (pydantic, input checks)"] == 0.05
    assert loop["JSON"] == 0.15 and loop["HTTP and framework"] == 0.2
    assert worker["engine (onnxruntime)"] == 0.75 and worker["post-processing (top-k, decoding)"] == 0.25
    assert set(report) == {"event_loop", "batch_worker"}
