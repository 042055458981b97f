"""Benchmark `pocketbert prepare` against Hugging Face's TextDatasetForNextSentencePrediction.

    python bench/prepare.py [--input PATH] [--max-mb N] [--tokenizer DIR]
    python bench/prepare.py --memory-scaling      # peak RSS of ours on ~10 MB vs 200 MB+ of text

Both sides get the same input file (the first N MB of the Korean Wikipedia sample, cut at a document
boundary) and the same SentencePiece model, and build next-sentence pairs of at most 128 tokens with
short_seq_prob 0.1, once over the corpus (our --dupe-factor 1; the reference has no duplication).
Each side runs in its own subprocess; its peak memory is the largest sum of RSS over the process and all
its children (polled from /proc every 20 ms), so our worker processes are counted too.

Timing: ours is the whole `pocketbert prepare` process (interpreter start, imports, worker start-up,
writing the files); the reference is timed inside its process from building the tokenizer to the finished
dataset, leaving out the import of torch and transformers. That favours the reference.

The reference: transformers 5 removed TextDatasetForNextSentencePrediction, so when the installed
transformers lacks it the benchmark creates its own virtual environment (~/.cache/pocketbert/bench-hf4)
with the last 4.x release and the CPU torch build, and runs the reference there. Our tokenizer.model is
wrapped by transformers' own SentencePiece tokenizer class (AlbertTokenizer: [CLS] A [SEP] B [SEP], no
lower-casing), which is the slow-tokenizer path that dataset class uses.

The last line printed is one JSON object: {"bench": "prepare", "ratio": ours/reference instances per
second, "memory_ratio": ours/reference peak RSS, ...}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_INPUT = ROOT.parent / "shared" / "data" / "ko-corpus" / "kowiki_sample.txt.gz"
DEFAULT_TOKENIZER = ROOT / "runs" / "ko" / "tokenizer"
HF_VENV = Path.home() / ".cache" / "pocketbert" / "bench-hf4"
HF_REQUIREMENTS = [
    "transformers==4.57.*",
    "torch==2.13.0",
    "sentencepiece",
    "numpy",
]  # torch pinned: CPU build
MAX_LENGTH = 128
SHORT_SEQ_PROB = 0.1

REFERENCE_SCRIPT = r"""
import json, sys, time
model_file, input_file = sys.argv[1], sys.argv[2]
max_length, short_seq_prob = int(sys.argv[3]), float(sys.argv[4])
from transformers import AlbertTokenizer, TextDatasetForNextSentencePrediction
from transformers.utils import logging
logging.set_verbosity_error()
start = time.perf_counter()
tokenizer = AlbertTokenizer(
    vocab_file=model_file, do_lower_case=False, remove_space=True, keep_accents=True,
    unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    bos_token="[BOS]", eos_token="[EOS]",
)
dataset = TextDatasetForNextSentencePrediction(
    tokenizer, file_path=input_file, block_size=max_length, overwrite_cache=True,
    short_seq_probability=short_seq_prob, nsp_probability=0.5,
)
seconds = time.perf_counter() - start
first = dataset[0]
print(json.dumps({"instances": len(dataset), "seconds": seconds,
                  "example": tokenizer.decode(first["input_ids"][:24].tolist())}))
"""


# --- measuring a subprocess ----------------------------------------------------------------------------


def _tree_rss_bytes(pid: int) -> int:
    """Sum of RSS of pid and all its descendants (0 for processes that are gone)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
            with open(f"/proc/{p}/task/{p}/children") as f:
                stack.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run_measured(cmd: list[str], label: str) -> dict:
    """Run cmd; return its stdout, wall seconds and the peak RSS of its process tree."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, _tree_rss_bytes(proc.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        sys.exit(f"{label} failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    return {"stdout": stdout, "wall_seconds": seconds, "peak_rss_mb": peak / 2**20}


# --- inputs --------------------------------------------------------------------------------------------


def write_slice(source: Path, target: Path, max_mb: float, repeat: int = 1) -> float:
    """The first max_mb MB of source (gz or plain), cut at a blank line, written `repeat` times.

    Returns the MB written."""
    limit = int(max_mb * 2**20)
    opener = gzip.open if source.suffix == ".gz" else open
    lines, size = [], 0
    with opener(source, "rt", encoding="utf-8") as f:
        for line in f:
            if size >= limit and not line.strip():
                break
            lines.append(line)
            size += len(line.encode("utf-8"))
    # No blank line at the very end: the reference reads one as an empty last document and then fails
    # when it draws that document as a random next sentence.
    text = "".join(lines).rstrip("\n") + "\n"
    with open(target, "w", encoding="utf-8") as f:
        f.write("\n".join([text] * repeat))
    return target.stat().st_size / 2**20


def tokenizer_model(tokenizer: Path | None, corpus: Path, workdir: Path) -> Path:
    path = tokenizer or DEFAULT_TOKENIZER
    path = path / "tokenizer.model" if path.is_dir() or not path.suffix else path
    if path.is_file():
        return path
    if tokenizer is not None:
        sys.exit(f"{path}: no tokenizer file")
    print(f"{path} not found: training an 8000-piece tokenizer on the benchmark input", flush=True)
    subprocess.run(
        [
            sys.executable,  # the interpreter this runs under, whatever the environment's layout
            "-m",
            "training.cli",
            "tokenizer",
            "train",
            "--input",
            str(corpus),
            "--vocab-size",
            "8000",
            "--out",
            str(workdir / "tokenizer"),
        ],
        check=True,
        cwd=ROOT,
    )
    return workdir / "tokenizer" / "tokenizer.model"


# --- the two sides -------------------------------------------------------------------------------------


def run_ours(model: Path, corpus: Path, out: Path, dupe_factor: int = 1, label: str = "ours") -> dict:
    cmd = [
        sys.executable,
        "-m",
        "training.cli",
        "prepare",
        "--tokenizer",
        str(model),
        "--input",
        str(corpus),
        "--out",
        str(out),
        "--max-length",
        str(MAX_LENGTH),
        "--short-seq-prob",
        str(SHORT_SEQ_PROB),
        "--dupe-factor",
        str(dupe_factor),
        "--valid-fraction",
        "0",
        "--quiet",
    ]
    result = run_measured(cmd, label)
    index = json.loads((out / "index.json").read_text())
    result["instances"] = sum(split["instances"] for split in index["splits"].values())
    result["seconds"] = result["wall_seconds"]
    shutil.rmtree(out)
    return result


def reference_python() -> Path:
    """A Python whose transformers still has TextDatasetForNextSentencePrediction (made once, then cached)."""
    probe = "from transformers import TextDatasetForNextSentencePrediction, AlbertTokenizer"
    if subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0:
        return Path(sys.executable)
    python = HF_VENV / "bin" / "python"
    if not python.exists() or subprocess.run([str(python), "-c", probe], capture_output=True).returncode != 0:
        print(f"installing the reference ({' '.join(HF_REQUIREMENTS)}) into {HF_VENV}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(HF_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *HF_REQUIREMENTS], check=True)
    return python


def run_reference(model: Path, corpus: Path, workdir: Path) -> dict:
    script = workdir / "reference.py"
    script.write_text(REFERENCE_SCRIPT)
    cmd = [
        str(reference_python()),
        str(script),
        str(model),
        str(corpus),
        str(MAX_LENGTH),
        str(SHORT_SEQ_PROB),
    ]
    result = run_measured(cmd, "reference")
    result.update(json.loads(result["stdout"].strip().splitlines()[-1]))
    return result


def summary(result: dict) -> dict:
    return {
        "instances": result["instances"],
        "seconds": round(result["seconds"], 2),
        "instances_per_s": round(result["instances"] / result["seconds"], 1),
        "peak_rss_mb": round(result["peak_rss_mb"], 1),
    }


def bench_speed(args: argparse.Namespace, workdir: Path) -> dict:
    corpus = workdir / "corpus.txt"
    mb = write_slice(args.input, corpus, args.max_mb)
    model = tokenizer_model(args.tokenizer, corpus, workdir)
    print(f"input: first {mb:.1f} MB of {args.input}; tokenizer {model}", flush=True)
    ours = summary(run_ours(model, corpus, workdir / "ours"))
    print(f"ours:      {ours}", flush=True)
    reference = summary(run_reference(model, corpus, workdir))
    print(f"reference: {reference}", flush=True)
    return {
        "bench": "prepare",
        "input": str(args.input),
        "input_mb": round(mb, 1),
        "cpus": os.cpu_count(),
        "ours": ours,
        "reference": {"name": "transformers TextDatasetForNextSentencePrediction", **reference},
        "ratio": round(ours["instances_per_s"] / reference["instances_per_s"], 2),
        "memory_ratio": round(ours["peak_rss_mb"] / reference["peak_rss_mb"], 3),
    }


def bench_memory_scaling(args: argparse.Namespace, workdir: Path) -> dict:
    """Peak RSS of ours on ~10 MB and on 200 MB+ (the corpus written 4 times): must stay within 1.5x."""
    small, large = workdir / "small.txt", workdir / "large.txt"
    small_mb = write_slice(args.input, small, 10)
    large_mb = write_slice(args.input, large, 1e9, repeat=4)
    model = tokenizer_model(args.tokenizer, small, workdir)
    runs = {}
    for name, corpus, mb in (("small", small, small_mb), ("large", large, large_mb)):
        result = run_ours(model, corpus, workdir / name, dupe_factor=5, label=name)
        runs[name] = {"input_mb": round(mb, 1), **summary(result)}
        print(f"{name}: {runs[name]}", flush=True)
        corpus.unlink()
    return {
        "bench": "prepare_memory",
        "small": runs["small"],
        "large": runs["large"],
        "memory_ratio": round(runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"], 3),
        "limit": 1.5,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--input", type=Path, default=DEFAULT_INPUT, help="corpus (.txt or .txt.gz, BERT layout)"
    )
    parser.add_argument(
        "--max-mb", type=float, default=20, help="use the first N MB of the input (default 20)"
    )
    parser.add_argument(
        "--tokenizer", type=Path, help=f"tokenizer folder or file (default {DEFAULT_TOKENIZER})"
    )
    parser.add_argument(
        "--memory-scaling",
        action="store_true",
        help="instead: peak RSS of ours on ~10 MB vs the whole input written 4 times",
    )
    args = parser.parse_args()
    if not args.input.is_file():
        sys.exit(f"{args.input}: not found (pass --input)")
    with tempfile.TemporaryDirectory(prefix="pocketbert-bench-") as tmp:
        result = (
            bench_memory_scaling(args, Path(tmp)) if args.memory_scaling else bench_speed(args, Path(tmp))
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
