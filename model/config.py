"""Model configuration: one dataclass whose field names are Hugging Face's, so config.json moves both ways."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Fields that exist only for this project; they are left out of a Hugging Face config.json.
_LOCAL_FIELDS = ("attn_implementation",)


@dataclass
class BertConfig:
    """Shape and regularisation of a BERT encoder (defaults: the 3-layer, 256-hidden, 4-head pocketbert)."""

    vocab_size: int = 8000
    hidden_size: int = 256
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    # "sdpa": torch's fused scaled_dot_product_attention (training, fast);
    # "eager": explicit matmul + softmax, which can return the attention maps; the ONNX export traces it.
    attn_implementation: str = "sdpa"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.hidden_act != "gelu":
            raise ValueError(f"only hidden_act='gelu' (exact GELU) is supported, got {self.hidden_act!r}")
        if self.attn_implementation not in ("sdpa", "eager"):
            raise ValueError(
                f"attn_implementation must be 'sdpa' or 'eager', got {self.attn_implementation!r}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_hf_dict(self) -> dict[str, Any]:
        """The config.json that transformers' BertConfig reads."""
        data = {k: v for k, v in self.to_dict().items() if k not in _LOCAL_FIELDS}
        data.update(model_type="bert", position_embedding_type="absolute")
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BertConfig:
        """Build from our JSON or a Hugging Face config.json (unknown keys such as model_type are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | Path) -> BertConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
