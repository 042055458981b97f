"""Training throughput: pocketbert's BertForPreTraining against Hugging Face transformers', same run.

Both models get the same config (3 layers, hidden 256, 4 heads, vocab 8000), the same weights (our
state_dict keys are Hugging Face's) and the same batch: 32 x 128 tokens, ~15% of them carrying MLM
labels, random NSP labels. Both run in train mode, forward + loss + backward + AdamW step. After a
few warm-up steps the variants alternate step by step, so the machine's noise (other processes,
frequency changes) falls on all of them alike, and each variant's median step time is reported.

Ours runs the trainer's choices (sparse MLM head, fused AdamW); `--variants` adds the ablations that
justify them (dense MLM head, foreach AdamW, bf16 autocast, torch.compile). The last line printed is
one JSON object; `ratio` is ours / Hugging Face tokens per second.

    python bench/train_step.py [--steps 10] [--warmup 3] [--threads N] [--variants]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from model.bert import IGNORE_INDEX, BertForPreTraining
from model.config import BertConfig
from training.optim import build_optimizer

BATCH, LENGTH = 32, 128


def make_batch(config: BertConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A realistic pretraining batch: ids of ordinary pieces, two segments, 15% MLM labels."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(7, config.vocab_size, (BATCH, LENGTH), generator=g)  # (B, T)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, LENGTH // 2 :] = 1
    attention_mask = torch.ones_like(input_ids)
    chosen = torch.rand(BATCH, LENGTH, generator=g) < 0.15
    chosen[:, 0] = False  # never [CLS]
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    input_ids = torch.where(chosen, torch.full_like(input_ids, 6), input_ids)  # [MASK]
    next_sentence_label = torch.randint(0, 2, (BATCH,), generator=g)
    return dict(
        input_ids=input_ids,
        token_type_ids=token_type_ids,
        attention_mask=attention_mask,
        labels=labels,
        next_sentence_label=next_sentence_label,
    )


def hf_model(config: BertConfig, state_dict: dict) -> torch.nn.Module:
    import transformers

    hf_config = transformers.BertConfig(**config.to_hf_dict())
    hf_config._attn_implementation = "sdpa"  # Hugging Face's fastest attention on CPU, as ours
    model = transformers.BertForPreTraining(hf_config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    real_missing = [k for k in missing if "position_ids" not in k and "token_type_ids" not in k]
    if real_missing or unexpected:
        raise RuntimeError(
            f"weights do not map onto Hugging Face: missing {real_missing}, unexpected {unexpected}"
        )
    return model


def make_step(
    model: torch.nn.Module,
    batch: dict,
    ours: bool,
    sparse: bool = True,
    fused: bool = True,
    bf16: bool = False,
) -> Callable[[], float]:
    """A closure that runs one training step and returns the loss."""
    model.train()
    optimizer = build_optimizer(model, lr=1e-4, fused=fused)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def step() -> float:
        with autocast():
            if ours:
                out = model(
                    batch["input_ids"],
                    batch["token_type_ids"],
                    batch["attention_mask"],
                    labels=batch["labels"],
                    next_sentence_label=batch["next_sentence_label"],
                    sparse_mlm=sparse,
                )
            else:
                out = model(
                    input_ids=batch["input_ids"],
                    token_type_ids=batch["token_type_ids"],
                    attention_mask=batch["attention_mask"],
                    labels=batch["labels"],
                    next_sentence_label=batch["next_sentence_label"],
                )
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return out.loss.item()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed warm-up steps per variant (default 3)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="also time dense MLM, foreach AdamW, bf16 autocast and torch.compile for ours",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = BertConfig(
        vocab_size=8000, hidden_size=256, num_hidden_layers=3, num_attention_heads=4, intermediate_size=1024
    )
    torch.manual_seed(0)
    reference = BertForPreTraining(config)
    state = reference.state_dict()
    batch = make_batch(config)

    def ours_model() -> BertForPreTraining:
        model = BertForPreTraining(config)
        model.load_state_dict(state)
        return model

    variants: dict[str, Callable[[], float]] = {
        "ours": make_step(ours_model(), batch, ours=True),
        "hf": make_step(hf_model(config, state), batch, ours=False),
    }
    if args.variants:
        variants["ours_dense_mlm"] = make_step(ours_model(), batch, ours=True, sparse=False)
        variants["ours_foreach_adamw"] = make_step(ours_model(), batch, ours=True, fused=False)
        variants["ours_bf16"] = make_step(ours_model(), batch, ours=True, bf16=True)
        variants["ours_compiled"] = make_step(torch.compile(ours_model()), batch, ours=True)

    first_loss = {}
    for name, step in variants.items():
        t0 = time.perf_counter()
        for i in range(args.warmup):
            loss = step()
            if i == 0:
                first_loss[name] = loss
        print(
            f"warm-up {name}: {args.warmup} steps in {time.perf_counter() - t0:.1f}s, first loss "
            f"{first_loss.get(name, float('nan')):.4f}",
            file=sys.stderr,
        )

    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.steps):
        for name, step in variants.items():  # interleaved: each round times every variant once
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)

    tokens = BATCH * LENGTH
    tokens_per_s = {name: tokens / statistics.median(t) for name, t in times.items()}
    for name, t in times.items():
        print(
            f"{name:>20}: median {statistics.median(t) * 1000:8.1f} ms/step  "
            f"{tokens_per_s[name]:10,.0f} tokens/s  (x{tokens_per_s[name] / tokens_per_s['hf']:.2f} of HF)"
        )
    import transformers

    result = {
        "bench": "train_step",
        "config": {"layers": 3, "hidden": 256, "heads": 4, "vocab": 8000, "batch": BATCH, "length": LENGTH},
        "ours_tokens_per_s": round(tokens_per_s["ours"], 1),
        "hf_tokens_per_s": round(tokens_per_s["hf"], 1),
        "ratio": round(tokens_per_s["ours"] / tokens_per_s["hf"], 3),
        "variants_tokens_per_s": {k: round(v, 1) for k, v in tokens_per_s.items() if k not in ("ours", "hf")},
        "first_loss": {k: round(v, 4) for k, v in first_loss.items()},
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "machine": platform.processor() or platform.machine(),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
