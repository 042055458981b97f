// pocketbert demo page: plain JavaScript, no build step. Calls the same JSON API as any client.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value; else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child);
  return node;
}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    // 422: FastAPI's list of {loc, msg}; 503/504: {detail: "..."}
    const detail = Array.isArray(data.detail)
      ? data.detail.map((d) => `${d.loc.slice(1).join(".")}: ${d.msg}`).join("\n")
      : data.detail || response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

function model() { return $("model").value || undefined; }

// A Korean and an English example per task; the buttons above each form fill it in.
const EXAMPLES = {
  "fill-mask": { en: ["The capital of France is [MASK]."], ko: ["대한민국의 수도는 [MASK]이다."] },
  nsp: { en: ["I went to the store.", "I bought some milk."], ko: ["나는 가게에 갔다.", "우유를 샀다."] },
  classify: { en: ["A wonderful, moving film."], ko: ["정말 재미있는 영화였다."] },
  attention: { en: ["The cat sat on the mat because it was tired."], ko: ["고양이가 피곤해서 매트 위에 앉았다."] },
};
const EXAMPLE_FIELDS = {
  "fill-mask": ["fill-mask-text"], nsp: ["nsp-first", "nsp-second"], classify: ["classify-text"],
  attention: ["attention-text"],
};
document.querySelectorAll(".examples").forEach((box) => box.querySelectorAll("button.example").forEach((button) =>
  button.addEventListener("click", () => {
    const task = box.dataset.task, values = EXAMPLES[task][button.dataset.language];
    EXAMPLE_FIELDS[task].forEach((id, i) => { $(id).value = values[i]; });
  })));

// "answered by MODEL", plus which inputs the model cut to its maximum length.
function answered(data) {
  const cut = [].concat(data.truncated ?? []).some(Boolean);
  return el("div", { class: "answered" }, `answered by ${data.model}` + (cut ? " · the text was cut to the model's maximum length" : ""));
}

function bar(label, score) {
  return el("div", { class: "bar" },
    el("span", { class: "label", title: label }, label),
    el("span", { class: "track" }, Object.assign(el("span", { class: "fill" }), { style: `width:${(100 * score).toFixed(1)}%` })),
    el("span", { class: "value" }, score.toFixed(3)));
}

// Runs a panel's request, disabling its button meanwhile and showing errors in its result box.
function wire(formId, buttonId, resultId, run) {
  $(formId).addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $(buttonId), result = $(resultId);
    button.disabled = true;
    result.dataset.state = "busy";
    try {
      await run(result);
      result.dataset.state = "done";
    } catch (error) {
      result.replaceChildren(el("div", { class: "error" }, String(error.message || error)));
      result.dataset.state = "error";
    } finally {
      button.disabled = false;
    }
  });
}

wire("fill-mask-form", "fill-mask-run", "fill-mask-result", async (result) => {
  const data = await api("/fill-mask", {
    inputs: $("fill-mask-text").value, top_k: Number($("fill-mask-topk").value), model: model(), truncate: true,
  });
  const entry = data.results[0];
  const perMask = Array.isArray(entry[0]) ? entry : [entry];  // one list, or one list per [MASK]
  result.replaceChildren(...perMask.flatMap((predictions, i) => [
    el("div", { class: "mask-title" }, perMask.length > 1 ? `[MASK] #${i + 1}` : "[MASK]"),
    el("ol", { class: "predictions" }, ...predictions.map((p) =>
      el("li", { class: "prediction" }, bar(p.token_str, p.score), el("div", { class: "muted" }, p.sequence)))),
  ]), answered(data));
});

wire("next-sentence-form", "nsp-run", "nsp-result", async (result) => {
  const data = await api("/next-sentence", {
    pairs: { first: $("nsp-first").value, second: $("nsp-second").value }, model: model(), truncate: true,
  });
  const r = data.results[0];
  result.replaceChildren(
    el("div", { class: "verdict" }, r.is_next ? "B follows A" : "B does not follow A"),
    bar("P(is next)", r.score), answered(data));
});

wire("classify-form", "classify-run", "classify-result", async (result) => {
  const data = await api("/classify", { inputs: $("classify-text").value, model: model(), truncate: true });
  result.replaceChildren(...data.results[0].map((x) => Object.assign(bar(x.label, x.score), { className: "bar label-score" })),
    answered(data));
});

// --- attention heatmaps ---------------------------------------------------------------------------
let attention = null;

function drawHeatmap(canvas, matrix, tokens, withLabels) {
  const n = matrix.length;
  const ctx = canvas.getContext("2d");
  const margin = withLabels ? Math.min(110, 12 + 7 * Math.max(...tokens.map((t) => t.length))) : 0;
  const cell = (canvas.width - margin) / n;
  // Colours span this map's smallest to largest weight, so a head that spreads its attention thinly
  // (as an untrained one does) still shows its pattern.
  const flat = matrix.flat();
  const low = Math.min(...flat), span = Math.max(1e-9, Math.max(...flat) - low);
  ctx.fillStyle = "white";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < n; j++) {
      const t = (matrix[i][j] - low) / span;  // white (smallest) -> deep blue (largest)
      ctx.fillStyle = `rgb(${Math.round(255 - 196 * t)},${Math.round(255 - 164 * t)},${Math.round(255 - 36 * t)})`;
      ctx.fillRect(margin + j * cell, margin + i * cell, Math.ceil(cell), Math.ceil(cell));
    }
  }
  if (withLabels) {
    ctx.fillStyle = "#1f2933";
    ctx.font = `${Math.max(8, Math.min(13, cell * 0.8))}px system-ui, sans-serif`;
    ctx.textBaseline = "middle";
    tokens.forEach((token, i) => {
      ctx.textAlign = "right";
      ctx.fillText(token, margin - 4, margin + (i + 0.5) * cell);
      ctx.save();
      ctx.translate(margin + (i + 0.5) * cell, margin - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(token, 0, 0);
      ctx.restore();
    });
  }
  canvas.dataset.drawn = "true";
}

function selectHead(layer, head) {
  document.querySelectorAll("#attention-grid figure").forEach((f) =>
    f.classList.toggle("selected", f.dataset.layer === String(layer) && f.dataset.head === String(head)));
  $("attention-caption").textContent = `layer ${layer + 1}, head ${head + 1}`;
  const big = $("attention-canvas");
  big.dataset.layer = layer;
  big.dataset.head = head;
  drawHeatmap(big, attention.attentions[layer][head], attention.tokens, true);
}

wire("attention-form", "attention-run", "attention-result", async () => {
  attention = await api("/attention", { text: $("attention-text").value, model: model(), truncate: true });
  const grid = $("attention-grid");
  grid.style.gridTemplateColumns = `repeat(${attention.num_heads}, auto)`;
  const figures = [];
  attention.attentions.forEach((heads, layer) => heads.forEach((matrix, head) => {
    const canvas = el("canvas", { width: 96, height: 96, class: "head-map" });
    drawHeatmap(canvas, matrix, attention.tokens, false);
    const figure = el("figure", { "data-layer": layer, "data-head": head }, canvas,
      el("figcaption", {}, `L${layer + 1} H${head + 1}`));
    figure.addEventListener("click", () => selectHead(layer, head));
    figures.push(figure);
  }));
  grid.replaceChildren(...figures);
  $("attention-answered").replaceChildren(answered(attention));
  selectHead(0, 0);
});

// --- models -------------------------------------------------------------------------------------------
const LANGUAGES = { en: "English", ko: "Korean" };

function figures(m) {
  return Object.entries(m.headline || {}).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ");
}

async function loadModels() {
  try {
    const data = await api("/v1/models");
    const select = $("model");
    const options = data.models.map((m) =>
      el("option", { value: m.name }, `${m.name} (${LANGUAGES[m.language] || m.language})`));
    const auto = data.routing === "language" && data.models.length > 1;
    if (auto) options.unshift(el("option", { value: "" }, "auto (by language)"));
    select.replaceChildren(...options);
    select.value = auto ? "" : (data.default || data.models[0]?.name || "");
    const describe = () => {
      const m = data.models.find((x) => x.name === select.value);
      const offers = (task) => (m ? m.tasks.includes(task) : data.models.some((x) => x.tasks.includes(task)));
      $("classify-unavailable").hidden = offers("classify");
      $("classify-run").disabled = !offers("classify");
      $("attention-run").disabled = !offers("attention");
      if (!m) {
        $("model-info").textContent = data.models.map((x) => `${x.name}: ${LANGUAGES[x.language] || x.language}`).join(" · ");
        return;
      }
      const c = m.config;
      $("model-info").textContent =
        `${LANGUAGES[m.language] || m.language} · ${c.num_hidden_layers} layers · hidden ${c.hidden_size} · ` +
        `${c.num_attention_heads} heads · vocabulary ${c.vocab_size} · max ${m.max_length} tokens · ` +
        `tasks: ${m.tasks.join(", ")}` + (m.labels.length ? ` · labels: ${m.labels.join(", ")}` : "") +
        (figures(m) ? ` · ${figures(m)}` : "");
    };
    select.addEventListener("change", describe);
    describe();
    $("status").textContent = data.models.length ? "ready" : "no model loaded";
    document.body.dataset.ready = "true";
  } catch (error) {
    $("status").textContent = `cannot list models: ${error.message}`;
  }
}

loadModels();
