"""Schema-driven fuzzing: schemathesis generates valid and invalid requests for every operation of the live
server (real uvicorn on loopback, the tiny bundle) from its own /openapi.json and runs all its checks:
no 5xx, every status, header and body as documented, valid requests accepted, invalid ones refused with a
4xx.

The limits are set so that every request the schema allows is one the model can answer (a text of at
most 15 characters is at most ~31 tokens, so even a pair fits the tiny model's 64): then "accepted" is
checkable for every generated valid body. The run is bounded (examples per operation) and seeded, so it
is short and repeatable, and it runs in a temporary folder: nothing lands in the repository.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_server_integration import uvicorn_server

LIMITS = {
    "max_text_chars": "15",
    "attention_max_chars": "15",
    "max_inputs": "3",
    "max_top_k": "10",
    "max_masks_per_text": "8",
    "max_masks_per_request": "64",
    "max_predictions": "1000",
    "max_body_bytes": "16384",
}
OPERATIONS = {
    "POST /fill-mask",
    "POST /next-sentence",
    "POST /classify",
    "POST /attention",
    "GET /healthz",
    "GET /readyz",
    "GET /metrics",
    "GET /v1/models",
}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_every_operation_meets_its_schema(tiny_bundle: Path, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis", reason="schemathesis is a dev dependency")
    report = tmp_path / "report.json"
    with uvicorn_server(tiny_bundle, **LIMITS) as url:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                f"{url}/openapi.json",
                "--checks=all",
                "--mode=all",
                "--phases=examples,coverage,fuzzing",
                "--max-examples=25",
                "--seed=1",
                "--workers=1",
                "--generation-database=none",
                "--request-timeout=30",
                "--no-color",
                "--report=json",
                f"--report-json-path={report}",
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=540,
        )
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    summary = json.loads(report.read_text(encoding="utf-8"))
    assert summary["operations"]["tested"] == len(OPERATIONS) == summary["operations"]["total"]
    assert set(summary["valid_rates"]) == OPERATIONS
    phases = {name: phase["status"] for name, phase in summary["phases"].items()}
    assert phases == {"examples": "success", "coverage": "success", "fuzzing": "success", "stateful": "skip"}
    assert summary["failures"] == [] and summary["test_cases"]["generated"] >= 200
