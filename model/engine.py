"""The inference engine: a verified bundle, its onnxruntime sessions and its tokenizer, without torch.

Every method takes a list and runs it as ONE padded batch (padded to its longest member), because the
web layer batches concurrent requests itself. Padding is masked out inside the model, so the result for
a text does not depend on what else is in the batch (beyond float noise).

Graphs of a bundle (see training/export.py):
    pretraining.onnx  input_ids, token_type_ids, attention_mask, masked_positions (B, P)
                      -> mlm_logits (B, P, V),
                      nsp_logits (B, 2). The V-wide decoder runs only at masked_positions.
    classifier.onnx   input_ids, token_type_ids, attention_mask -> logits (B, num_labels)
    attention.onnx    input_ids, token_type_ids, attention_mask -> attentions (L, B, heads, T, T), fp32 and
                      unfused (a fused Attention op cannot return its probabilities), loaded on first use.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model.bundle import (
    ATTENTION_FILE,
    CLASSIFIER_FILE,
    PRETRAINING_FILE,
    TOKENIZER_FILE,
    BundleError,
    load_manifest,
)
from model.tokenizer import BOS_ID, CLS_ID, EOS_ID, MASK_ID, PAD_ID, SEP_ID, BatchEncoding, Tokenizer

ENCODER_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
PRETRAINING_INPUTS = (*ENCODER_INPUTS, "masked_positions")
IS_NEXT = 0  # NSP logit index of "B follows A" (Hugging Face's convention)
_FRAME_IDS = (PAD_ID, BOS_ID, EOS_ID, CLS_ID, SEP_ID)  # dropped from a filled-in "sequence"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the max so large logits do not overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def make_session(path: Path, intra_op_threads: int | None = None) -> ort.InferenceSession:
    """A CPU session; intra_op_threads=None lets onnxruntime use every core."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1  # the graphs are a single chain: parallelism is inside operators
    if intra_op_threads:
        options.intra_op_num_threads = intra_op_threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable graphs
        raise BundleError(f"bundle {path.parent}: onnxruntime cannot load {path.name} ({exc})") from exc


def _check_inputs(session: ort.InferenceSession, path: Path, expected: Sequence[str]) -> None:
    found = tuple(i.name for i in session.get_inputs())
    if sorted(found) != sorted(expected):
        raise BundleError(f"bundle {path.parent}: {path.name} has inputs {found}, expected {tuple(expected)}")


class Engine:
    """Fill-mask, next-sentence and classification over one bundle's ONNX graphs."""

    def __init__(
        self,
        folder: str | Path,
        info: dict[str, Any],
        name: str | None = None,
        intra_op_threads: int | None = None,
        files: dict[str, str] | None = None,
    ) -> None:
        """Open the graphs of `folder` WITHOUT verifying checksums (use `Engine.load` for a bundle).

        files maps the roles (tokenizer, pretraining, classifier, attention) to other file names; export
        uses it to run its checks on intermediate graphs before the bundle exists.
        """
        folder = Path(folder)
        names = {
            "tokenizer": TOKENIZER_FILE,
            "pretraining": PRETRAINING_FILE,
            "classifier": CLASSIFIER_FILE,
            "attention": ATTENTION_FILE,
            **(files or {}),
        }
        self.folder = folder
        self.info = info
        self.name = name or info.get("name") or folder.name
        self.max_length = int(info["max_length"])
        self.label_names = list(info["label_names"])
        self.intra_op_threads = intra_op_threads
        self.tokenizer = Tokenizer(folder / names["tokenizer"])
        self._paths = {role: folder / file for role, file in names.items()}
        self.pretraining = make_session(self._paths["pretraining"], intra_op_threads)
        _check_inputs(self.pretraining, self._paths["pretraining"], PRETRAINING_INPUTS)
        self.classifier = make_session(self._paths["classifier"], intra_op_threads)
        _check_inputs(self.classifier, self._paths["classifier"], ENCODER_INPUTS)
        self._attention: ort.InferenceSession | None = None

    @classmethod
    def load(cls, bundle_dir: str | Path, intra_op_threads: int | None = None) -> Engine:
        """Verify a bundle (format version, files, checksums) and open it; raises BundleError."""
        info = load_manifest(bundle_dir)
        return cls(bundle_dir, info, intra_op_threads=intra_op_threads)

    # --- helpers ----------------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], text_pairs: Sequence[str] | None = None) -> BatchEncoding:
        """The project's one tokenizer, truncated to the bundle's max_length, padded to the longest text."""
        return self.tokenizer.encode_batch(list(texts), text_pairs, max_length=self.max_length)

    def run_pretraining(
        self, batch: BatchEncoding, masked_positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mlm_logits (B, P, V) at masked_positions, nsp_logits (B, 2))."""
        feeds = {**batch.as_dict(), "masked_positions": masked_positions.astype(np.int64)}
        mlm_logits, nsp_logits = self.pretraining.run(["mlm_logits", "nsp_logits"], feeds)
        return mlm_logits, nsp_logits

    def run_classifier(self, batch: BatchEncoding) -> np.ndarray:
        return self.classifier.run(["logits"], batch.as_dict())[0]

    @property
    def attention_session(self) -> ort.InferenceSession:
        """Opened on first use: most deployments never draw an attention map."""
        if self._attention is None:
            self._attention = make_session(self._paths["attention"], self.intra_op_threads)
            _check_inputs(self._attention, self._paths["attention"], ENCODER_INPUTS)
        return self._attention

    # --- tasks ------------------------------------------------------------------------------------
    def fill_mask(self, texts: list[str], top_k: int = 5) -> list[list[list[dict]]]:
        """Per text, per [MASK] in order: the top_k predictions {score, token, token_str, sequence}."""
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not texts:
            return []
        batch = self.encode(texts)
        is_mask = batch.input_ids == MASK_ID
        for row, text in enumerate(texts):
            if not is_mask[row].any():
                where = "" if "[MASK]" not in text else f" within the first {self.max_length} tokens"
                raise ValueError(f"text {row} has no [MASK] token{where}: {text!r}")
        positions = np.zeros((len(texts), int(is_mask.sum(1).max())), dtype=np.int64)  # padding -> position 0
        for row in range(len(texts)):
            found = np.flatnonzero(is_mask[row])
            positions[row, : len(found)] = found
        mlm_logits, _ = self.run_pretraining(batch, positions)
        probs = softmax(mlm_logits)  # (B, P, V)
        top_k = min(top_k, probs.shape[-1])
        results = []
        for row in range(len(texts)):
            ids = batch.input_ids[row][batch.attention_mask[row] == 1]
            masks = np.flatnonzero(is_mask[row])
            results.append([self._predictions(ids, pos, probs[row, i], top_k) for i, pos in enumerate(masks)])
        return results

    def _predictions(self, ids: np.ndarray, position: int, probs: np.ndarray, top_k: int) -> list[dict]:
        # argpartition finds the top_k of the V scores in O(V); only those k are then sorted.
        candidates = (
            np.argpartition(-probs, top_k - 1)[:top_k] if top_k < probs.size else np.arange(probs.size)
        )
        best = candidates[np.lexsort((candidates, -probs[candidates]))]  # by score, ties by id
        out = []
        for token in best:
            filled = ids.copy()
            filled[position] = token
            # As Hugging Face's pipeline: the text with this mask filled; other masks stay visible.
            kept = [int(t) for t in filled if t not in _FRAME_IDS]
            out.append(
                {
                    "score": float(probs[token]),
                    "token": int(token),
                    "token_str": self.tokenizer.decode([int(token)], skip_special_tokens=False),
                    "sequence": self.tokenizer.decode(kept, skip_special_tokens=False),
                }
            )
        return out

    def next_sentence(self, pairs: list[tuple[str, str]]) -> list[dict]:
        """Per pair: {"is_next": bool, "score": P(second follows first)}."""
        if not pairs:
            return []
        batch = self.encode([a for a, _ in pairs], [b for _, b in pairs])
        dummy = np.zeros((len(pairs), 1), dtype=np.int64)  # one MLM position: the decoder cost is negligible
        _, nsp_logits = self.run_pretraining(batch, dummy)
        scores = softmax(nsp_logits)[:, IS_NEXT]
        return [{"is_next": bool(score >= 0.5), "score": float(score)} for score in scores]

    def classify(self, texts: list[str], top_k: int | None = None) -> list[list[dict]]:
        """Per text: [{"label", "score"}] sorted by score, all labels or the top_k."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not texts:
            return []
        probs = softmax(self.run_classifier(self.encode(texts)))
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[: top_k or len(row)]
            results.append([{"label": self.label_names[i], "score": float(row[i])} for i in order])
        return results

    def attention(self, text: str) -> dict:
        """{"tokens": [str] (T), "attentions": [layer][head][T][T]} for one text (the pretraining encoder)."""
        batch = self.encode([text])
        (attentions,) = self.attention_session.run(["attentions"], batch.as_dict())  # (L, 1, nh, T, T)
        tokens = [self.tokenizer.id_to_token(int(i)) for i in batch.input_ids[0]]
        return {"tokens": tokens, "attentions": attentions[:, 0].astype(float).tolist()}
