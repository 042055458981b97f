"""The inference engine: a verified bundle, its onnxruntime sessions and its tokenizer, without torch.

Every method takes a list and runs it as ONE padded batch (padded to its longest member), because the
web layer batches concurrent requests itself. Padding is masked out inside the model, so the result for
a text does not depend on what else is in the batch (beyond float noise).

Graphs of a bundle (see training/export.py):
    pretraining.onnx  input_ids, token_type_ids, attention_mask, masked_positions (B, P)
                      -> mlm_logits (B, P, V),
                      nsp_logits (B, 2). The V-wide decoder runs only at masked_positions.
    classifier.onnx   input_ids, token_type_ids, attention_mask -> logits (B, num_labels); optional
    attention.onnx    input_ids, token_type_ids, attention_mask -> attentions (L, B, heads, T, T),
                      unfused (a fused Attention op cannot return its probabilities), loaded on first use;
                      optional

`Engine.load` refuses a bundle whose parts do not fit together (tokenizer vs vocabulary, labels vs
classifier) and runs the bundle's reference self-test when it has one; `write_reference` makes that
self-test from a bundle's own graphs (export calls it on the finished bundle). It then chooses how each
graph runs per batch-size band on this CPU (threads, spinning, batch chunks: model/runtime.py), timed
once and cached outside the bundle.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from model.bundle import (
    ATTENTION_FILE,
    CLASSIFIER_FILE,
    MANIFEST,
    PRETRAINING_FILE,
    REFERENCE_ATOL,
    REFERENCE_FILE,
    REFERENCE_FORMAT,
    REFERENCE_RTOL,
    REFERENCE_RTOL_INT8,
    TOKENIZER_FILE,
    BundleError,
    add_reference,
    check_cases,
    load_manifest,
    read_manifest,
    read_reference,
)
from model.plans import (
    BANDS,
    Band,
    Plan,
    available_cores,
    plan_setting,
    read_cached,
    tuning_lock,
    write_cached,
)
from model.runtime import TUNE_LENGTH, GraphRunner, cache_key, make_session
from model.tokenizer import (
    BOS_ID,
    CLS_ID,
    EOS_ID,
    IS_NEXT,
    MASK_ID,
    NUM_SPECIAL,
    PAD_ID,
    SEP_ID,
    BatchEncoding,
    Tokenizer,
    TokenizerError,
    file_sha256,
)

log = logging.getLogger(__name__)
ENCODER_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
PRETRAINING_INPUTS = (*ENCODER_INPUTS, "masked_positions")
_FRAME_IDS = (PAD_ID, BOS_ID, EOS_ID, CLS_ID, SEP_ID)  # dropped from a filled-in "sequence"
HANGUL = re.compile("[\u1100-\u11ff\u3130-\u318f\uac00-\ud7a3]")
# A vocabulary with at least this share of Hangul pieces is a Korean model's (a bilingual corpus that
# is mostly English still gives an English tokenizer a few Hangul pieces).
KOREAN_VOCAB_SHARE = 0.2
# Reference inputs: English and Korean, one and several masks, a pair (see write_reference).
REFERENCE_INPUTS: tuple[tuple[str, str | None], ...] = (
    ("the cat sat on the [MASK].", None),
    ("오늘은 날씨가 [MASK] 좋다.", None),
    ("[MASK] went to the store and bought [MASK] milk.", "it was a [MASK] day."),
)
REFERENCE_TOP = 8  # MLM logits kept per masked position: the top ones plus the logsumexp of all


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, shifted by the max so large logits do not overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def logsumexp(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    return (top + np.log(np.exp(logits - top).sum(axis=-1, keepdims=True)))[..., 0]


def _check_inputs(session: ort.InferenceSession, path: Path, expected: Sequence[str]) -> None:
    found = tuple(i.name for i in session.get_inputs())
    if sorted(found) != sorted(expected):
        raise BundleError(f"bundle {path.parent}: {path.name} has inputs {found}, expected {tuple(expected)}")


def detect_language(tokenizer: Tokenizer) -> str:
    """'ko' when a good share of the vocabulary's pieces hold Hangul, else 'en' (bundles that do not
    record their language: the project trains Korean and English models)."""
    pieces = [tokenizer.id_to_token(i) for i in range(NUM_SPECIAL, tokenizer.vocab_size)]
    hangul = sum(1 for piece in pieces if HANGUL.search(piece))
    return "ko" if pieces and hangul / len(pieces) >= KOREAN_VOCAB_SHARE else "en"


class Engine:
    """Fill-mask, next-sentence, classification and attention maps over one bundle's ONNX graphs."""

    def __init__(
        self,
        folder: str | Path,
        info: dict[str, Any],
        name: str | None = None,
        intra_op_threads: int | None = None,
        files: dict[str, str] | None = None,
        spinning: bool = True,
    ) -> None:
        """Open the graphs of `folder` WITHOUT verifying checksums (use `Engine.load` for a bundle).

        files maps the roles (tokenizer, pretraining, classifier, attention) to other file names; export
        uses it to run its checks on intermediate graphs before the bundle exists. The classifier and
        attention graphs are optional: used when `files` names them, when info lists them, or (info
        without a file list) when they exist.
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
        self.label_names = list(info.get("label_names") or [])
        self.intra_op_threads = intra_op_threads
        self._paths = {role: folder / file for role, file in names.items()}
        listed = info.get("files")
        self._has = {
            role: role in (files or {})
            or (self._paths[role].is_file() if listed is None else names[role] in listed)
            for role in ("classifier", "attention")
        }
        self.tokenizer = self._open_tokenizer()
        self.threads = intra_op_threads or available_cores()  # the thread budget of each graph
        self.spinning = spinning  # may onnxruntime's threads spin between operators (not beside a server)
        self._runners = {"pretraining": self._open_graph("pretraining", PRETRAINING_INPUTS)}
        self.pretraining = self._runners["pretraining"].default
        self.classifier: ort.InferenceSession | None = None
        if self._has["classifier"]:
            self._runners["classifier"] = self._open_graph("classifier", ENCODER_INPUTS)
            self.classifier = self._runners["classifier"].default
            self._check_labels()
        self._attention: ort.InferenceSession | None = None

    def _open_graph(self, role: str, inputs: Sequence[str]) -> GraphRunner:
        runner = GraphRunner(self._paths[role], self.threads, ENCODER_INPUTS, self.spinning)
        _check_inputs(runner.default, self._paths[role], inputs)
        return runner

    @classmethod
    def load(
        cls,
        bundle_dir: str | Path,
        intra_op_threads: int | None = None,
        plan: str | None = None,
        spinning: bool = True,
    ) -> Engine:
        """Verify a bundle (format version, files, checksums, its reference self-test) and open it;
        raises BundleError naming the file at fault. `plan` is how the graphs run (see choose_plans;
        default: POCKETBERT_ENGINE_PLAN, else auto); spinning=False keeps onnxruntime's threads from
        spinning between operators (a server's event loop needs that CPU)."""
        info = load_manifest(bundle_dir)
        engine = cls(bundle_dir, info, intra_op_threads=intra_op_threads, spinning=spinning)
        engine.check_reference()
        engine.choose_plans(plan)
        return engine

    # --- how the graphs run (model/runtime.py) --------------------------------------------------------
    def choose_plans(self, plan: str | None = None) -> None:
        """Set how each graph runs per batch-size band: `auto` times the candidate plans once for this
        CPU, graph and thread budget and caches the choice; `fixed` runs every batch on all threads
        (the engine before tuning existed); anything else is one plan for every band, e.g.
        `threads=1,chunks=2`. Raises ValueError for a plan it cannot read."""
        setting = plan_setting(plan)
        for role, runner in self._runners.items():
            if setting == "auto":
                self._tune(role, runner)
            else:
                chosen = runner.fixed if setting == "fixed" else Plan.parse(setting)
                runner.plans = dict.fromkeys(BANDS, chosen)

    def _tune(self, role: str, runner: GraphRunner) -> None:
        """The cached plans for this graph on this CPU, else time them (one process at a time) and cache."""
        key = cache_key(runner, self._graph_sha256(role))
        cached = read_cached(key)
        if cached is None:
            with tuning_lock(key):  # another worker of the same server may time it meanwhile: read again
                cached = read_cached(key) or self._time_plans(role, runner, key)
        runner.plans.update(cached)

    def _time_plans(self, role: str, runner: GraphRunner, key: dict[str, Any]) -> dict[Band, Plan]:
        outputs = [o.name for o in runner.default.get_outputs()]
        timings = runner.tune(outputs, lambda size: self._timing_feeds(role, size))
        write_cached(key, runner.plans, timings)
        log.info("%s %s: timed plans %s", self.name, role, timings)
        return dict(runner.plans)

    def _graph_sha256(self, role: str) -> str:
        recorded = (self.info.get("files") or {}).get(self._paths[role].name)
        return str(recorded) if recorded else file_sha256(self._paths[role])

    def _timing_feeds(self, role: str, batch_size: int) -> dict[str, np.ndarray]:
        """A synthetic batch for timing: random ordinary pieces, lengths spread from TUNE_LENGTH tokens
        down to half of it (serving pads a batch to its longest text), one mask per text."""
        rng = np.random.default_rng(batch_size)
        width = min(TUNE_LENGTH, self.max_length)
        lengths = np.linspace(width, max(3, width // 2), batch_size).astype(np.int64)
        mask = (np.arange(width)[None, :] < lengths[:, None]).astype(np.int64)
        ids = rng.integers(NUM_SPECIAL, self.tokenizer.vocab_size, size=(batch_size, width)) * mask
        ids[:, 0] = CLS_ID
        feeds = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}
        if role == "pretraining":
            feeds["masked_positions"] = np.ones((batch_size, 1), dtype=np.int64)
        return feeds

    @property
    def plans(self) -> dict[str, dict[str, str]]:
        """Per graph, per batch-size band: the plan it runs with."""
        return {
            role: {str(band): str(plan) for band, plan in runner.plans.items()}
            for role, runner in self._runners.items()
        }

    def close(self) -> None:
        """Stop the threads that run batch chunks (sessions are freed with the engine)."""
        for runner in self._runners.values():
            runner.close()

    # --- consistency ------------------------------------------------------------------------------
    def _open_tokenizer(self) -> Tokenizer:
        path = self._paths["tokenizer"]
        try:
            tokenizer = Tokenizer(path)
        except TokenizerError as exc:
            raise BundleError(f"bundle {self.folder}: {path.name} is not a usable tokenizer ({exc})") from exc
        recorded = (self.info.get("sources") or {}).get("tokenizer_sha256")
        if recorded and tokenizer.checksum != recorded:
            raise BundleError(
                f"bundle {self.folder}: {path.name} is not the tokenizer the model was trained with "
                f"(sha256 {tokenizer.checksum[:12]}..., {MANIFEST} sources record {recorded[:12]}...)"
            )
        vocab = (self.info.get("config") or {}).get("vocab_size")
        if vocab is not None and tokenizer.vocab_size != vocab:
            raise BundleError(
                f"bundle {self.folder}: {path.name} has {tokenizer.vocab_size} pieces but the model's "
                f"vocabulary has {vocab} (a swapped tokenizer?)"
            )
        return tokenizer

    def _check_labels(self) -> None:
        assert self.classifier is not None
        width = self.classifier.get_outputs()[0].shape[-1]
        if isinstance(width, int) and self.label_names and len(self.label_names) != width:
            raise BundleError(
                f"bundle {self.folder}: {self._paths['classifier'].name} has {width} outputs but "
                f"{MANIFEST} names {len(self.label_names)} labels"
            )
        if not self.label_names:
            self.label_names = [f"LABEL_{i}" for i in range(width if isinstance(width, int) else 0)]

    @property
    def tasks(self) -> list[str]:
        """The tasks this bundle serves: fill-mask and next-sentence always, the others with their graph."""
        return [
            "fill-mask",
            "next-sentence",
            *(["classify"] if self.classifier is not None else []),
            *(["attention"] if self._has["attention"] else []),
        ]

    @functools.cached_property
    def language(self) -> str:
        """bundle.json's `language`, else guessed from the vocabulary (see detect_language), once: routing
        asks for it on every request, and the guess reads the whole vocabulary."""
        recorded = self.info.get("language")
        return str(recorded) if recorded else detect_language(self.tokenizer)

    # --- helpers ----------------------------------------------------------------------------------
    def encode(
        self,
        texts: Sequence[str],
        text_pairs: Sequence[str] | None = None,
        ids: Sequence[Sequence[int]] | None = None,
        pair_ids: Sequence[Sequence[int]] | None = None,
    ) -> BatchEncoding:
        """The project's one tokenizer, truncated to the bundle's max_length, padded to the longest text.

        ids (and pair_ids for text_pairs): the texts' pieces (Tokenizer.encode_ids) when the caller has
        them already, as the server does after checking a request: the batch is then built from them
        instead of encoding again.
        """
        if ids is None:
            return self.tokenizer.encode_batch(list(texts), text_pairs, max_length=self.max_length)
        return self.tokenizer.build_batch(ids, pair_ids, max_length=self.max_length)

    def run_pretraining(
        self, batch: BatchEncoding, masked_positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(mlm_logits (B, P, V) at masked_positions, nsp_logits (B, 2))."""
        feeds = {**batch.as_dict(), "masked_positions": masked_positions.astype(np.int64)}
        mlm_logits, nsp_logits = self._runners["pretraining"].run(["mlm_logits", "nsp_logits"], feeds)
        return mlm_logits, nsp_logits

    def run_classifier(self, batch: BatchEncoding) -> np.ndarray:
        if "classifier" not in self._runners:
            raise RuntimeError(f"bundle {self.folder} has no {CLASSIFIER_FILE}: it cannot classify")
        return self._runners["classifier"].run(["logits"], batch.as_dict())[0]

    @property
    def attention_session(self) -> ort.InferenceSession:
        """Opened on first use: most deployments never draw an attention map."""
        if not self._has["attention"]:
            raise RuntimeError(f"bundle {self.folder} has no {ATTENTION_FILE}: it cannot draw attention")
        if self._attention is None:
            self._attention = make_session(self._paths["attention"], self.intra_op_threads)
            _check_inputs(self._attention, self._paths["attention"], ENCODER_INPUTS)
        return self._attention

    def run_attention(self, batch: BatchEncoding) -> np.ndarray:
        """attentions (L, B, heads, T, T)."""
        return self.attention_session.run(["attentions"], batch.as_dict())[0]

    # --- tasks ------------------------------------------------------------------------------------
    def fill_mask(
        self,
        texts: list[str],
        top_k: int = 5,
        with_sequence: bool = True,
        ids: Sequence[Sequence[int]] | None = None,
    ) -> list[list[list[dict]]]:
        """Per text, per [MASK] in order: the top_k predictions {score, token, token_str, sequence}.

        with_sequence=False leaves out `sequence` (the text with that mask filled), which is most of an
        answer's size when a text is long or has many masks. ids: the texts already encoded (encode).
        """
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not texts:
            return []
        batch = self.encode(texts, ids=ids)
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
        # Scores straight from the logits: the top_k are the same, and only the normaliser needs all V.
        normaliser = logsumexp(mlm_logits)  # (B, P)
        top_k = min(top_k, mlm_logits.shape[-1])
        results = []
        for row in range(len(texts)):
            ids = batch.input_ids[row][batch.attention_mask[row] == 1]
            masks = np.flatnonzero(is_mask[row])
            results.append(
                [
                    self._predictions(ids, pos, mlm_logits[row, i], normaliser[row, i], top_k, with_sequence)
                    for i, pos in enumerate(masks)
                ]
            )
        return results

    def _predictions(
        self,
        ids: np.ndarray,
        position: int,
        logits: np.ndarray,
        normaliser: float,
        top_k: int,
        with_sequence: bool,
    ) -> list[dict]:
        # argpartition finds the top_k of the V logits in O(V); only those k are then sorted.
        candidates = (
            np.argpartition(-logits, top_k - 1)[:top_k] if top_k < logits.size else np.arange(logits.size)
        )
        best = candidates[np.lexsort((candidates, -logits[candidates]))]  # by score, ties by id
        scores = np.exp(logits[best].astype(np.float64) - normaliser)
        if with_sequence:  # as Hugging Face's pipeline: the text with this mask filled, other masks visible
            kept = [t if i != position else -1 for i, t in enumerate(ids.tolist()) if t not in _FRAME_IDS]
            slot = kept.index(-1)
        out = []
        for token, score in zip(best.tolist(), scores.tolist(), strict=True):
            prediction = {
                "score": score,
                "token": token,
                "token_str": self.tokenizer.decode([token], skip_special_tokens=False),
            }
            if with_sequence:
                kept[slot] = token
                prediction["sequence"] = self.tokenizer.decode(kept, skip_special_tokens=False)
            out.append(prediction)
        return out

    def next_sentence(
        self,
        pairs: list[tuple[str, str]],
        ids: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
    ) -> list[dict]:
        """Per pair: {"is_next": bool, "score": P(second follows first)}. ids: per pair the pieces of its
        first and second text, when the caller has them already (as in encode)."""
        if not pairs:
            return []
        if ids is None:
            batch = self.encode([a for a, _ in pairs], [b for _, b in pairs])
        else:
            batch = self.encode([a for a, _ in pairs], ids=[a for a, _ in ids], pair_ids=[b for _, b in ids])
        dummy = np.zeros((len(pairs), 1), dtype=np.int64)  # one MLM position: the decoder cost is negligible
        _, nsp_logits = self.run_pretraining(batch, dummy)
        scores = softmax(nsp_logits)[:, IS_NEXT]
        return [{"is_next": bool(score >= 0.5), "score": float(score)} for score in scores]

    def classify(
        self, texts: list[str], top_k: int | None = None, ids: Sequence[Sequence[int]] | None = None
    ) -> list[list[dict]]:
        """Per text: [{"label", "score"}] sorted by score, all labels or the top_k. ids: as in encode."""
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}")
        if not texts:
            return []
        probs = softmax(self.run_classifier(self.encode(texts, ids=ids)))
        results = []
        for row in probs:
            order = np.argsort(-row, kind="stable")[: top_k or len(row)]
            results.append([{"label": self.label_names[i], "score": float(row[i])} for i in order])
        return results

    def attention(self, text: str) -> dict:
        """{"tokens": [str] (T), "attentions": [layer][head][T][T]} for one text (the pretraining encoder)."""
        batch = self.encode([text])
        attentions = self.run_attention(batch)  # (L, 1, nh, T, T)
        tokens = [self.tokenizer.id_to_token(int(i)) for i in batch.input_ids[0]]
        return {"tokens": tokens, "attentions": attentions[:, 0].astype(float).tolist()}

    # --- reference self-test ------------------------------------------------------------------------
    def reference_outputs(self, text: str, pair: str | None, with_attention: bool) -> dict[str, Any]:
        """What the graphs give for one reference input, in reference.json's form."""
        batch = self.encode([text], None if pair is None else [pair])
        positions = np.flatnonzero(batch.input_ids[0] == MASK_ID)
        if not positions.size:
            positions = np.array([1])
        mlm_logits, nsp_logits = self.run_pretraining(batch, positions[None, :])
        out: dict[str, Any] = {
            "mlm_positions": positions.tolist(),
            "mlm_logsumexp": logsumexp(mlm_logits[0]).tolist(),
            "nsp_logits": nsp_logits[0].tolist(),
            "mlm": mlm_logits[0],  # full (P, V) logits: the writer keeps the top ones, the checker gathers
        }
        if self.classifier is not None:
            out["classifier_logits"] = self.run_classifier(batch)[0].tolist()
        if with_attention and self._has["attention"]:
            out["attentions"] = self.run_attention(batch)[:, 0].tolist()
        return out

    def check_reference(self) -> None:
        """Run the bundle's reference.json, if it has one; BundleError naming the file that disagrees."""
        reference = read_reference(self.folder, self.info)
        if reference is None:
            return

        def encode(text: str, pair: str | None) -> list[int]:
            return self.encode([text], None if pair is None else [pair]).input_ids[0].tolist()

        def run_case(case: dict[str, Any]) -> dict[str, tuple[str, Any]]:
            got = self.reference_outputs(case["text"], case.get("pair"), "attentions" in case)
            ids = np.asarray(case.get("mlm_ids", []), dtype=np.int64)
            if got["mlm"].shape[0] != ids.shape[0]:
                raise BundleError(
                    f"bundle {self.folder}: {PRETRAINING_FILE} disagrees with the reference: "
                    f"{got['mlm'].shape[0]} masked positions, expected {ids.shape[0]}"
                )
            outputs = {
                "mlm_logits": (PRETRAINING_FILE, np.take_along_axis(got["mlm"], ids, axis=-1)),
                "mlm_logsumexp": (PRETRAINING_FILE, got["mlm_logsumexp"]),
                "nsp_logits": (PRETRAINING_FILE, got["nsp_logits"]),
            }
            if "classifier_logits" in got:
                outputs["classifier_logits"] = (CLASSIFIER_FILE, got["classifier_logits"])
            if "attentions" in got:
                outputs["attentions"] = (ATTENTION_FILE, got["attentions"])
            return outputs

        check_cases(self.folder, reference, encode, run_case)


def make_reference(engine: Engine) -> dict[str, Any]:
    """reference.json's content: REFERENCE_INPUTS, their token ids and what the engine's graphs give."""
    cases = []
    for index, (text, pair) in enumerate(REFERENCE_INPUTS):
        got = engine.reference_outputs(text, pair, with_attention=index == 0)
        mlm = got.pop("mlm")
        top = np.argsort(-mlm, axis=-1, kind="stable")[:, :REFERENCE_TOP]
        cases.append(
            {
                "text": text,
                "pair": pair,
                "input_ids": engine.encode([text], None if pair is None else [pair]).input_ids[0].tolist(),
                "mlm_ids": top.tolist(),
                "mlm_logits": np.take_along_axis(mlm, top, axis=-1).tolist(),
                **got,
            }
        )
    int8 = (engine.info.get("export") or {}).get("quantization") == "int8"
    return {
        "format": REFERENCE_FORMAT,
        "about": "inputs and the outputs this bundle's graphs gave at export; loading re-runs them",
        "atol": REFERENCE_ATOL,
        "rtol": REFERENCE_RTOL_INT8 if int8 else REFERENCE_RTOL,
        "cases": cases,
    }


def write_reference(bundle_dir: str | Path, engine: Engine | None = None) -> Path:
    """Add the reference self-test to a finished bundle: run its graphs on REFERENCE_INPUTS, write
    reference.json and list it (with its sha256) in bundle.json. Returns the file's path.

    Call it on the complete bundle folder (e.g. export's staging folder, after bundle.json is written
    and before it is published) so the outputs recorded are those of the graphs the bundle will serve;
    `engine` may be one already open on that folder.
    """
    bundle_dir = Path(bundle_dir)
    if engine is None:
        engine = Engine(bundle_dir, read_manifest(bundle_dir))
    elif engine.folder.resolve() != bundle_dir.resolve():
        raise ValueError(f"the engine serves {engine.folder}, not {bundle_dir}")
    add_reference(bundle_dir, make_reference(engine))
    return bundle_dir / REFERENCE_FILE
