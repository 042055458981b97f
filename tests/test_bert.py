"""The from-scratch BERT against Hugging Face's: same weight names, same outputs."""

from __future__ import annotations

import pytest
import torch

from model.bert import (
    IGNORE_INDEX,
    BertForPreTraining,
    BertForSequenceClassification,
    labelled_positions,
)
from model.checkpoint import load_hf_folder, load_model, save_model
from model.config import BertConfig

transformers = pytest.importorskip("transformers")

CONFIG = BertConfig(
    vocab_size=300,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=64,
)


def _hf_config(num_labels: int = 2):
    return transformers.BertConfig(num_labels=num_labels, **CONFIG.to_hf_dict())


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three rows: full length, padded after 7, padded after 4; two segments in each."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(7, CONFIG.vocab_size, (3, 12), generator=gen)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 7:] = 0
    attention_mask[2, 4:] = 0
    input_ids[attention_mask == 0] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 6:] = 1
    token_type_ids[1, 4:7] = 1
    token_type_ids[2, 2:4] = 1
    return input_ids, token_type_ids, attention_mask


def test_state_dict_keys_match_hugging_face() -> None:
    ours = set(BertForPreTraining(CONFIG).state_dict())
    theirs = set(transformers.BertForPreTraining(_hf_config()).state_dict())
    assert ours == theirs
    ours = set(BertForSequenceClassification(CONFIG, 3).state_dict())
    theirs = set(transformers.BertForSequenceClassification(_hf_config(3)).state_dict())
    assert ours == theirs


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pretraining_logits_match_hugging_face(attn: str) -> None:
    torch.manual_seed(0)
    hf = transformers.BertForPreTraining(_hf_config()).eval()
    ours = BertForPreTraining(BertConfig(**{**CONFIG.to_dict(), "attn_implementation": attn})).eval()
    ours.load_state_dict(hf.state_dict())
    input_ids, token_type_ids, attention_mask = _batch()
    with torch.no_grad():
        expected = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        got = ours(input_ids, token_type_ids, attention_mask)
    real = attention_mask.bool()  # padded positions' outputs are meaningless in both
    assert torch.allclose(got.mlm_logits[real], expected.prediction_logits[real], atol=1e-5)
    assert torch.allclose(got.nsp_logits, expected.seq_relationship_logits, atol=1e-5)


def test_classification_logits_match_hugging_face() -> None:
    torch.manual_seed(1)
    hf = transformers.BertForSequenceClassification(_hf_config(3)).eval()
    ours = BertForSequenceClassification(CONFIG, 3).eval()
    ours.load_state_dict(hf.state_dict())
    input_ids, token_type_ids, attention_mask = _batch()
    with torch.no_grad():
        expected = hf(
            input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask
        ).logits
        got = ours(input_ids, token_type_ids, attention_mask).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_sparse_and_positional_mlm_equal_the_full_head() -> None:
    torch.manual_seed(2)
    model = BertForPreTraining(CONFIG).eval()
    input_ids, token_type_ids, attention_mask = _batch()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, 3] = 11
    labels[1, 5] = 12
    labels[2, 1] = 13
    with torch.no_grad():
        full = model(input_ids, token_type_ids, attention_mask, labels=labels)
        sparse = model(input_ids, token_type_ids, attention_mask, labels=labels, sparse_mlm=True)
        positions = torch.tensor([[3], [5], [1]])
        at = model(input_ids, token_type_ids, attention_mask, masked_positions=positions)
    assert sparse.mlm_logits.shape == (3, CONFIG.vocab_size)
    chosen = labels != IGNORE_INDEX
    assert torch.allclose(sparse.mlm_logits, full.mlm_logits[chosen], atol=1e-6)
    assert torch.allclose(sparse.mlm_loss, full.mlm_loss, atol=1e-6)
    assert torch.allclose(at.mlm_logits[:, 0], full.mlm_logits[chosen], atol=1e-6)


def test_labelled_positions_lists_each_rows_labels_first_in_order() -> None:
    labels = torch.full((3, 6), IGNORE_INDEX)
    labels[0, [4, 1]] = 9
    labels[2, [5, 0, 3]] = 8  # row 1 has no label at all
    positions, valid = labelled_positions(labels)
    assert positions.shape == valid.shape == (3, 3)
    assert positions[0, :2].tolist() == [1, 4] and positions[2].tolist() == [0, 3, 5]
    assert valid.tolist() == [[True, True, False], [False, False, False], [True, True, True]]
    # gathering at the valid positions gives labels[labels != IGNORE_INDEX], in its order
    assert torch.equal(torch.gather(labels, 1, positions)[valid], labels[labels != IGNORE_INDEX])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pruned_last_layer_gives_the_full_models_losses_and_gradients(attn: str) -> None:
    """sparse_mlm runs the last layer at [CLS] and the labelled positions only: same loss, same grads."""
    torch.manual_seed(4)
    config = BertConfig(**{**CONFIG.to_dict(), "attn_implementation": attn})
    model = BertForPreTraining(config).eval()  # no dropout: its masks would differ between the shapes
    input_ids, token_type_ids, attention_mask = _batch()
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    labels[0, [2, 9, 10]] = input_ids[0, [2, 9, 10]]
    labels[1, 5] = input_ids[1, 5]
    labels[2, [1, 3]] = input_ids[2, [1, 3]]
    nsp = torch.tensor([0, 1, 1])
    grads, losses = [], []
    for sparse in (False, True):
        model.zero_grad()
        out = model(input_ids, token_type_ids, attention_mask, labels, nsp, sparse_mlm=sparse)
        out.loss.backward()
        losses.append((out.mlm_loss.item(), out.nsp_loss.item()))
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    assert grads[0].keys() == grads[1].keys()
    for name, full in grads[0].items():
        assert torch.allclose(full, grads[1][name], atol=1e-6), name


def test_attention_maps_stay_full_when_the_last_layer_is_pruned() -> None:
    """Asked for attention maps, the classifier returns every layer's full (B, heads, T, T) map and the
    same logits as without them (the pruning of the last layer is skipped, not the maps cut)."""
    torch.manual_seed(6)
    model = BertForSequenceClassification(CONFIG, 3).eval()
    input_ids, token_type_ids, attention_mask = _batch()
    with torch.no_grad():
        plain = model(input_ids, token_type_ids, attention_mask)
        mapped = model(input_ids, token_type_ids, attention_mask, output_attentions=True)
    assert [tuple(a.shape) for a in mapped.attentions] == [(3, 4, 12, 12)] * CONFIG.num_hidden_layers
    assert torch.allclose(plain.logits, mapped.logits, atol=1e-6)


def test_decoder_is_tied_to_word_embeddings_and_trains_together() -> None:
    model = BertForPreTraining(CONFIG)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert model.cls.predictions.decoder.bias is model.cls.predictions.bias
    input_ids, token_type_ids, attention_mask = _batch()
    labels = torch.where(attention_mask.bool(), input_ids, torch.full_like(input_ids, IGNORE_INDEX))
    out = model(
        input_ids,
        token_type_ids,
        attention_mask,
        labels=labels,
        next_sentence_label=torch.tensor([0, 1, 0]),
        sparse_mlm=True,
    )
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.nsp_loss is not None and out.mlm_loss is not None
    assert model.bert.embeddings.word_embeddings.weight.grad is not None


def test_hf_save_pretrained_folder_loads_here(tmp_path) -> None:
    torch.manual_seed(3)
    hf = transformers.BertForPreTraining(_hf_config()).eval()
    hf.save_pretrained(tmp_path)
    ours = load_hf_folder(tmp_path)
    input_ids, token_type_ids, attention_mask = _batch()
    with torch.no_grad():
        expected = hf(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
        got = ours(input_ids, token_type_ids, attention_mask)
    assert torch.allclose(got.nsp_logits, expected.seq_relationship_logits, atol=1e-5)


def test_model_checkpoint_round_trip(tmp_path) -> None:
    model = BertForSequenceClassification(CONFIG, 2).eval()
    save_model(tmp_path / "model.pt", model, {"label_names": ["neg", "pos"]})
    loaded, metadata = load_model(tmp_path / "model.pt")
    assert metadata == {"label_names": ["neg", "pos"]}
    assert isinstance(loaded, BertForSequenceClassification) and loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    assert not list(tmp_path.glob("*.tmp"))


def test_config_json_round_trip_and_validation(tmp_path) -> None:
    CONFIG.to_json(tmp_path / "c.json")
    assert BertConfig.from_json(tmp_path / "c.json") == CONFIG
    assert "attn_implementation" not in CONFIG.to_hf_dict()
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        BertConfig(hidden_size=30, num_attention_heads=4)
