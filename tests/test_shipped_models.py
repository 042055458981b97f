"""The committed bundles, as a user gets them: unambiguous reviews get the right label, [MASK] is filled
with a word of the language, next-sentence prediction prefers a true continuation, and the model card's
headline figures are the ones its results files hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from model.bundle import graphs_bytes
from model.engine import Engine

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"
HANGUL = re.compile(r"[\uac00-\ud7a3]")

CASES = {
    "ko-nsmc": {
        "positive": [
            "정말 재미있고 감동적인 영화였어요. 강력 추천합니다!",
            "배우들 연기가 최고였고 음악도 너무 좋았다",
        ],
        "negative": ["시간 낭비였다. 정말 지루하고 재미없는 영화", "최악의 영화. 돈이 아깝다"],
        "mask": "이 영화 정말 [MASK] 있어요.",
        "true_pair": ("조선은 1392년에 건국되었다.", "태조 이성계가 개성에서 왕위에 올랐다."),
        "random_second": "이 노트북은 배터리가 오래 간다.",
    },
    "en-sst2": {
        "positive": ["a charming, funny and deeply moving film.", "one of the best movies of the year"],
        "negative": ["a dull, boring mess with terrible acting.", "the worst film i have seen in years"],
        "mask": "The movie was [MASK] and I loved every minute of it.",
        "true_pair": (
            "The band was formed in London in 1994.",
            "They released their first album two years later.",
        ),
        "random_second": "Photosynthesis converts light into chemical energy.",
    },
}


def shipped(name: str) -> Path:
    folder = BUNDLES / name
    assert (folder / "bundle.json").is_file(), f"{folder}: the shipped {name} bundle is missing"
    return folder


SHIPPED = sorted(CASES)  # a shipped model missing from bundles/ fails its tests, it is not skipped


@pytest.fixture(scope="module", params=SHIPPED)
def bundle(request: pytest.FixtureRequest) -> tuple[str, Engine]:
    return request.param, Engine.load(shipped(request.param), intra_op_threads=1)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_graphs_keep_their_layer_norms_apart_from_the_residual_adds(name: str) -> None:
    """The shape `pocketbert export --optimize` writes now (training/onnx_utils.unfuse_skip_layer_norm):
    no SkipLayerNormalization, whose onnxruntime kernel is the slow one; the manifest counts what is there."""
    import onnx

    folder = shipped(name)
    fusions = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))["export"]["fusions"]
    for graph in ("pretraining", "classifier"):
        ops = [
            node.op_type
            for node in onnx.load(str(folder / f"{graph}.onnx"), load_external_data=False).graph.node
        ]
        assert "SkipLayerNormalization" not in ops, graph
        assert ops.count("LayerNormalization") == fusions[graph]["LayerNormalization"] > 0, graph


def test_unambiguous_reviews_get_the_right_label(bundle: tuple[str, Engine]) -> None:
    name, engine = bundle
    for label in ("positive", "negative"):
        for text, result in zip(CASES[name][label], engine.classify(CASES[name][label]), strict=True):
            assert result[0]["label"] == label, (text, result)


def test_mask_is_filled_with_a_word_of_the_language(bundle: tuple[str, Engine]) -> None:
    name, engine = bundle
    predictions = engine.fill_mask([CASES[name]["mask"]], top_k=5)[0][0]
    words = [p["token_str"].strip() for p in predictions]
    if name.startswith("ko"):
        assert HANGUL.search(words[0]), words
    else:
        assert re.fullmatch(r"[A-Za-z]+", words[0]), words
    assert predictions[0]["score"] >= predictions[-1]["score"]


def test_next_sentence_prefers_the_true_continuation(bundle: tuple[str, Engine]) -> None:
    name, engine = bundle
    first, second = CASES[name]["true_pair"]
    true, random = engine.next_sentence([(first, second), (first, CASES[name]["random_second"])])
    assert true["score"] > random["score"]
    assert true["is_next"]


@pytest.mark.parametrize("name", SHIPPED)
def test_card_headline_is_the_measured_results(name: str) -> None:
    folder = shipped(name)
    manifest = json.loads((folder / "bundle.json").read_text(encoding="utf-8"))
    card = json.loads((folder / "card.json").read_text(encoding="utf-8"))
    assert manifest["language"] == name[:2]
    assert manifest["card"]["test_accuracy_mean"] == card["finetune"]["test_acc_mean"]
    text = (folder / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert text.startswith(f"---\nlanguage: {name[:2]}\n")
    assert f"{100 * card['finetune']['test_acc_mean']:.2f} ± " in text
    onnx_mb = graphs_bytes(folder) / 1e6
    assert onnx_mb < 20, f"{name}: {onnx_mb:.1f} MB of graphs"  # small enough to commit and ship


@pytest.mark.parametrize("name", SHIPPED)
def test_each_card_is_its_recipe_rendered_with_its_measured_figures(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MODEL_CARD.md is exactly what the recipe's texts and the bundle's card.json render: a text edited
    in one place and not the other fails here (`pocketbert recipe R --card-text-only` writes both)."""
    from training.card import render
    from training.recipe import load_recipe

    monkeypatch.chdir(BUNDLES.parent)  # the card names its recipe as the project root's commands do
    recipe = load_recipe(f"recipes/{name}.toml")
    data = json.loads((shipped(name) / "card.json").read_text(encoding="utf-8"))
    assert (shipped(name) / "MODEL_CARD.md").read_text(encoding="utf-8") == render(recipe, data)


def test_a_card_that_fails_to_render_leaves_the_card_and_its_figures_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`write_card` renders before it writes: figures the texts cannot render (here, no pretraining
    figures) raise, and card.json and MODEL_CARD.md keep their old contents, with no temporary left."""
    from training.card import render, write_card
    from training.recipe import load_recipe

    monkeypatch.chdir(BUNDLES.parent)
    recipe = load_recipe("recipes/ko-nsmc.toml")
    for name in ("card.json", "MODEL_CARD.md"):
        (tmp_path / name).write_bytes((shipped("ko-nsmc") / name).read_bytes())
    data = json.loads((tmp_path / "card.json").read_text(encoding="utf-8"))
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}

    with pytest.raises(KeyError):
        write_card(recipe, {k: v for k, v in data.items() if k != "pretraining"}, tmp_path)
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before

    data["finetune"]["runs"] = 7  # a change that reaches both files
    write_card(recipe, data, tmp_path)
    assert sorted(f.name for f in tmp_path.iterdir()) == ["MODEL_CARD.md", "card.json"]
    assert json.loads((tmp_path / "card.json").read_text(encoding="utf-8")) == data
    assert (tmp_path / "MODEL_CARD.md").read_text(encoding="utf-8") == render(recipe, data)
    assert (tmp_path / "MODEL_CARD.md").read_bytes() != before["MODEL_CARD.md"]


def test_all_shipped_bundles_together_fit_in_30_mb() -> None:
    total = sum(f.stat().st_size for f in BUNDLES.rglob("*") if f.is_file())
    assert total <= 30e6, f"bundles/ holds {total / 1e6:.1f} MB"


def test_the_server_with_both_shipped_models_routes_each_language_to_its_model() -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(bundles=[BUNDLES], ort_threads=1))) as client:
        models = {m["name"]: m["language"] for m in client.get("/v1/models").json()["models"]}
        assert models == {"ko-nsmc": "ko", "en-sst2": "en"}
        for name in ("ko-nsmc", "en-sst2"):
            for label in ("positive", "negative"):
                body = client.post("/classify", json={"inputs": CASES[name][label], "top_k": 1}).json()
                assert body["model"] == name, body  # no model named: chosen by the text's language
                assert [result[0]["label"] for result in body["results"]] == [label, label], body
        body = client.post("/fill-mask", json={"inputs": CASES["en-sst2"]["mask"], "top_k": 3}).json()
        assert body["model"] == "en-sst2"
        assert re.fullmatch(r"[A-Za-z]+", body["results"][0][0]["token_str"].strip()), body
        mixed = {"inputs": [CASES["ko-nsmc"]["positive"][0], CASES["en-sst2"]["positive"][0]]}
        assert client.post("/classify", json=mixed).status_code == 422


def readme_examples() -> list[tuple[str, dict, dict]]:
    """The README's shipped-model examples: each curl command (path, body) and the JSON shown below it."""
    readme = (BUNDLES.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The shipped models", 1)[1].split("\n## ", 1)[0]
    pattern = r"```bash\ncurl -s localhost:8000(/[\w-]+) .*?-d '(.*?)'\n```\n```json\n(.*?)\n```"
    found = re.findall(pattern, section)
    return [(path, json.loads(body), json.loads(answer)) for path, body, answer in found]


# How far a served score may be from the README's: the INT8 graphs' kernels differ between CPUs (AVX2's
# u8s8 products saturate, AVX-512 VNNI's do not), which moved the Korean NSP example from 0.8903 to 0.9061.
# Labels, tokens and their order must match exactly.
SCORE_TOLERANCE = 0.025


def assert_close(shown: object, served: object, where: str = "") -> None:
    """Equal, except that a score may differ by SCORE_TOLERANCE (the CPU's INT8 kernels, and rounding)."""
    if isinstance(shown, float):
        assert served == pytest.approx(shown, abs=SCORE_TOLERANCE), where
    elif isinstance(shown, dict):
        assert isinstance(served, dict) and shown.keys() == served.keys(), where
        for key in shown:
            assert_close(shown[key], served[key], f"{where}.{key}")
    elif isinstance(shown, list):
        assert isinstance(served, list) and len(shown) == len(served), where
        for i, (a, b) in enumerate(zip(shown, served, strict=True)):
            assert_close(a, b, f"{where}[{i}]")
    else:
        assert shown == served, where


def test_readme_shows_what_the_shipped_models_answer() -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    examples = readme_examples()
    served_by = {answer["model"] for _, _, answer in examples}
    paths = {path for path, _, _ in examples}
    assert served_by == {"ko-nsmc", "en-sst2"} and paths == {"/classify", "/fill-mask", "/next-sentence"}
    with TestClient(create_app(Settings(bundles=[BUNDLES], ort_threads=1))) as client:
        for path, body, shown in examples:
            response = client.post(path, json=body)
            assert response.status_code == 200, response.text
            assert_close(shown, response.json(), f"{path} {body}")


def readme_python_examples() -> list[tuple[str, str]]:
    """The README's in-process examples on a shipped bundle: each call and the answer its comment shows.

    A call's answer is on the comment lines that follow it, or else in the comment on its own line (which
    otherwise only says what the call does); one that starts with `results:` shows the `results` of the
    pipeline's answer. Comments that are not a Python literal (a shape such as `[layer][head][T][T]`) are
    not answers, and the test leaves them out."""
    readme = (BUNDLES.parent / "README.md").read_text(encoding="utf-8")
    examples = []
    for block in re.findall(r"```python\n(.*?)```", readme, flags=re.S):
        if "bundles/ko-nsmc" not in block:
            continue
        calls: list[tuple[str, str, list[str]]] = []  # code, its own line's comment, the lines after it
        for line in block.splitlines():
            code, _, comment = line.partition("#")
            if code.strip():
                calls.append((code.strip(), comment.strip(), []))
            elif comment.strip() and calls:
                calls[-1][2].append(comment.strip())
        examples += [(code, " ".join(after) or inline) for code, inline, after in calls]
    return examples


def test_readme_in_process_examples_show_what_the_shipped_model_answers() -> None:
    """The engine and pipeline examples in the README run, and answer what their comments show."""
    import ast

    namespace: dict[str, object] = {}
    checked = 0
    for code, comment in readme_python_examples():
        if "=" in code.split("(", 1)[0] or code.startswith(("from ", "import ")):
            exec(code.replace("bundles/", f"{BUNDLES}/"), namespace)  # the imports and the loads
            continue
        served = eval(code, namespace)
        shown_text = comment.removeprefix("results:").strip()
        try:
            shown = ast.literal_eval(shown_text)
        except (ValueError, SyntaxError):
            continue  # a comment that describes the answer's shape, not its values
        if comment.startswith("results:"):
            served = served["results"]
        assert_close(shown, served, code)
        checked += 1
    assert checked == 6  # the engine's fill_mask, next_sentence, classify; the pipeline's three


@pytest.mark.parametrize("name", SHIPPED)
def test_readme_tables_show_the_cards_figures(name: str) -> None:
    """The README's table for each shipped model holds its card's figures: mean ± std over seeds, the
    scratch ablation, the TF-IDF line (a re-trained model cannot leave an old figure behind)."""
    card = json.loads((shipped(name) / "card.json").read_text(encoding="utf-8"))
    readme = (BUNDLES.parent / "README.md").read_text(encoding="utf-8")
    table = readme.split(f"**`bundles/{name}`**", 1)[1].split("\n\n", 2)[1]

    def pct(value: float) -> str:
        return f"{100 * value:.2f}"

    ft, scratch = card["finetune"], card["scratch"]
    assert (
        f"({ft['runs']} seeds, mean ± std) | **{pct(ft['test_acc_mean'])} ± {pct(ft['test_acc_std'])}**"
        in table
    )
    if scratch["runs"] == 1:
        assert f"| {pct(scratch['test_acc_mean'])} (1 seed) |" in table
    else:
        spread = f"{pct(scratch['test_acc_mean'])} ± {pct(scratch['test_acc_std'])}"
        assert f"| {spread} ({scratch['runs']} seeds) |" in table
    assert f"(`bench/baseline.py`) | {pct(card['baseline']['test_acc'])} |" in table
