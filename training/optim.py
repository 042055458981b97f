"""Optimiser and learning-rate schedule shared by pretraining and fine-tuning.

AdamW with weight decay only on weight matrices (BERT's recipe: decaying biases and LayerNorm gains only
slows training), and a linear warmup followed by a linear decay to zero.
"""

from __future__ import annotations

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: matrices (decayed) and biases / LayerNorm / other 1-d tensors (not decayed).

    Tied parameters (the MLM decoder shares the word embeddings) appear once: `named_parameters`
    deduplicates them, so the optimiser never steps one tensor twice.
    """
    decay, no_decay = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (decay if param.dim() >= 2 else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.01,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-6,
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """torch's AdamW (bias-corrected, as Mosbach et al. 2020 recommend for stable fine-tuning).

    fused=None picks the fused kernel where torch has one for the parameters' device (CPU and CUDA in
    torch >= 2.4): one kernel over all tensors instead of a Python loop (see bench/train_step.py).
    """
    if fused is None:
        device = next(model.parameters()).device.type
        fused = device in ("cpu", "cuda")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)


def warmup_linear_decay(step: int, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: 0 -> 1 linearly over warmup_steps, then 1 -> 0 linearly at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps  # the first step already learns a little
    if total_steps <= warmup_steps:
        return 1.0
    return max(0.0, (total_steps - step) / (total_steps - warmup_steps))


def build_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR over `warmup_linear_decay`; its state_dict (the step count) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_linear_decay(step, warmup_steps, total_steps)
    )
