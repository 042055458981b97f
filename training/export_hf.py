"""`pocketbert export-hf`: one checkpoint -> a folder that transformers' pipelines load as they are.

    pocketbert export-hf runs/en/pretrain/model.pt hf-mlm        # pipeline("fill-mask", model="hf-mlm")
    pocketbert export-hf runs/en/finetune/model.pt hf-sentiment  # pipeline("text-classification", ...)

Writes config.json (Hugging Face field names, architectures, id2label), model.safetensors (our state_dict
keys already are Hugging Face's) and a `tokenizer.json` that reproduces this project's tokenizer:
SentencePiece's unigram pieces and scores, its nmt_nfkc normalisation, the word-start mark "▁", and
[MASK] absorbing the space before it (the rule `Tokenizer.encode_ids` applies).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer
from tokenizers.models import Unigram

from model.bert import BertForPreTraining
from model.checkpoint import load_model
from model.tokenizer import (
    CLS_ID,
    SEP_ID,
    SPECIAL_TOKENS,
    TOKENIZER_FILENAME,
    UNK_ID,
    WORD_BOUNDARY,
    Tokenizer,
)
from training.errors import CLIError
from training.publish import staged


def _find_tokenizer(checkpoint: Path, metadata: dict[str, Any], given: str | Path | None) -> Path:
    """--tokenizer, else the one the checkpoint records, else a tokenizer.model beside it (a run folder)."""
    if given is not None:
        return Path(given)
    recorded = metadata.get("tokenizer")  # `pretrain` and `finetune` record the tokenizer they used
    if recorded and Path(recorded).exists():
        return Path(recorded)
    for folder in [checkpoint.parent, *checkpoint.parent.parents][:3]:
        for candidate in (folder / TOKENIZER_FILENAME, folder / "tokenizer" / TOKENIZER_FILENAME):
            if candidate.is_file():
                return candidate
    raise CLIError(f"{checkpoint}: no tokenizer.model found beside it; pass --tokenizer DIR")


def tokenizer_json(tokenizer) -> str:
    """A `tokenizers` definition equal to our SentencePiece tokenizer on ordinary text and [MASK]."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(tokenizer.path.read_bytes())
    if proto.trainer_spec.model_type != sentencepiece_model_pb2.TrainerSpec.UNIGRAM:
        raise CLIError(f"{tokenizer.path}: only unigram SentencePiece models can be exported to Hugging Face")
    hf = HFTokenizer(Unigram([(p.piece, p.score) for p in proto.pieces], unk_id=UNK_ID, byte_fallback=False))
    steps = []
    if proto.normalizer_spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(proto.normalizer_spec.precompiled_charsmap))
    steps += [normalizers.Strip(left=False, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    hf.normalizer = normalizers.Sequence(steps)
    # "first": only the start of the text gets a word-start mark added (SentencePiece's dummy prefix);
    # the text right after [MASK] keeps whatever space it has.
    hf.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="first", split=True)
    hf.decoder = decoders.Metaspace(replacement=WORD_BOUNDARY, prepend_scheme="first", split=True)
    hf.add_special_tokens(
        [
            AddedToken(token, special=True, normalized=False, lstrip=token == "[MASK]")
            for token in SPECIAL_TOKENS
        ]
    )
    hf.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    return hf.to_str(pretty=True)


def hf_config(model, metadata: dict[str, Any]) -> dict[str, Any]:
    config = model.config.to_hf_dict()
    if isinstance(model, BertForPreTraining):
        config["architectures"] = ["BertForPreTraining"]
    else:
        names = list(metadata.get("label_names") or [f"LABEL_{i}" for i in range(model.num_labels)])
        config["architectures"] = ["BertForSequenceClassification"]
        config["id2label"] = {str(i): name for i, name in enumerate(names)}
        config["label2id"] = {name: i for i, name in enumerate(names)}
        config["problem_type"] = "single_label_classification"
    config["tie_word_embeddings"] = True
    return config


def export_hf(
    checkpoint: str | Path,
    out_dir: str | Path,
    tokenizer_dir: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Hugging Face folder (published world-readable, training/publish.py); returns its path."""
    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    try:
        model, metadata = load_model(checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise CLIError(str(exc)) from exc
    tokenizer = Tokenizer(_find_tokenizer(checkpoint, metadata, tokenizer_dir))
    if tokenizer.vocab_size != model.config.vocab_size:
        raise CLIError(
            f"{tokenizer.path} has {tokenizer.vocab_size} pieces, {checkpoint} {model.config.vocab_size}"
        )
    with staged(out_dir, overwrite) as staging:
        # safetensors stores no shared memory: the tied decoder weight / bias are written as copies,
        # and transformers ties them again on load (tie_word_embeddings).
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / "model.safetensors"), metadata={"format": "pt"})
        (staging / "config.json").write_text(
            json.dumps(hf_config(model, metadata), indent=2) + "\n", encoding="utf-8"
        )
        (staging / "tokenizer.json").write_text(tokenizer_json(tokenizer), encoding="utf-8")
        shutil.copyfile(tokenizer.path, staging / "spiece.model")  # the original, for reference
        names = dict(zip(("pad", "unk", "bos", "eos", "cls", "sep", "mask"), SPECIAL_TOKENS, strict=True))
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": model.config.max_position_embeddings,
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "token_type_ids", "attention_mask"],  # BERT reads segments
            **{f"{role}_token": token for role, token in names.items()},
        }
        (staging / "tokenizer_config.json").write_text(
            json.dumps(tokenizer_config, indent=2) + "\n", encoding="utf-8"
        )
        (staging / "special_tokens_map.json").write_text(
            json.dumps({f"{role}_token": token for role, token in names.items()}, indent=2) + "\n",
            encoding="utf-8",
        )
    return out_dir


def run(args: argparse.Namespace) -> int:
    out = export_hf(args.checkpoint, args.out, args.tokenizer, args.overwrite)
    print(f"wrote {out}: load it with transformers.pipeline(..., model={str(out)!r})")
    return 0
