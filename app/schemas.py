"""Request and response bodies of the web API (pydantic v2); every field carries a description and an
example, which /docs and /openapi.json show.

Limits that depend on settings (how many inputs, how long a text) are checked by the routes and
reported in the same 422 format as the static ones here.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOP_K = 50


def _require_text(text: str, where: str) -> str:
    if not text.strip():
        raise ValueError(f"{where} is empty")
    return text


def _as_list(value: str | list[str], field: str) -> list[str]:
    """One text or a list of them -> a non-empty list of non-empty texts."""
    texts = [value] if isinstance(value, str) else value
    if not texts:
        raise ValueError(f"{field} must hold at least one text")
    for index, text in enumerate(texts):
        _require_text(text, f"{field}[{index}]" if not isinstance(value, str) else field)
    return texts


class _TextsRequest(BaseModel):
    """A request whose `inputs` is one text or a list of texts (declared by each subclass)."""

    @field_validator("inputs", check_fields=False)
    @classmethod
    def _texts(cls, value: str | list[str]) -> list[str]:
        return _as_list(value, "inputs")

    @property
    def texts(self) -> list[str]:
        """`inputs` as a list (the validator already made it one)."""
        return [self.inputs] if isinstance(self.inputs, str) else self.inputs  # type: ignore[attr-defined]


MODEL_FIELD = Field(
    None,
    description="Name of the model (bundle) to use, as listed by GET /v1/models; "
    "default: the server's default model.",
    examples=["en"],
)


# --- fill-mask ----------------------------------------------------------------------------------------
class FillMaskRequest(_TextsRequest):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"inputs": "The capital of France is [MASK].", "top_k": 5}]},
    )

    inputs: str | list[str] = Field(
        description="A text, or a list of texts, each with at least one [MASK] to fill.",
        examples=["The capital of France is [MASK].", ["I [MASK] this movie.", "[MASK] is a city."]],
    )
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="Predictions returned per [MASK].", examples=[5])
    model: str | None = MODEL_FIELD


class FillMaskPrediction(BaseModel):
    """One candidate for one [MASK], as in Hugging Face's fill-mask pipeline."""

    score: float = Field(description="Probability of this token at the mask.", examples=[0.42])
    token: int = Field(description="Vocabulary id of the token.", examples=[1234])
    token_str: str = Field(description="The token as text.", examples=["▁paris"])
    sequence: str = Field(
        description="The input with this mask filled in.", examples=["the capital of france is paris."]
    )


class FillMaskResponse(BaseModel):
    model: str = Field(description="Model that answered.", examples=["en"])
    results: list[list[FillMaskPrediction] | list[list[FillMaskPrediction]]] = Field(
        description=(
            "One entry per input, in order: the top_k predictions of its [MASK] or, when the text holds "
            "several masks, one such list per mask in order."
        ),
        examples=[
            [
                [
                    {
                        "score": 0.42,
                        "token": 1234,
                        "token_str": "▁paris",
                        "sequence": "the capital of france is paris.",
                    }
                ]
            ]
        ],
    )


# --- next sentence ------------------------------------------------------------------------------------
class SentencePair(BaseModel):
    model_config = ConfigDict(extra="forbid")

    first: str = Field(description="Sentence A.", examples=["I went to the store."])
    second: str = Field(description="Sentence B: does it follow A?", examples=["I bought some milk."])

    @field_validator("first", "second")
    @classmethod
    def _text(cls, value: str, info: Any) -> str:
        return _require_text(value, info.field_name)


class NextSentenceRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"pairs": [{"first": "I went to the store.", "second": "I bought some milk."}]}]
        },
    )

    pairs: SentencePair | list[SentencePair] = Field(
        description="A sentence pair, or a list of them.",
        examples=[[{"first": "I went to the store.", "second": "I bought some milk."}]],
    )
    model: str | None = MODEL_FIELD

    @field_validator("pairs")
    @classmethod
    def _pairs(cls, value: SentencePair | list[SentencePair]) -> list[SentencePair]:
        pairs = [value] if isinstance(value, SentencePair) else value
        if not pairs:
            raise ValueError("pairs must hold at least one pair")
        return pairs

    @property
    def pair_list(self) -> list[SentencePair]:
        """`pairs` as a list (the validator already made it one)."""
        return [self.pairs] if isinstance(self.pairs, SentencePair) else self.pairs


class NextSentenceResult(BaseModel):
    is_next: bool = Field(
        description="Whether `second` is judged to follow `first` (score >= 0.5).", examples=[True]
    )
    score: float = Field(description="Probability that `second` follows `first`.", examples=[0.93])


class NextSentenceResponse(BaseModel):
    model: str = Field(description="Model that answered.", examples=["en"])
    results: list[NextSentenceResult] = Field(description="One result per pair, in order.")


# --- classification -------------------------------------------------------------------------------------
class ClassifyRequest(_TextsRequest):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"inputs": ["A wonderful, moving film.", "Dull."]}]}
    )

    inputs: str | list[str] = Field(
        description="A text, or a list of texts, to classify.",
        examples=["A wonderful, moving film.", ["A wonderful, moving film.", "Dull and far too long."]],
    )
    top_k: int | None = Field(
        None,
        ge=1,
        le=MAX_TOP_K,
        description="Labels returned per text, best first; default: all of the model's labels.",
        examples=[1],
    )
    model: str | None = MODEL_FIELD


class LabelScore(BaseModel):
    label: str = Field(description="A label of the model's classifier.", examples=["positive"])
    score: float = Field(description="Probability of the label.", examples=[0.97])


class ClassifyResponse(BaseModel):
    model: str = Field(description="Model that answered.", examples=["en"])
    results: list[list[LabelScore]] = Field(
        description="One entry per input, in order: its labels sorted by score, best first.",
        examples=[[[{"label": "positive", "score": 0.97}, {"label": "negative", "score": 0.03}]]],
    )


# --- attention ------------------------------------------------------------------------------------------
class AttentionRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "The cat sat on the mat."}]}
    )

    text: str = Field(
        description="One text whose attention maps to return.", examples=["The cat sat on the mat."]
    )
    model: str | None = MODEL_FIELD

    @field_validator("text")
    @classmethod
    def _text(cls, value: str) -> str:
        return _require_text(value, "text")


class AttentionResponse(BaseModel):
    model: str = Field(description="Model that answered.", examples=["en"])
    tokens: list[str] = Field(
        description="The T tokens the model saw, [CLS] and [SEP] included.",
        examples=[["[CLS]", "▁the", "▁cat", "[SEP]"]],
    )
    num_layers: int = Field(description="Encoder layers.", examples=[3])
    num_heads: int = Field(description="Attention heads per layer.", examples=[4])
    attentions: list[list[list[list[float]]]] = Field(
        description="attentions[layer][head][i][j]: how much token i attends to token j (rows sum to 1).",
        examples=[[[[[0.5, 0.5], [0.25, 0.75]]]]],
    )


# --- service --------------------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: str = Field(description="'ok' while the process serves HTTP.", examples=["ok"])


class ReadyResponse(BaseModel):
    status: str = Field(description="'ready', or 'loading' / 'failed' (with HTTP 503).", examples=["ready"])
    models: list[str] = Field(description="Names of the loaded models.", examples=[["en", "ko"]])
    errors: list[str] = Field(default_factory=list, description="Why a configured bundle is not served.")


class ModelInfo(BaseModel):
    name: str = Field(description="Name to pass as `model`.", examples=["en"])
    default: bool = Field(description="Whether requests without `model` use it.", examples=[True])
    tasks: list[str] = Field(
        description="Endpoints it serves.", examples=[["fill-mask", "next-sentence", "classify"]]
    )
    max_length: int = Field(
        description="Longest input in tokens; longer inputs are truncated.", examples=[128]
    )
    labels: list[str] = Field(description="Classifier labels.", examples=[["negative", "positive"]])
    config: dict[str, Any] = Field(description="Model architecture (Hugging Face BertConfig fields).")
    metrics: dict[str, Any] = Field(description="Training and evaluation metrics recorded in the bundle.")
    bundle: dict[str, Any] = Field(description="The bundle's whole bundle.json.")


class ModelsResponse(BaseModel):
    default: str | None = Field(description="Name of the default model.", examples=["en"])
    models: list[ModelInfo] = Field(description="Every loaded model.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong.", examples=["queue full; retry later"])
