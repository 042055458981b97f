"""The in-process API: load a bundle, then fill-mask, next-sentence and classify on a text or a list of
them, each answering exactly what the web API answers for the same request (no server, no torch).

    from model.pipeline import pipeline

    nlp = pipeline("bundles/en")
    nlp.fill_mask("The capital of France is [MASK].", top_k=3)
    # {"model": "en", "results": [[{"score", "token", "token_str", "sequence"}, ...]], "truncated": [False]}
    nlp.next_sentence([("It rained.", "The streets were wet.")])  # results: [{"is_next", "score"}]
    nlp.classify(["a charming, affecting film", "dull"], top_k=1)  # results: [[{"label", "score"}], ...]

As with the API, a text longer than the model reads is refused (ValueError naming it) unless
`truncate=True`, which cuts it as everywhere in pocketbert and marks it in `truncated`; a list runs as one
batch. `Pipeline.engine` is the model.engine.Engine underneath, for lower-level use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model.engine import Engine
from model.tokenizer import full_length


def shape_fill_mask(per_text: list[list[list[dict]]]) -> list[Any]:
    """The API's fill-mask results: a text's predictions as one list when it has one [MASK], else one list
    per [MASK] (Hugging Face's fill-mask pipeline answers the same way)."""
    return [masks[0] if len(masks) == 1 else masks for masks in per_text]


def _as_list(inputs: str | Sequence[str]) -> list[str]:
    return [inputs] if isinstance(inputs, str) else list(inputs)


class Pipeline:
    """A bundle's tasks in-process; every method returns the web API's answer {model, results, truncated}."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _truncated(self, lengths: list[int], truncate: bool) -> list[bool]:
        """Per input, whether it is longer than the model reads; ValueError for one unless truncate."""
        limit = self.engine.max_length
        for index, tokens in enumerate(lengths):
            if tokens > limit and not truncate:
                raise ValueError(
                    f"input {index} is {tokens} tokens long ([CLS]/[SEP] included), more than model "
                    f"{self.engine.name!r} reads ({limit}); shorten it or pass truncate=True"
                )
        return [tokens > limit for tokens in lengths]

    def _answer(self, results: list[Any], truncated: list[bool]) -> dict[str, Any]:
        return {"model": self.engine.name, "results": results, "truncated": truncated}

    def fill_mask(
        self,
        inputs: str | Sequence[str],
        top_k: int = 5,
        include_sequence: bool = True,
        truncate: bool = False,
    ) -> dict[str, Any]:
        """The top_k tokens behind each [MASK] of each text (POST /fill-mask)."""
        texts = _as_list(inputs)
        ids = self.engine.tokenizer.encode_ids_batch(texts)  # once: the engine builds its batch from them
        truncated = self._truncated([full_length(i) for i in ids], truncate)
        results = self.engine.fill_mask(texts, top_k=top_k, with_sequence=include_sequence, ids=ids)
        return self._answer(shape_fill_mask(results), truncated)

    def next_sentence(
        self, pairs: tuple[str, str] | Sequence[tuple[str, str]], truncate: bool = False
    ) -> dict[str, Any]:
        """P(second follows first) per (first, second) pair (POST /next-sentence)."""
        pair_list = [pairs] if isinstance(pairs, tuple) else [tuple(p) for p in pairs]
        encode = self.engine.tokenizer.encode_ids_batch
        ids = list(zip(encode([a for a, _ in pair_list]), encode([b for _, b in pair_list]), strict=True))
        truncated = self._truncated([full_length(a, b) for a, b in ids], truncate)
        return self._answer(self.engine.next_sentence(pair_list, ids=ids), truncated)  # type: ignore[arg-type]

    def classify(
        self, inputs: str | Sequence[str], top_k: int | None = None, truncate: bool = False
    ) -> dict[str, Any]:
        """Each text's labels, best first: all of them, or the top_k (POST /classify)."""
        texts = _as_list(inputs)
        ids = self.engine.tokenizer.encode_ids_batch(texts)
        truncated = self._truncated([full_length(i) for i in ids], truncate)
        return self._answer(self.engine.classify(texts, top_k=top_k, ids=ids), truncated)


def pipeline(bundle_dir: str | Path, threads: int | None = None, plan: str | None = None) -> Pipeline:
    """Load and check a bundle (Engine.load: checksums, self-test, timed plans) and serve it in-process."""
    return Pipeline(Engine.load(bundle_dir, intra_op_threads=threads, plan=plan))
