"""Request and response bodies of the web API (pydantic v2); every field carries a description and an
example, which /docs and /openapi.json show.

Request bodies depend on the settings (how many inputs, how long a text, the largest top_k), so
`request_models(settings)` builds them per app: the limits are then both enforced by validation, before
any tokenization or inference, and visible in the schema (maxItems, maxLength, maximum). What only the
model can tell (token counts, whether a [MASK] survives truncation) is checked by app.registry.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from app.settings import Settings

MASK = "[MASK]"


def valid_text(text: str) -> str:
    """Refuse blank text. (A lone surrogate, "\\ud800" in JSON, never gets here: pydantic refuses it as
    not Unicode, and app.errors words that refusal.)"""
    if not text.strip():
        raise ValueError("the text is empty (or only whitespace)")
    return text


def json_integer(value: Any) -> Any:
    """A JSON Schema integer: 5 and 5.0 (a number with no fraction), never "5" or true, which pydantic's
    lax mode would take."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("Input should be an integer")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("Input should be an integer")
        return int(value)
    return value


def masked_text(text: str) -> str:
    if MASK not in text:
        raise ValueError("the text has no [MASK] token to fill")
    return text


def text_type(max_chars: int, masked: bool = False) -> Any:
    """A text of at most max_chars characters; the schema's pattern says what validation checks (the
    pattern is documentation only: the validators give the friendlier messages)."""
    if masked:
        schema = Field(max_length=max_chars, json_schema_extra={"pattern": r"\[MASK\]"})
        return Annotated[str, schema, AfterValidator(valid_text), AfterValidator(masked_text)]
    schema = Field(max_length=max_chars, json_schema_extra={"pattern": r"\S"})
    return Annotated[str, schema, AfterValidator(valid_text)]


def text_list(item: Any, max_items: int, field: str) -> Any:
    """`field`: one text or a list of 1..max_items texts, always validated as a list (a lone text becomes
    a list of one), so limits and errors read the same either way (loc: field, index)."""

    def as_list(value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ValueError(f"{field} must be a text or a list of texts")
        if not value:
            raise ValueError(f"{field} must hold at least one text")
        if len(value) > max_items:
            raise ValueError(f"at most {max_items} inputs per request, got {len(value)}")
        return value

    accepted = item | Annotated[list[item], Field(min_length=1, max_length=max_items)]
    return Annotated[list[item], BeforeValidator(as_list, json_schema_input_type=accepted)]


def pair_list(max_items: int, pair_item: type[BaseModel], text: Any) -> Any:
    """`pairs`: one pair or a list of them; a pair is {"first", "second"} or a two-text list [first,
    second] (as Python's tuples), so ["a", "b"] is one pair."""
    shape = 'each pair must be {"first": "...", "second": "..."} or a list of two texts ["...", "..."]'

    def as_pair(value: Any, where: str) -> Any:
        if isinstance(value, dict):
            return value
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
            return {"first": value[0], "second": value[1]}
        raise ValueError(f"{where}: {shape}")

    def as_pairs(value: Any) -> Any:
        if isinstance(value, dict) or (
            isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
        ):
            return [as_pair(value, "pairs")]
        if not isinstance(value, list):
            raise ValueError(f"pairs must be a pair or a list of pairs; {shape}")
        if not value:
            raise ValueError("pairs must hold at least one pair")
        if len(value) > max_items:
            raise ValueError(f"at most {max_items} pairs per request, got {len(value)}")
        return [as_pair(item, f"pairs[{index}]") for index, item in enumerate(value)]

    item = pair_item | Annotated[list[text], Field(min_length=2, max_length=2)]
    accepted = item | Annotated[list[item], Field(min_length=1, max_length=max_items)]
    return Annotated[list[pair_item], BeforeValidator(as_pairs, json_schema_input_type=accepted)]


MODEL_DESCRIPTION = (
    "Name of the model (bundle) to use, as listed by GET /v1/models. Default: the configured default "
    "model, else by language: text with Hangul goes to the Korean model, other text to the English one."
)
TRUNCATE_DESCRIPTION = (
    "Cut texts longer than the model's maximum length (a text keeps its start; a pair loses the front of "
    "`first` and the end of `second`) instead of refusing them with 422. Default false; the answer's "
    "`truncated` says which inputs were cut."
)


def _model_field() -> Any:
    # "" is refused rather than read as "no model": a client that meant a name and sent none should hear so
    return Field(None, min_length=1, description=MODEL_DESCRIPTION, examples=[None])


def _truncate_field() -> Any:
    return Field(False, strict=True, description=TRUNCATE_DESCRIPTION, examples=[False])


@dataclass(frozen=True)
class RequestModels:
    """The request bodies of one app, built from its settings."""

    fill_mask: type[BaseModel]
    next_sentence: type[BaseModel]
    classify: type[BaseModel]
    attention: type[BaseModel]


def request_models(settings: Settings) -> RequestModels:
    """Request bodies whose limits (and schema) follow `settings`."""
    max_chars, max_items, max_top_k = settings.max_text_chars, settings.max_inputs, settings.max_top_k
    plain = text_type(max_chars)
    fill_inputs = text_list(text_type(max_chars, masked=True), max_items, "inputs")
    classify_inputs = text_list(plain, max_items, "inputs")
    attention_text = text_type(settings.attention_max_chars)
    top_k_type = Annotated[int, Field(ge=1, le=max_top_k), BeforeValidator(json_integer)]

    class FillMaskRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"inputs": "The capital of France is [MASK].", "top_k": 5}]},
        )

        inputs: fill_inputs = Field(  # type: ignore[valid-type]
            description=f"A text, or a list of texts, each with 1 to {settings.max_masks_per_text} [MASK] "
            f"tokens ({settings.max_masks_per_request} per request at most).",
            examples=["The capital of France is [MASK].", ["I [MASK] this movie.", "[MASK] is a city."]],
        )
        top_k: top_k_type = Field(  # type: ignore[valid-type]
            min(5, max_top_k),
            description=f"Predictions returned per [MASK]; [MASK] tokens x top_k may not exceed "
            f"{settings.max_predictions} per request.",
            examples=[5],
        )
        include_sequence: bool = Field(
            True,
            strict=True,
            description="Return each prediction's `sequence` (the text with that mask filled in, as Hugging "
            "Face's pipeline does); false leaves it out, which makes answers much smaller.",
            examples=[True],
        )
        truncate: bool = _truncate_field()
        model: str | None = _model_field()

        @property
        def texts(self) -> list[str]:
            return self.inputs  # type: ignore[return-value]

    class SentencePair(BaseModel):
        model_config = ConfigDict(extra="forbid")

        first: plain = Field(description="Sentence A.", examples=["I went to the store."])  # type: ignore[valid-type]
        second: plain = Field(  # type: ignore[valid-type]
            description="Sentence B: does it follow A?", examples=["I bought some milk."]
        )

    pairs_type = pair_list(max_items, SentencePair, plain)

    class NextSentenceRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={
                "examples": [{"pairs": [{"first": "I went to the store.", "second": "I bought some milk."}]}]
            },
        )

        pairs: pairs_type = Field(  # type: ignore[valid-type]
            description='A sentence pair, or a list of them; a pair is {"first", "second"} or a list '
            "of two texts [first, second].",
            examples=[[{"first": "I went to the store.", "second": "I bought some milk."}]],
        )
        truncate: bool = _truncate_field()
        model: str | None = _model_field()

        @property
        def pair_list(self) -> list[tuple[str, str]]:
            return [(p.first, p.second) for p in self.pairs]  # type: ignore[attr-defined]

    class ClassifyRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid",
            json_schema_extra={"examples": [{"inputs": ["A wonderful, moving film.", "Dull."]}]},
        )

        inputs: classify_inputs = Field(  # type: ignore[valid-type]
            description="A text, or a list of texts, to classify.",
            examples=["A wonderful, moving film.", ["A wonderful, moving film.", "Dull and far too long."]],
        )
        top_k: top_k_type | None = Field(  # type: ignore[valid-type]
            None,
            description="Labels returned per text, best first; default: all of the model's labels.",
            examples=[1],
        )
        truncate: bool = _truncate_field()
        model: str | None = _model_field()

        @property
        def texts(self) -> list[str]:
            return self.inputs  # type: ignore[return-value]

    class AttentionRequest(BaseModel):
        model_config = ConfigDict(
            extra="forbid", json_schema_extra={"examples": [{"text": "The cat sat on the mat."}]}
        )

        text: attention_text = Field(  # type: ignore[valid-type]
            description="One text whose attention maps to return.", examples=["The cat sat on the mat."]
        )
        truncate: bool = _truncate_field()
        model: str | None = _model_field()

    return RequestModels(FillMaskRequest, NextSentenceRequest, ClassifyRequest, AttentionRequest)


# --- responses ----------------------------------------------------------------------------------------------
MODEL_ANSWERED = Field(description="Model that answered.", examples=["en"])
TRUNCATED = Field(
    description="Per input, in order: whether it was cut to the model's maximum length (only with "
    "`truncate`: true).",
    examples=[[False]],
)


class FillMaskPrediction(BaseModel):
    """One candidate for one [MASK], as in Hugging Face's fill-mask pipeline."""

    score: float = Field(description="Probability of this token at the mask.", examples=[0.42])
    token: int = Field(description="Vocabulary id of the token.", examples=[1234])
    token_str: str = Field(description="The token as text.", examples=["▁paris"])
    sequence: str | None = Field(
        None,
        description="The input with this mask filled in (absent when include_sequence is false).",
        examples=["the capital of france is paris."],
    )


class FillMaskResponse(BaseModel):
    model: str = MODEL_ANSWERED
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
    truncated: list[bool] = TRUNCATED


class NextSentenceResult(BaseModel):
    is_next: bool = Field(
        description="Whether `second` is judged to follow `first` (score >= 0.5).", examples=[True]
    )
    score: float = Field(description="Probability that `second` follows `first`.", examples=[0.93])


class NextSentenceResponse(BaseModel):
    model: str = MODEL_ANSWERED
    results: list[NextSentenceResult] = Field(description="One result per pair, in order.")
    truncated: list[bool] = TRUNCATED


class LabelScore(BaseModel):
    label: str = Field(description="A label of the model's classifier.", examples=["positive"])
    score: float = Field(description="Probability of the label.", examples=[0.97])


class ClassifyResponse(BaseModel):
    model: str = MODEL_ANSWERED
    results: list[list[LabelScore]] = Field(
        description="One entry per input, in order: its labels sorted by score, best first.",
        examples=[[[{"label": "positive", "score": 0.97}, {"label": "negative", "score": 0.03}]]],
    )
    truncated: list[bool] = TRUNCATED


class AttentionResponse(BaseModel):
    model: str = MODEL_ANSWERED
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
    truncated: bool = Field(description="Whether the text was cut to the model's maximum length.")


# --- service --------------------------------------------------------------------------------------------
class HealthResponse(BaseModel):
    status: str = Field(description="'ok' while the process serves HTTP.", examples=["ok"])


class ReadyResponse(BaseModel):
    status: str = Field(description="'ready' once every bundle is loaded and warmed up.", examples=["ready"])
    models: list[str] = Field(description="Names of the loaded models.", examples=[["en", "ko"]])
    errors: list[str] = Field(default_factory=list, description="Why a configured bundle is not served.")


class ModelInfo(BaseModel):
    name: str = Field(description="Name to pass as `model`.", examples=["en"])
    default: bool = Field(description="Whether requests without `model` use it.", examples=[True])
    language: str = Field(
        description="Language of the model (bundle.json's `language`, else guessed from its vocabulary); "
        "requests without `model` are routed by it.",
        examples=["en"],
    )
    tasks: list[str] = Field(
        description="Endpoints it serves (a bundle without a classifier serves no classify).",
        examples=[["fill-mask", "next-sentence", "classify", "attention"]],
    )
    max_length: int = Field(
        description="Longest input in tokens ([CLS] and [SEP] included); longer ones need truncate.",
        examples=[128],
    )
    labels: list[str] = Field(
        description="Classifier labels (empty without a classifier).", examples=[["negative", "positive"]]
    )
    headline: dict[str, float] = Field(
        description="Headline figures from the bundle's training metrics (validation MLM and NSP "
        "accuracy, fine-tuning accuracy), where recorded.",
        examples=[{"mlm_accuracy": 0.52, "nsp_accuracy": 0.88, "test_acc_mean": 0.86}],
    )
    config: dict[str, Any] = Field(description="Model architecture (Hugging Face BertConfig fields).")
    metrics: dict[str, Any] = Field(description="Training and evaluation metrics recorded in the bundle.")
    bundle: dict[str, Any] = Field(description="The bundle's whole bundle.json.")


class ModelsResponse(BaseModel):
    default: str | None = Field(
        description="The default model: the configured one, which answers every request that names no "
        "model, else the first by name, which answers text of a language no loaded model has.",
        examples=["en"],
    )
    routing: str = Field(
        description="How a request without `model` is routed: 'default' (to the default model) or "
        "'language' (Hangul to the Korean model, other text to the English one).",
        examples=["language"],
    )
    models: list[ModelInfo] = Field(description="Every loaded model.")


class ErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong.", examples=["queue full; retry later"])


class ServerErrorResponse(BaseModel):
    detail: str = Field(description="What went wrong, without internals.", examples=["internal error"])
    error_id: str = Field(
        description="Identifier of this failure, also written to the server's log with the details.",
        examples=["3f2a9c1e"],
    )
