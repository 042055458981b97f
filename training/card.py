"""The model card: measure what the card shows, then write MODEL_CARD.md beside the bundle.

`build_card` is the recipe's last stage. It copies the exported bundle to its home (e.g. bundles/ko-nsmc),
measures the figures that are not already in the run folders (tokenizer table, MLM accuracy by token
frequency, fill-mask examples, attention heatmaps, training curves), gathers the ones that are (validation
MLM / NSP, fine-tuning over seeds, the scratch ablation, the TF-IDF line, INT8 against fp32, compute),
and renders the card in Hugging Face's model-card form (YAML front matter with a model-index), so the
`export-hf` folder can carry it too. Every number in the card is read from a file a command wrote.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

from model.bundle import graphs_bytes, json_text, write_texts_atomic
from training.errors import CLIError
from training.publish import staged

CARD_FILE = "MODEL_CARD.md"
CARD_DATA_FILE = "card.json"
FIGURES = ("training_curves.png", "attention.png")
# A work folder keeps the last measurement (card.json, the figures, and the key they were measured under):
# a card whose texts alone changed is rendered again in seconds instead of re-scoring every test set.
MEASURED_DIR = "card-measured"
MEASURE_VERSION = 1  # raise when measure() changes what it measures, so that no cached figure outlives it
# The `indomain` setting of a continued pretraining (the recipe's [adapt] stage, its [study] arms): the data
# each value reads (the recipe's prepared corpus, its prepared in-domain text) and how the card names it.
INDOMAIN_VALUES: dict[bool | str, tuple[tuple[str, ...], str]] = {
    False: (("corpus",), "the corpus"),
    True: (("corpus", "indomain"), "the corpus mixed with the in-domain text"),
    "only": (("indomain",), "the in-domain text alone"),
}


# The targets a recipe's [card] may set (`targets = { test_mean = 87.0, ... }`: points and percent, a count
# for failed_runs), each compared on the card with what the model reached: name -> (label, "min" or "max").
TARGETS: dict[str, tuple[str, str]] = {
    "test_mean": ("test accuracy, mean over seeds", "min"),
    "test_std": ("test accuracy, std over seeds", "max"),
    "failed_runs": ("failed fine-tuning runs", "max"),
    "over_scratch": ("points over the same recipe without pretraining", "min"),
    "mlm_acc": ("validation MLM accuracy", "min"),
    "nsp_acc": ("validation NSP accuracy", "min"),
}


def _points(data: dict[str, Any], *keys: str) -> float | None:
    """data[k1][k2]... as percent (a fraction times 100), None where a level is missing."""
    value: Any = data
    for key in keys:
        value = (value or {}).get(key)
    return None if value is None else 100 * value


def reached(name: str, data: dict[str, Any]) -> float | None:
    """What the model reached on target `name`; None where the card has no figure for it (a std over
    fewer than two seeds is no measurement of spread)."""
    ft = data.get("finetune") or {}
    if name == "test_mean":
        return _points(data, "finetune", "test_acc_mean")
    if name == "test_std":
        return _points(data, "finetune", "test_acc_std") if ft.get("runs", 0) >= 2 else None
    if name == "failed_runs":
        return ft.get("failed_runs")
    if name == "over_scratch":
        tuned, scratch = _points(data, "finetune", "test_acc_mean"), _points(data, "scratch", "test_acc_mean")
        return None if tuned is None or scratch is None else tuned - scratch
    return _points(data, "pretraining", "valid", name)  # mlm_acc, nsp_acc


def check_targets(where: str, targets: Any) -> None:
    """A [card] targets table names known targets with finite numbers: a typo is an error, not a row."""
    if not isinstance(targets, dict):
        raise CLIError(f"{where}: [card] targets must be a table, e.g. {{ test_mean = 87.0 }}")
    for name, value in targets.items():
        if name not in TARGETS:
            raise CLIError(
                f"{where}: [card] targets has {name!r}; the known targets are {', '.join(TARGETS)}"
            )
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise CLIError(f"{where}: [card] targets.{name} is {value!r}; it must be a finite number")


def target_lines(targets: dict[str, float], data: dict[str, Any], task_name: str) -> list[str]:
    """The card's table of targets against what the model reached, with the shortfall of each missed one."""
    if not targets:
        return []
    out = ["Against the targets set for this model:", "", "| target | reached | |", "|---|---|---|"]
    for name, goal in targets.items():
        label, kind = TARGETS[name]
        value = reached(name, data)
        digits = 0 if name == "failed_runs" else 2  # a count, else points and percent
        shown, verdict = "-", "not measured"
        if value is not None:
            short = goal - value if kind == "min" else value - goal
            shown = f"{value:.{digits}f}"
            verdict = "met" if short <= 0 else f"missed by {short:.{digits}f}"
        label = label.replace("test accuracy", f"{task_name} test accuracy")
        out.append(
            f"| {label}: {'at least' if kind == 'min' else 'at most'} {goal:g} | {shown} | {verdict} |"
        )
    return out + [""]


# --------------------------------------------------------------------------------------------------
# gathering
# --------------------------------------------------------------------------------------------------
def _json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _metric_rows(path: Path) -> list[dict]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def training_hours(run_dir: Path) -> dict[str, float]:
    """Tokens seen and hours spent in training steps, from the train rows of a run's metrics.jsonl.

    Each row reports the window's throughput; the tokens between two rows divided by it is the window's
    time, so the sum is the measured compute (evaluation and checkpoint writes excluded).
    """
    seconds, previous, tokens = 0.0, 0, 0
    for row in _metric_rows(run_dir / "metrics.jsonl"):
        if row.get("split") != "train" or "tokens_seen" not in row or not row.get("tokens_per_s"):
            continue
        delta = row["tokens_seen"] - previous
        if delta > 0:
            seconds += delta / row["tokens_per_s"]
        previous = tokens = row["tokens_seen"]
    return {"tokens_seen": tokens, "hours": round(seconds / 3600, 2)}


def finetune_summary(results: dict[str, Any] | None) -> dict[str, Any] | None:
    if results is None:
        return None
    keys = (
        "dev_acc_mean",
        "dev_acc_std",
        "test_acc_mean",
        "test_acc_std",
        "failed_runs",
        "runs",
        "majority_test_acc",
        "best_seed",
        "hyperparameters",
        "examples",
    )
    seeds = [
        {k: s[k] for k in ("seed", "best_dev_acc", "test_acc", "best_epoch", "seconds")}
        for s in results["seeds"]
    ]
    return {
        **{k: results.get(k) for k in keys},
        "seeds": seeds,
        "hours": round(sum(s["seconds"] for s in results["seeds"]) / 3600, 2),
    }


def measure(recipe: dict[str, Any], work: Path, target: Path, threads: int) -> dict[str, Any]:
    """Every figure of the card, measured now or read from the run folders; also written to card.json."""
    import torch

    from model.checkpoint import load_model
    from model.engine import Engine
    from training.figures import (
        attention_heatmaps,
        fill_mask_examples,
        mlm_accuracy_by_frequency,
        training_curves,
    )
    from training.tokenizer_stats import candidate_dir, compare

    torch.set_num_threads(threads)
    card = recipe.get("card", {})
    task = recipe["task"]
    pretrained_from = recipe.get("export", {}).get("pretrained_from", "pretrain")
    pretrained, pre_meta = load_model(work / pretrained_from / "model.pt")
    engine = Engine.load(target, intra_op_threads=threads)
    manifest = json.loads((target / "bundle.json").read_text(encoding="utf-8"))

    tokenizers = {
        "shipped": work / "tokenizer",
        **{c["name"]: candidate_dir(work, c["name"]) for c in recipe["tokenizer"].get("candidates", [])},
    }
    texts = {
        f"{task['name']} train": task["train"],
        f"{task['name']} test": task["test"],
        "wikipedia (held-out articles)": work / "eval-sentences.txt",
    }
    tokenizer_rows = [vars(r) for r in compare(tokenizers, texts, limit=20_000)]

    pretrain_runs = [("pretraining", work / "pretrain")]
    adapt_indomain = recipe.get("adapt", {}).get("indomain", True)
    if (work / "adapt").is_dir():
        pretrain_runs.append((f"continued ({INDOMAIN_VALUES[adapt_indomain][1]})", work / "adapt"))
    training_curves(
        pretrain_runs,
        [("pretrained", work / "finetune"), ("scratch", work / "finetune-scratch")],
        target / "training_curves.png",
    )
    attention = attention_heatmaps(engine, card.get("attention_text", "[MASK]"), target / "attention.png")

    data: dict[str, Any] = {
        "name": recipe["name"],
        "language": recipe.get("language"),
        "tokenizer": tokenizer_rows,
        "pretraining": {
            "valid": pre_meta.get("valid"),
            "step": pre_meta.get("step"),
            "from": pretrained_from,
            **training_hours(work / "pretrain"),
        },
        "adapt": (
            {
                "indomain": adapt_indomain,
                "valid": load_model(work / "adapt" / "model.pt")[1].get("valid"),
                **training_hours(work / "adapt"),
            }
            if (work / "adapt" / "model.pt").is_file()
            else None
        ),
        "mlm_by_frequency": mlm_accuracy_by_frequency(pretrained, work / "data"),
        "fill_mask": fill_mask_examples(engine, card.get("fill_mask", [])),
        "attention": attention,
        "finetune": finetune_summary(_json(work / "finetune" / "results.json")),
        "scratch": finetune_summary(_json(work / "finetune-scratch" / "results.json")),
        "baseline": _json(work / "baseline.json"),
        "study": _json(work / "study.json"),
        "export": {
            "checks": manifest.get("checks"),
            "export": manifest.get("export"),
            "size_mb": round(graphs_bytes(target) / 1e6, 2),
        },
        "extra_tests": [_extra_test(engine, test) for test in task.get("extra_tests", [])],
    }
    return data


def measured(
    recipe: dict[str, Any], work: Path, staging: Path, threads: int, key: str | None
) -> dict[str, Any]:
    """measure(), or its figures from the work folder when they were measured under the same `key` (a
    hash of everything they depend on: the bundle, the runs, the card's examples); None measures anew."""
    cache = work / MEASURED_DIR
    cached = _json(cache / "key.json") or {}
    if key is not None and cached.get("key") == key and (cache / CARD_DATA_FILE).is_file():
        for name in FIGURES:
            shutil.copyfile(cache / name, staging / name)
        print(f"card figures unchanged since {cached.get('measured')}: reusing {cache}")
        return json.loads((cache / CARD_DATA_FILE).read_text(encoding="utf-8"))
    data = measure(recipe, work, staging, threads)
    if key is not None:
        with staged(cache, overwrite=True) as folder:
            for name in FIGURES:
                shutil.copyfile(staging / name, folder / name)
            _write_json(folder / CARD_DATA_FILE, data)
            _write_json(folder / "key.json", {"key": key, "measured": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json_text(data), encoding="utf-8")


def _extra_test(engine, test: dict[str, Any]) -> dict[str, Any]:
    """The shipped classifier on another labelled set (e.g. out of domain), as the API would answer."""
    from training.figures import bundle_accuracy
    from training.tasks import read_task

    data = read_task(
        test["task"],
        Path(test["path"]).expanduser(),
        None,
        test.get("text_column", "text"),
        test.get("label_column", "label"),
    )
    return {"name": test["name"], **bundle_accuracy(engine, data.texts, data.labels)}


# --------------------------------------------------------------------------------------------------
# rendering
# --------------------------------------------------------------------------------------------------
def _adapt_graphs_sentence(pretrained_from: str) -> str:
    """Which weights answer fill-mask and next-sentence once an [adapt] stage ran: export's choice."""
    if pretrained_from == "adapt":
        return "The fill-mask and next-sentence graphs carry these adapted weights."
    return (
        "The classifier is fine-tuned from these adapted weights; the fill-mask and next-sentence graphs "
        'keep the pretrained ones measured above (`[export] pretrained_from = "adapt"` ships the adapted).'
    )


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _mean_std(summary: dict[str, Any] | None, key: str = "test_acc") -> str:
    """Mean ± std in percent; the mean alone for a single run (a "± 0.00" would claim no spread)."""
    if not summary or summary.get(f"{key}_mean") is None:
        return "-"
    mean = f"{100 * summary[f'{key}_mean']:.2f}"
    if summary.get("runs") == 1:
        return mean
    return f"{mean} ± {100 * (summary.get(f'{key}_std') or 0):.2f}"


def front_matter(recipe: dict[str, Any], data: dict[str, Any]) -> str:
    card, task = recipe.get("card", {}), recipe["task"]
    ft = data.get("finetune") or {}
    valid = (data.get("pretraining") or {}).get("valid") or {}
    lines = [
        "---",
        f"language: {recipe.get('language', 'und')}",
        f"license: {card.get('license', 'apache-2.0')}",
        "library_name: pocketbert",
        "pipeline_tag: text-classification",
        "tags:",
        "  - bert",
        "  - onnx",
        "  - fill-mask",
        "  - text-classification",
        "datasets:",
    ]
    lines += [f"  - {d}" for d in card.get("datasets", [])]
    lines += ["metrics:", "  - accuracy", "model-index:", f"  - name: {recipe['name']}", "    results:"]
    if ft.get("test_acc_mean") is not None:
        lines += [
            "      - task:",
            "          type: text-classification",
            "          name: Sentiment classification",
            "        dataset:",
            f"          type: {card.get('task_dataset', task['name'])}",
            f"          name: {card.get('task_dataset_name', task['name'])}",
            f"          split: {card.get('task_split', 'test')}",
            "        metrics:",
            "          - type: accuracy",
            f"            value: {ft['test_acc_mean']:.4f}",
            f"            name: accuracy (mean of {_count(ft.get('runs'), 'seed')})",
        ]
    if valid:
        lines += [
            "      - task:",
            "          type: fill-mask",
            "          name: Masked language modelling",
            "        dataset:",
            f"          type: {card.get('corpus_dataset', 'wikipedia')}",
            f"          name: {card.get('corpus_name', 'Wikipedia')} (held-out articles)",
            "          split: validation",
            "        metrics:",
            "          - type: accuracy",
            f"            value: {valid['mlm_acc']:.4f}",
            "            name: MLM accuracy",
            "          - type: accuracy",
            f"            value: {valid['nsp_acc']:.4f}",
            "            name: NSP accuracy",
        ]
    return "\n".join(lines + ["---", ""])


def shipped_seed_lines(ft: dict[str, Any] | None, checks: dict[str, Any]) -> list[str]:
    """Which seed's classifier the bundle holds and what that one scores: the table's figure is a mean."""
    if not ft or ft.get("best_seed") is None:
        return []
    seed = next(s for s in ft["seeds"] if s["seed"] == ft["best_seed"])
    line = (
        f"The bundle holds one classifier, seed {seed['seed']}'s: the seed with the best dev accuracy "
        f"({_pct(seed['best_dev_acc'], 2)}%; the test set plays no part in the choice). It scores "
        f"{_pct(seed['test_acc'], 2)}% on the test set"
    )
    scored = (checks.get("int8") or {}).get("classifier") or {}
    if scored.get("run") and scored.get("int8_accuracy") is not None:
        line += f", {scored['int8_accuracy']:.2f}% as the shipped INT8 graph"
    return [line + ".", ""]


def render(recipe: dict[str, Any], data: dict[str, Any]) -> str:
    """MODEL_CARD.md from the recipe's [card] texts and the measured figures."""
    card, task = recipe.get("card", {}), recipe["task"]
    pre, ft, scratch, base = (
        data["pretraining"],
        data.get("finetune"),
        data.get("scratch"),
        data.get("baseline"),
    )
    valid = pre.get("valid") or {}
    out = [front_matter(recipe, data), f"# {recipe['name']}: {card.get('title', '')}".rstrip(": "), ""]
    out += [card.get("summary", "").strip(), ""]

    out += ["## Results", "", f"| model | {task['name']} test accuracy | notes |", "|---|---|---|"]
    if ft:
        seeds = _count(ft["runs"], "seed")
        out.append(
            f"| **{recipe['name']}** (this model, {data['export']['size_mb']:.1f} MB INT8 bundle) | "
            f"**{_mean_std(ft)}** | {f'mean ± std over {seeds}' if ft['runs'] > 1 else seeds}, "
            f"{ft['failed_runs']} failed |"
        )
    if scratch:
        out.append(
            f"| same recipe, no pretraining (`--init scratch`) | {_mean_std(scratch)} | "
            f"{_count(scratch['runs'], 'seed')} |"
        )
    if base:
        out.append(
            f"| TF-IDF word 1-2 + char 1-4 grams, logistic regression (`bench/baseline.py`) | "
            f"{_pct(base['test_acc'], 2)} | same train/dev split |"
        )
    for name, value, note in card.get("anchors", []):
        out.append(f"| {name} | {value} | {note} |")
    out.append("")
    for extra in data.get("extra_tests", []):
        out += [
            f"On **{extra['name']}** ({extra['examples']:,} texts) the shipped bundle scores "
            f"**{_pct(extra['accuracy'], 2)}%**; {extra['truncated']:,} of the texts were longer than "
            f"{extra['max_length']} pieces and kept only their start.",
            "",
        ]
    out += shipped_seed_lines(ft, data["export"].get("checks") or {})
    if ft and base:
        margin = 100 * (ft["test_acc_mean"] - base["test_acc"])
        verdict = "above" if margin > 0 else "below"
        out += [
            f"The model is {abs(margin):.2f} points {verdict} the TF-IDF line"
            + (
                f" and {100 * (ft['test_acc_mean'] - scratch['test_acc_mean']):+.2f} points over the "
                "same recipe without pretraining."
                if scratch
                else "."
            ),
            "",
        ]
    out += target_lines(card.get("targets", {}), data, task["name"])
    if card.get("gap_text"):  # the recipe's reading of the results: what would move them
        out += [card["gap_text"].strip(), ""]

    out += [
        "## Pretraining",
        "",
        card.get("pretraining_text", "").strip(),
        "",
        "| validation (held-out articles) | value |",
        "|---|---|",
        f"| MLM accuracy | {_pct(valid.get('mlm_acc'))}% |",
        f"| NSP accuracy | {_pct(valid.get('nsp_acc'))}% |",
        f"| MLM loss | {valid.get('mlm_loss', float('nan')):.3f} |",
        f"| step | {pre.get('step')} |",
        f"| tokens seen | {pre.get('tokens_seen', 0) / 1e6:.1f}M |",
        "",
    ]
    if data.get("adapt"):
        a = data["adapt"]
        indomain = a.get("indomain", True)  # cards measured before the setting existed: the mix
        only = indomain == "only"
        out += [
            f"Continued pretraining on {INDOMAIN_VALUES[indomain][1]}"
            f"{' (task-adaptive, Gururangan et al. 2020)' if only else ''}: "
            f"{a['tokens_seen'] / 1e6:.1f}M more tokens; validation MLM "
            f"{_pct((a['valid'] or {}).get('mlm_acc'))}%, NSP {_pct((a['valid'] or {}).get('nsp_acc'))}% "
            f"on {'held-out in-domain texts' if only else 'the same held-out articles'}. "
            + _adapt_graphs_sentence(pre.get("from", "pretrain")),
            "",
        ]
    out += [
        "![training curves](training_curves.png)",
        "",
        "MLM accuracy by how frequent the masked piece is "
        "(rank among the ordinary pieces in the training data):",
        "",
        "| frequency rank | share of the text | masked pieces scored | accuracy |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {r['ranks']} | {_pct(r['share_of_text'])}% | {r['masked']:,} | {_pct(r['accuracy'])}% |"
        for r in data["mlm_by_frequency"]
    ]
    out += ["", "### Fill-mask examples (the shipped INT8 bundle)", "", "| input | top 5 |", "|---|---|"]
    out += [
        f"| {r['text']} | " + ", ".join(f"{p['token']} ({p['score']:.2f})" for p in r["predictions"]) + " |"
        for r in data["fill_mask"]
    ]
    out += [
        "",
        f'### Attention, layer by head, for "{data["attention"]["text"]}"',
        "",
        "![attention heatmaps](attention.png)",
        "",
    ]

    out += ["## Fine-tuning", "", card.get("finetune_text", "").strip(), ""]
    for label, summary in (("pretrained", ft), ("scratch", scratch)):
        if not summary:
            continue
        hp = summary["hyperparameters"]
        out += [
            f"**{label}** (lr {hp['lr']}, {hp['epochs']} epochs, batch {hp['batch_size']}, max length "
            f"{hp['max_length']}, dropout {hp.get('dropout')}):",
            "",
            "| seed | dev accuracy | test accuracy | best epoch |",
            "|---|---|---|---|",
        ]
        out += [
            f"| {s['seed']} | {_pct(s['best_dev_acc'], 2)} | {_pct(s['test_acc'], 2)} | {s['best_epoch']} |"
            for s in summary["seeds"]
        ]
        if summary.get("runs") != 1:
            out.append(f"| mean ± std | {_mean_std(summary, 'dev_acc')} | {_mean_std(summary)} | |")
        out.append("")

    checks = data["export"].get("checks") or {}
    out += ["## The bundle: INT8 against fp32", "", "| check | value |", "|---|---|"]
    for key, value in _flatten(checks).items():
        out.append(f"| {key} | {value} |")
    fill = (checks.get("int8") or {}).get("fill_mask") or {}
    if fill.get("run") and not fill.get("passed"):
        out += [
            "",
            f"INT8 fill-mask top-1 agreement with fp32 is {_pct(fill['top1_agreement'])}%, under its "
            f"{_pct(fill['threshold'], 0)}% target, while top-1 accuracy against the masked piece is "
            f"{_pct(fill['fp32_top1_accuracy'])}% (fp32) and {_pct(fill['int8_top1_accuracy'])}% (INT8): "
            "the predictions that change are near-ties between wrong answers, not lost knowledge.",
        ]
    out.append("")

    out += [
        "## Tokenizer",
        "",
        card.get("tokenizer_text", "").strip(),
        "",
    ]
    jamo = recipe.get("language") == "ko"  # Hangul's letters as pieces of their own: a Korean concern
    out += [
        "| tokenizer | text | texts | pieces per text | chars per piece | [UNK] |"
        + (" single jamo |" if jamo else ""),
        "|---|---|---|---|---|---|" + ("---|" if jamo else ""),
    ]
    out += [
        f"| {r['tokenizer']} | {r['text']} | {r['texts']:,} | {r['pieces_per_text']:.2f} | "
        f"{r['chars_per_piece']:.2f} | {100 * r['unk_share']:.3f}% |"
        + (f" {100 * r['single_jamo_share']:.2f}% |" if jamo else "")
        for r in data["tokenizer"]
    ]
    out.append("")

    if data.get("study"):
        out += [
            "## The recipe study",
            "",
            card.get("study_text", "").strip(),
            "",
            "| arm | what changes | MLM acc | NSP acc | probe dev acc |",
            "|---|---|---|---|---|",
        ]
        out += [
            f"| {a['arm']} | {a.get('description', '')} | {_pct(a.get('mlm_acc'))} | "
            f"{_pct(a.get('nsp_acc'))} | {_pct(a.get('probe_dev_acc'), 2)} |"
            for a in data["study"]["arms"]
        ]
        if data["study"].get("finetune_lr"):
            out += [
                "",
                "Fine-tuning learning rate (the probe of the starting point, dev accuracy):",
                "",
                "| peak lr | probe dev acc |",
                "|---|---|",
            ]
            by_rate = sorted(data["study"]["finetune_lr"], key=lambda r: float(r["lr"]))  # "1e-4" or 0.0003
            out += [f"| {float(r['lr']):g} | {_pct(r['probe_dev_acc'], 2)} |" for r in by_rate]
        out.append("")

    hours = pre.get("hours", 0) + (data.get("adapt") or {}).get("hours", 0)
    ft_hours = sum((s or {}).get("hours", 0) for s in (ft, scratch))
    out += [
        "## Recipe and compute",
        "",
        card.get("recipe_text", "").strip(),
        "",
        f"Compute: {data['compute']}. Pretraining {hours:.1f} h of training steps "
        f"({pre.get('tokens_seen', 0) / 1e6:.0f}M tokens"
        + (
            f" + {(data['adapt'] or {}).get('tokens_seen', 0) / 1e6:.1f}M continued"
            if data.get("adapt")
            else ""
        )
        + f"); fine-tuning {ft_hours:.1f} h for all seeds, pretrained and scratch.",
        "",
        f"Reproduce everything: `pocketbert recipe {recipe['_path']}` (the exact commands it ran are in the "
        "work folder's `commands.log`).",
        "",
    ]
    out += [
        "## Data and licenses",
        "",
        card.get("data_text", "").strip(),
        "",
        "## Limits",
        "",
        card.get("limits_text", "").strip(),
        "",
    ]
    return "\n".join(out)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(value, float):  # small differences (parity) keep their magnitude: 8.6e-06, not 0.0
        value = f"{value:.1e}" if 0 < abs(value) < 1e-3 else round(value, 4)
    return {prefix: value}


def _count(n: int | None, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


# --------------------------------------------------------------------------------------------------
# the stage
# --------------------------------------------------------------------------------------------------
def headline(data: dict[str, Any]) -> dict[str, Any]:
    """The few figures /v1/models shows for this model (written into bundle.json)."""
    ft, base = data.get("finetune") or {}, data.get("baseline") or {}
    valid = (data.get("pretraining") or {}).get("valid") or {}
    return {
        "test_accuracy_mean": ft.get("test_acc_mean"),
        "test_accuracy_std": ft.get("test_acc_std"),
        "seeds": ft.get("runs"),
        "scratch_test_accuracy_mean": (data.get("scratch") or {}).get("test_acc_mean"),
        "tfidf_test_accuracy": base.get("test_acc"),
        "mlm_accuracy": valid.get("mlm_acc"),
        "nsp_accuracy": valid.get("nsp_acc"),
    }


def with_compute(recipe: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """The measured figures plus the compute the card names: a text of the recipe's, never measured."""
    return {**data, "compute": recipe.get("card", {}).get("compute", "CPU")}


def render_from_bundle(recipe: dict[str, Any], target: Path) -> Path:
    """MODEL_CARD.md rendered again from the bundle's own card.json (its measured figures) and the recipe's
    current texts: a text edit needs neither the work folder nor a measurement."""
    measured_data = _json(target / CARD_DATA_FILE)
    if measured_data is None:
        raise CLIError(
            f"{target / CARD_DATA_FILE}: no measured card figures there; run the recipe's card stage"
        )
    write_card(recipe, with_compute(recipe, measured_data), target)
    return target / CARD_FILE


def write_card(recipe: dict[str, Any], data: dict[str, Any], folder: Path) -> None:
    """card.json (the figures) and MODEL_CARD.md (the recipe's texts around them) in the bundle folder.

    The card is rendered before anything is written, and both files go through temporary files renamed
    into place one after the other: a recipe text that fails to render leaves the old pair untouched."""
    write_texts_atomic(
        {
            folder / CARD_DATA_FILE: json_text(data),
            folder / CARD_FILE: render(recipe, data),
        }
    )


def build_card(
    recipe: dict[str, Any], work: Path, target: Path, threads: int = 1, key: str | None = None
) -> Path:
    """The exported bundle plus MODEL_CARD.md, card.json and the figures, published at `target` as a whole.

    `key` identifies what the figures depend on (see `measured`); the card's texts are not part of it."""
    with staged(target, overwrite=True) as staging:
        shutil.copytree(work / recipe["name"], staging, dirs_exist_ok=True)
        data = with_compute(recipe, measured(recipe, work, staging, threads, key))
        write_card(recipe, data, staging)
        manifest_path = staging / "bundle.json"
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest.update(language=recipe.get("language"), card=headline(data))
        manifest_path.write_text(json_text(manifest), encoding="utf-8")
    print(f"wrote {target / CARD_FILE} and its figures; bundle {target}")
    return target / CARD_FILE
