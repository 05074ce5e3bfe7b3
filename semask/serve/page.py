"""The single HTML page of ``semask serve``: inline CSS and JavaScript, no external assets."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>semask serve</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #222; }
  header { background: #1f3a5f; color: #fff; padding: 10px 20px; }
  header h1 { font-size: 18px; margin: 0; }
  header span { font-size: 13px; opacity: .8; }
  main { display: flex; gap: 20px; padding: 16px 20px; flex-wrap: wrap; }
  #left { flex: 1 1 480px; }
  #right { flex: 0 0 260px; }
  #drop { border: 2px dashed #8795a8; border-radius: 8px; padding: 18px; text-align: center;
          background: #fff; cursor: pointer; }
  #drop.over { background: #e6eefb; border-color: #1f6feb; }
  #view { position: relative; margin-top: 12px; display: none; width: min(100%, 640px); }
  #view img { display: block; width: 100%; image-rendering: pixelated; }
  #view #mask { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
  #controls { margin-top: 8px; display: none; }
  #legend table { border-collapse: collapse; width: 100%; background: #fff; font-size: 14px; }
  #legend td { padding: 3px 6px; border-bottom: 1px solid #eee; }
  .swatch { width: 16px; height: 16px; border-radius: 3px; display: inline-block; border: 1px solid #0003; }
  #status { margin-top: 8px; font-size: 14px; min-height: 1.2em; }
  #status.error { color: #b00020; font-weight: 600; }
  #priors { padding: 0 20px 20px; }
  .stage { display: inline-block; vertical-align: top; margin: 0 12px 12px 0; background: #fff; padding: 6px;
           border-radius: 6px; font-size: 12px; }
  .stage img { display: block; width: 150px; image-rendering: pixelated; margin-top: 3px; }
</style>
</head>
<body>
<header><h1>semask serve</h1><span id="model">loading model info...</span></header>
<main>
  <div id="left">
    <div id="drop">Drop an image here, or <label><u>choose a file</u>
      <input id="file" type="file" accept="image/*" hidden></label></div>
    <div id="controls">
      <label for="opacity">overlay opacity</label>
      <input id="opacity" type="range" min="0" max="100" value="60">
      <span id="opacity-value">60%</span>
    </div>
    <div id="status"></div>
    <div id="view"><img id="photo" alt="uploaded image"><img id="mask" alt="segmentation overlay"></div>
  </div>
  <div id="right"><div id="legend"></div></div>
</main>
<section id="priors"></section>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
let info = null;

fetch("/info").then((r) => r.json()).then((data) => {
  info = data;
  const lambdas = Object.entries(data.lambda).map(([k, v]) => k + "=" + v.toFixed(3)).join(", ");
  $("model").textContent = data.model + " - " + data.num_classes + " classes" +
    (data.has_priors ? " - lambda " + lambdas : " - no semantic layers (baseline)");
});

function setOpacity() {
  const value = $("opacity").value;
  $("mask").style.opacity = value / 100;
  $("opacity-value").textContent = value + "%";
}
$("opacity").addEventListener("input", setOpacity);

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

function swatch(color) {
  const s = document.createElement("span");
  s.className = "swatch";
  s.style.background = "rgb(" + color.join(",") + ")";
  return s;
}

function showLegend(classes) {
  const table = document.createElement("table");
  table.innerHTML = "<tr><td></td><td><b>class</b></td><td><b>pixels</b></td></tr>";
  for (const c of classes) {
    const row = table.insertRow();
    row.insertCell().appendChild(swatch(c.color));
    row.insertCell().textContent = c.name;
    row.insertCell().textContent = (100 * c.share).toFixed(1) + "%";
  }
  $("legend").replaceChildren(table);
}

function showPriors(stages, agreement) {
  const box = $("priors");
  box.replaceChildren();
  if (!stages) return;
  const title = document.createElement("h3");
  title.textContent = "Semantic-prior maps per stage (prior and final prediction agree on " +
    (100 * agreement).toFixed(0) + "% of pixels)";
  box.appendChild(title);
  for (const s of stages) {
    const div = document.createElement("div");
    div.className = "stage";
    div.textContent = "stage " + s.stage + (s.lambda === null ? "" : " (lambda " + s.lambda.toFixed(3) + ")");
    const maps = [["prior argmax", s.argmax_png]].concat(s.heatmaps.map((h) => [h.name, h.png]));
    for (const [name, png] of maps) {
      const caption = document.createElement("div");
      caption.textContent = name;
      const img = new Image();
      img.src = "data:image/png;base64," + png;
      div.appendChild(caption);
      div.appendChild(img);
    }
    box.appendChild(div);
  }
}

async function segment(blob) {
  status("segmenting...", false);
  const t0 = performance.now();
  let answer;
  try {
    const response = await fetch("/predict?priors=1", {
      method: "POST",
      headers: { "Content-Type": blob.type || "application/octet-stream" },
      body: blob,
    });
    answer = await response.json();
    if (!response.ok) { status("error " + response.status + ": " + answer.error, true); return; }
  } catch (err) {
    status("request failed: " + err, true);
    return;
  }
  $("photo").src = URL.createObjectURL(blob);
  $("mask").src = "data:image/png;base64," + answer.color_png;
  $("view").style.display = "inline-block";
  $("controls").style.display = "block";
  setOpacity();
  showLegend(answer.classes);
  showPriors(answer.priors, answer.agreement);
  status(answer.width + "x" + answer.height + " segmented in " + ((performance.now() - t0) / 1000).toFixed(2) +
    " s (model " + answer.seconds.toFixed(2) + " s)", false);
  document.body.dataset.ready = "1";
}

$("file").addEventListener("change", () => { if ($("file").files[0]) segment($("file").files[0]); });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files[0]) segment(e.dataTransfer.files[0]);
});
</script>
</body>
</html>
"""
