"""A from-scratch BERT in PyTorch whose state_dict keys are Hugging Face's.

Read top to bottom: embeddings -> self-attention -> encoder layer -> encoder -> pooler -> the two
task models (pretraining with MLM + NSP heads, sequence classification). Shapes in comments use
B = batch, T = sequence length, H = hidden size, nh = heads, hd = head size, V = vocabulary,
N = number of predicted (masked) positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import BertConfig

IGNORE_INDEX = -100  # label value of positions that carry no MLM loss (torch's CrossEntropyLoss default)


@dataclass
class PreTrainingOutput:
    mlm_logits: torch.Tensor  # (B, T, V) full, (B, P, V) at masked_positions, or (N, V) when sparse
    nsp_logits: torch.Tensor  # (B, 2): index 0 = IsNext, 1 = NotNext (Hugging Face's convention)
    loss: torch.Tensor | None = None
    mlm_loss: torch.Tensor | None = None
    nsp_loss: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, nh, T, T), eager attention only


@dataclass
class ClassificationOutput:
    logits: torch.Tensor  # (B, num_labels)
    loss: torch.Tensor | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class BertEmbeddings(nn.Module):
    """Token + position + segment embeddings, summed, then LayerNorm and dropout."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(
            config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id
        )
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.size(1)
        position_ids = torch.arange(seq_len, device=input_ids.device).unsqueeze(0)  # (1, T)
        x = (
            self.word_embeddings(input_ids)  # (B, T, H)
            + self.position_embeddings(position_ids)  # (1, T, H), broadcast over the batch
            + self.token_type_embeddings(token_type_ids)  # (B, T, H)
        )
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    """Multi-head scaled dot-product attention over the unpadded positions."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_p = config.attention_probs_dropout_prob
        self.implementation = config.attn_implementation

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq_len, _ = x.shape
        return x.view(batch, seq_len, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        output_attentions: bool = False,
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden (B, T, H); mask (B, 1, 1, T) is added to the attention scores.

        queries (B, P, H): attend from these rows only (a subset of hidden's positions) while keys and
        values still come from every position; the output then has P rows instead of T.
        """
        q = self._split_heads(self.query(hidden if queries is None else queries))  # (B, nh, T or P, hd)
        k = self._split_heads(self.key(hidden))  # (B, nh, T, hd)
        v = self._split_heads(self.value(hidden))
        dropout_p = self.dropout_p if self.training else 0.0
        probs = None
        if self.implementation == "sdpa" and not output_attentions:
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        else:
            # The explicit form: exported to ONNX it matches onnxruntime's Attention fusion pattern
            # (MatMul -> Div -> Add mask -> Softmax -> MatMul), and it can return the attention map.
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)  # (B, nh, T or P, T)
            probs = torch.softmax(scores + mask, dim=-1)
            context = torch.matmul(F.dropout(probs, dropout_p, self.training), v)  # (B, nh, T or P, hd)
        batch, _, rows, _ = context.shape
        context = context.transpose(1, 2).reshape(batch, rows, -1)  # (B, T or P, H)
        return context, probs


class BertSelfOutput(nn.Module):
    """Projection of the attention output, dropout, then the residual LayerNorm (post-LN)."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)


class BertAttention(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.self = BertSelfAttention(config)
        self.output = BertSelfOutput(config)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        output_attentions: bool = False,
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        context, probs = self.self(hidden, mask, output_attentions, queries)
        return self.output(context, hidden if queries is None else queries), probs


class BertIntermediate(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))  # (B, T, I), exact (erf) GELU as in BERT


class BertOutput(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(hidden)) + residual)  # (B, T, H)


class BertLayer(nn.Module):
    """One post-LN transformer block: attention + residual LayerNorm, feed-forward + residual LayerNorm."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.attention = BertAttention(config)
        self.intermediate = BertIntermediate(config)
        self.output = BertOutput(config)

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        output_attentions: bool = False,
        queries: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attended, probs = self.attention(hidden, mask, output_attentions, queries)
        return self.output(self.intermediate(attended), attended), probs


class BertEncoder(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor,
        output_attentions: bool = False,
        output_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """output_positions (B, P): the last layer runs only at these positions (see BertModel), unless
        the attention maps are asked for: every layer then runs in full, and the rows are picked after."""
        attentions = []
        prune = output_positions is not None and not output_attentions
        for i, layer in enumerate(self.layer):
            queries = _rows(hidden, output_positions) if prune and i == len(self.layer) - 1 else None
            hidden, probs = layer(hidden, mask, output_attentions, queries)
            attentions.append(probs)
        if output_positions is not None and not prune:
            hidden = _rows(hidden, output_positions)
        return hidden, (tuple(attentions) if output_attentions else None)


def _rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """hidden (B, T, H) at positions (B, P) -> (B, P, H)."""
    index = positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1))  # (B, P, H)
    return torch.gather(hidden, 1, index)


class BertPooler(nn.Module):
    """tanh(dense(hidden state of [CLS])): the sentence summary that NSP and classification read."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden[:, 0]))  # (B, H)


class BertPreTrainedModel(nn.Module):
    """Shared weight initialisation (Hugging Face's: normal(0, 0.02), zero biases, unit LayerNorm)."""

    config: BertConfig

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())  # tied weights are counted once


class BertModel(BertPreTrainedModel):
    """The encoder: embeddings, N transformer layers, and the [CLS] pooler."""

    def __init__(self, config: BertConfig, add_pooling_layer: bool = True) -> None:
        super().__init__()
        self.config = config
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)
        self.pooler = BertPooler(config) if add_pooling_layer else None
        self.apply(self._init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        output_attentions: bool = False,
        output_positions: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, tuple[torch.Tensor, ...] | None]:
        """Returns (sequence output (B, T, H), pooled output (B, H) or None, attentions or None).

        output_positions (B, P): only these positions are read from the output, so the last layer runs
        only there (its keys and values still see every position). Exact, and a third less work for a
        3-layer model when P is small: [CLS] alone for classification, the masked positions for MLM.
        The sequence output is then (B, P, H) and the pooler reads its first row, so a caller that
        uses the pooled output puts position 0 ([CLS]) first.
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        # Additive mask (B, 1, 1, T): 0 where a key may be attended, the dtype's minimum where it is padding.
        mask = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
        hidden, attentions = self.encoder(hidden, mask, output_attentions, output_positions)
        pooled = self.pooler(hidden) if self.pooler is not None else None
        return hidden, pooled, attentions


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class BertLMPredictionHead(nn.Module):
    """MLM head: transform, then a decoder whose weight is the word embedding matrix, with its own bias."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)
        # Registered under both names, as in Hugging Face: `cls.predictions.bias` and `...decoder.bias`.
        self.bias = self.decoder.bias

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden))  # (..., H) -> (..., V)


class BertPreTrainingHeads(nn.Module):
    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.predictions = BertLMPredictionHead(config)
        self.seq_relationship = nn.Linear(config.hidden_size, 2)


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The positions that carry an MLM label, as a padded (B, P) index and its (B, P) validity mask.

    Each row lists its labelled positions first, in ascending order (P = the most labels in a row), so
    hidden[valid] follows the row-major order of labels[labels != IGNORE_INDEX].
    """
    selected = labels != IGNORE_INDEX  # (B, T)
    counts = selected.sum(dim=1)  # (B,)
    width = int(counts.max()) if counts.numel() else 0
    order = torch.sort((~selected).to(torch.uint8), dim=1, stable=True).indices[:, :width]  # (B, P)
    valid = torch.arange(width, device=labels.device) < counts[:, None]  # (B, P)
    return order, valid


class BertForPreTraining(BertPreTrainedModel):
    """BERT with the masked-language-model and next-sentence-prediction heads."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        self.config = config
        self.bert = BertModel(config)
        self.cls = BertPreTrainingHeads(config)
        self.apply(self._init_weights)
        self.cls.predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight  # tied

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        masked_positions: torch.Tensor | None = None,
        sparse_mlm: bool = False,
        output_attentions: bool = False,
    ) -> PreTrainingOutput:
        """MLM logits where asked, NSP logits, and the summed loss when labels are given.

        labels (B, T): original ids at the chosen positions, IGNORE_INDEX elsewhere.
        masked_positions (B, P): compute MLM logits only at these positions (fill-mask fast path).
        sparse_mlm: with labels, compute MLM logits only where labels != IGNORE_INDEX (training fast
        path: the V-wide decoder then runs on ~15% of the tokens instead of all of them).
        """
        # The positions the heads read: [CLS] (the pooler) then the MLM positions. With them the last
        # layer runs only there (BertModel's output_positions), without them at every position.
        positions, valid = masked_positions, None  # (B, P)
        if positions is None and sparse_mlm and labels is not None:
            positions, valid = labelled_positions(labels)
        output_positions = None
        if positions is not None:
            output_positions = torch.cat([torch.zeros_like(positions[:, :1]), positions], dim=1)  # (B, 1+P)
        hidden, pooled, attentions = self.bert(
            input_ids, token_type_ids, attention_mask, output_attentions, output_positions
        )
        mlm_targets = labels
        if positions is not None:
            hidden = hidden[:, 1:]  # (B, P, H)
            if valid is not None:
                hidden = hidden[valid]  # (N, H), in the order of labels[labels != IGNORE_INDEX]
                mlm_targets = labels[labels != IGNORE_INDEX]  # (N,)
            elif labels is not None:
                mlm_targets = torch.gather(labels, 1, positions)  # (B, P)
        mlm_logits = self.cls.predictions(hidden)
        nsp_logits = self.cls.seq_relationship(pooled)  # (B, 2)

        output = PreTrainingOutput(mlm_logits=mlm_logits, nsp_logits=nsp_logits, attentions=attentions)
        if mlm_targets is not None:
            output.mlm_loss = F.cross_entropy(
                mlm_logits.reshape(-1, mlm_logits.size(-1)),
                mlm_targets.reshape(-1),
                ignore_index=IGNORE_INDEX,
            )
            output.loss = output.mlm_loss
        if next_sentence_label is not None:
            output.nsp_loss = F.cross_entropy(nsp_logits, next_sentence_label.reshape(-1))
            output.loss = output.nsp_loss if output.loss is None else output.loss + output.nsp_loss
        return output


class BertForSequenceClassification(BertPreTrainedModel):
    """BERT with dropout + a linear classifier on the pooled [CLS] output."""

    def __init__(self, config: BertConfig, num_labels: int = 2) -> None:
        super().__init__()
        self.config = config
        self.num_labels = num_labels
        self.bert = BertModel(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        self.apply(self._init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_attentions: bool = False,
    ) -> ClassificationOutput:
        cls_position = torch.zeros_like(input_ids[:, :1])  # (B, 1): the pooler reads [CLS] only
        _, pooled, attentions = self.bert(
            input_ids, token_type_ids, attention_mask, output_attentions, output_positions=cls_position
        )
        logits = self.classifier(self.dropout(pooled))  # (B, num_labels)
        loss = F.cross_entropy(logits, labels) if labels is not None else None
        return ClassificationOutput(logits=logits, loss=loss, attentions=attentions)
