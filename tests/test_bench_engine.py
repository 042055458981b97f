"""bench/engine.py's FLOP count, which turns throughput into GFLOP/s for its `ceiling`, against the
multiply-adds torch itself counts on the classifier (eager attention: every product is a matmul)."""

from __future__ import annotations

import torch
from conftest import load_bench
from torch.utils.flop_counter import FlopCounterMode

from model.bert import BertForSequenceClassification
from model.config import BertConfig


def test_classify_flops_counts_what_the_model_multiplies() -> None:
    bench = load_bench("engine")
    config = BertConfig(
        vocab_size=300,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config, num_labels=2).eval()
    length = 16
    ids = torch.randint(7, 300, (1, length))
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=torch.ones_like(ids))
    assert bench.classify_flops(config, length) == counter.get_total_flops()
