// micromets viewer front end: case -> node -> slide navigation over OpenSeadragon, heatmap layer,
// lesion outlines drawn on an overlay canvas, deposit list, ruler in µm/mm.
// Geometry from the server is in level-0 pixels; OpenSeadragon's viewport unit is the slide width
// (viewport x = l0_x / l0_width, viewport y = l0_y / l0_width).
"use strict";

const state = {
  catalog: null, slide: null, key: null, features: [], selected: null,
  heatmapItem: null, ruler: null, rulerMode: false, colours: {}, cells: [],
  caseKey: null, review: null, drawMode: false, drawPts: [],
};

const $ = (id) => document.getElementById(id);
const LABEL_MIN_PX = 24; // a lesion is labelled once it spans this many screen pixels (or is selected)

const viewer = OpenSeadragon({
  element: $("viewer"),
  prefixUrl: "/static/vendor/openseadragon/images/",
  drawer: "canvas",
  showNavigator: true,
  navigatorPosition: "BOTTOM_RIGHT",
  maxZoomPixelRatio: 2, // no zoom past 2x native
  navigatorAutoFade: false,
  autoHideControls: false,
  animationTime: 0.6,
  crossOriginPolicy: false,
});

const overlay = document.createElement("canvas");
overlay.id = "overlay";
overlay.style.cssText = "position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none;";
viewer.canvas.appendChild(overlay);

function fmtLength(um) {
  return um >= 1000 ? (um / 1000).toFixed(um >= 10000 ? 1 : 2) + " mm" : um.toFixed(um >= 100 ? 0 : 1) + " µm";
}

function niceLengthUm(maxUm) {
  const base = Math.pow(10, Math.floor(Math.log10(maxUm)));
  return [5, 2, 1].map((m) => m * base).find((v) => v <= maxUm);
}

function classColour(cls) {
  const c = state.colours[cls] || [255, 255, 255];
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

// level-0 px <-> overlay element px
function transform(v = viewer, slide = state.slide) {
  const b = v.viewport.getBoundsNoRotate(true);
  const size = v.viewport.getContainerSize();
  const w = slide.l0_width;
  const scale = size.x / b.width; // element px per viewport unit
  return {
    toEl: (x, y) => [(x / w - b.x) * scale, (y / w - b.y) * scale],
    toL0: (px, py) => [(px / scale + b.x) * w, (py / scale + b.y) * w],
    umPerPx: slide.l0_mpp * w / scale,
  };
}

function draw() {
  const dpr = window.devicePixelRatio || 1;
  const rect = overlay.getBoundingClientRect();
  overlay.width = Math.round(rect.width * dpr);
  overlay.height = Math.round(rect.height * dpr);
  const ctx = overlay.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, rect.width, rect.height);
  if (!state.slide) return;
  const t = transform();
  if ($("outline-toggle").checked) drawOutlines(ctx, t, state.features, state.selected);
  if ($("cells-toggle").checked) drawCells(ctx, t);
  if (state.drawPts.length) {
    ctx.lineWidth = 2; ctx.strokeStyle = "#00e5ff"; ctx.beginPath();
    state.drawPts.forEach((p, i) => { const [ex, ey] = t.toEl(...p); if (i === 0) ctx.moveTo(ex, ey); else ctx.lineTo(ex, ey); });
    ctx.stroke();
  }
  drawScaleBar(ctx, t, rect);
  if (state.ruler) drawRuler(ctx, t);
}

// lesion outlines (class colour on a dark halo) with their labels, larger lesions first
function drawOutlines(ctx, t, features, selectedId) {
  ctx.font = "bold 13px DejaVu Sans, Arial, sans-serif";
  const placed = []; // label boxes drawn so far: larger lesions first, later labels that would overlap are skipped
  for (const f of features) {
    const p = f.properties;
    const selected = selectedId === p.id;
    for (const pass of [0, 1]) {
      ctx.lineWidth = pass === 0 ? (selected ? 6 : 4) : (selected ? 3.5 : 2);
      ctx.strokeStyle = pass === 0 ? "rgba(20,20,20,0.85)" : classColour(p.class);
      for (const poly of f.geometry.coordinates) {
        ctx.beginPath();
        poly[0].forEach(([x, y], i) => {
          const [ex, ey] = t.toEl(x, y);
          if (i === 0) ctx.moveTo(ex, ey); else ctx.lineTo(ex, ey);
        });
        ctx.closePath();
        ctx.stroke();
      }
    }
    const bbox = f.bbox;
    const [lx, ly] = t.toEl(bbox[0], bbox[1]);
    const [rx, ry] = t.toEl(bbox[2], bbox[3]);
    if (!selected && Math.max(rx - lx, ry - ly) < LABEL_MIN_PX) continue; // label what can be seen
    const label = `${p.id} ${p.class} ${p.diameter_text}`;
    const box = [lx, ly - 18, lx + ctx.measureText(label).width, ly];
    if (!selected && placed.some((b) => box[0] < b[2] && b[0] < box[2] && box[1] < b[3] && b[1] < box[3])) continue;
    placed.push(box);
    ctx.lineWidth = 3;
    ctx.strokeStyle = "rgba(20,20,20,0.9)";
    ctx.strokeText(label, lx, ly - 4);
    ctx.fillStyle = classColour(p.class);
    ctx.fillText(label, lx, ly - 4);
  }
}

function drawCells(ctx, t) {
  const r = Math.max(2, Math.min(6, 3 / t.umPerPx)); // a ~6 µm dot, 2-6 screen px
  ctx.lineWidth = 1;
  for (const f of state.cells) {
    const [ex, ey] = t.toEl(...f.geometry.coordinates);
    ctx.beginPath();
    ctx.arc(ex, ey, r, 0, 2 * Math.PI);
    ctx.fillStyle = f.properties.nuclei > 1 ? "#ff9800" : "#ffeb3b";
    ctx.fill();
    ctx.strokeStyle = "#000";
    ctx.stroke();
  }
}

function drawScaleBar(ctx, t, rect) {
  const um = niceLengthUm(t.umPerPx * rect.width * 0.2);
  const px = um / t.umPerPx;
  const x = 12, y = rect.height - 16;
  ctx.fillStyle = "rgba(255,255,255,0.85)";
  ctx.fillRect(x - 4, y - 20, Math.max(px, 60) + 8, 28);
  ctx.fillStyle = "#000";
  ctx.fillRect(x, y, px, 4);
  ctx.font = "12px DejaVu Sans, Arial, sans-serif";
  ctx.fillText(fmtLength(um), x, y - 5);
  // resolution at this zoom; magnification as on a microscope (10x objective ~ 1 µm/px)
  const res = `${t.umPerPx.toFixed(2)} µm/px ≈ ${(10 / t.umPerPx).toFixed(1)}×`;
  ctx.fillStyle = "rgba(255,255,255,0.85)";
  ctx.fillRect(x - 4, y - 44, ctx.measureText(res).width + 8, 20);
  ctx.fillStyle = "#000";
  ctx.fillText(res, x, y - 29);
}

function drawRuler(ctx, t) {
  const [x0, y0] = t.toEl(...state.ruler.a);
  const [x1, y1] = t.toEl(...state.ruler.b);
  ctx.lineWidth = 3;
  ctx.strokeStyle = "#000";
  ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
  ctx.lineWidth = 1.5;
  ctx.strokeStyle = "#ffeb3b";
  ctx.beginPath(); ctx.moveTo(x0, y0); ctx.lineTo(x1, y1); ctx.stroke();
  const text = fmtLength(rulerLengthUm());
  ctx.font = "bold 13px DejaVu Sans, Arial, sans-serif";
  ctx.lineWidth = 3; ctx.strokeStyle = "#000"; ctx.strokeText(text, x1 + 6, y1 - 6);
  ctx.fillStyle = "#ffeb3b"; ctx.fillText(text, x1 + 6, y1 - 6);
}

function rulerLengthUm() {
  const [ax, ay] = state.ruler.a, [bx, by] = state.ruler.b;
  return Math.hypot(bx - ax, by - ay) * state.slide.l0_mpp;
}

let drawQueued = false;
function redraw() {
  if (drawQueued) return;
  drawQueued = true;
  requestAnimationFrame(() => { drawQueued = false; draw(); drawRight(); });
}
["animation", "animation-finish", "resize", "update-viewport", "open"].forEach((e) => viewer.addHandler(e, redraw));

function setHeatmapOpacity() {
  const on = $("heatmap-toggle").checked;
  for (const [item, v, slide] of [[state.heatmapItem, viewer, state.slide], [right.heatmapItem, right.viewer, right.slide]]) {
    if (!item) continue;
    // at cellular zoom (< 1 µm per screen px) the heatmap fades so nuclei stay visible; the outlines remain
    const fade = slide ? Math.max(0.15, Math.min(1, transform(v, slide).umPerPx)) : 1;
    item.setOpacity(on ? fade * $("heatmap-opacity").value / 100 : 0);
  }
}
viewer.addHandler("animation-finish", setHeatmapOpacity);
$("heatmap-toggle").addEventListener("change", setHeatmapOpacity);
$("heatmap-opacity").addEventListener("input", setHeatmapOpacity);
$("outline-toggle").addEventListener("change", redraw);
$("cells-toggle").addEventListener("change", redraw);

// ruler: while active, drags on the slide measure instead of panning
$("ruler-toggle").addEventListener("click", () => {
  state.rulerMode = !state.rulerMode;
  $("ruler-toggle").classList.toggle("active", state.rulerMode);
  overlay.style.pointerEvents = state.rulerMode ? "auto" : "none";
  overlay.style.cursor = state.rulerMode ? "crosshair" : "";
  viewer.setMouseNavEnabled(!state.rulerMode);
});
function overlayPoint(ev) {
  const r = overlay.getBoundingClientRect();
  return transform().toL0(ev.clientX - r.left, ev.clientY - r.top);
}
overlay.addEventListener("pointerdown", (ev) => {
  if (!state.rulerMode || !state.slide) return;
  const p = overlayPoint(ev);
  state.ruler = { a: p, b: p, dragging: true };
  overlay.setPointerCapture(ev.pointerId);
});
overlay.addEventListener("pointermove", (ev) => {
  if (!state.ruler || !state.ruler.dragging) return;
  state.ruler.b = overlayPoint(ev);
  $("ruler-readout").textContent = fmtLength(rulerLengthUm());
  redraw();
});
overlay.addEventListener("pointerup", () => { if (state.ruler) state.ruler.dragging = false; });

function zoomToLesion(lesion) {
  state.selected = lesion.id;
  $("selected-finding").textContent = `selected ${lesion.id} (${lesion.class}, ${lesion.diameter_text})`;
  history.replaceState(null, "", hashFor(state.key, right.key, lesion.id));
  document.querySelectorAll("#lesion-list li").forEach((li) =>
    li.classList.toggle("selected", li.dataset.id === String(lesion.id)));
  const [x0, y0, x1, y1] = lesion.l0_bbox;
  const w = state.slide.l0_width;
  const minSide = 200 / state.slide.l0_mpp; // show at least 200 µm around small deposits
  const side = Math.max(x1 - x0, y1 - y0, minSide) * 1.5;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  viewer.viewport.fitBounds(new OpenSeadragon.Rect((cx - side / 2) / w, (cy - side / 2) / w, side / w, side / w));
  state.cells = [];
  redraw();
  const m = String(lesion.id).match(/^lesion:(\d+)$/);
  if (state.slide.stain === "he" && m) loadCells(state.key, { ...lesion, id: Number(m[1]) }, lesion.id);
}

async function loadCells(key, lesion, findingKey) {
  $("cells-readout").textContent = `finding the cells of #${lesion.id}…`;
  const resp = await fetch(`/api/slides/${encodeURIComponent(key)}/lesions/${lesion.id}/cells.geojson`);
  if (!resp.ok || state.key !== key || state.selected !== findingKey) return;
  const geo = await resp.json();
  state.cells = geo.features;
  $("cells-readout").textContent = geo.properties.not_counted
    ? `#${lesion.id}: not counted (${geo.properties.not_counted})`
    : `#${lesion.id}: ${geo.properties.n_cells} nuclei`;
  redraw();
}

function findingsOfSlide() {
  if (state.review && state.review.findings[state.slide.slide_id]) {
    return state.review.findings[state.slide.slide_id].map((f) => {
      const pts = f.l0_outline.flat();
      const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
      return { id: f.finding, class: f.decided, proposed: f.proposed, decision: f.decision, by: f.by,
               diameter_mm: f.diameter_mm, diameter_text: f.diameter_text, max_probability: f.max_probability,
               confirmed_probability: f.confirmed_probability, n_cells: f.n_cells, l0_outline: f.l0_outline,
               l0_bbox: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)] };
    });
  }
  return state.slide.lesions.map((l) => ({ ...l, id: `lesion:${l.id}` }));
}

function renderFindings() {
  const list = $("lesion-list");
  list.innerHTML = "";
  const found = findingsOfSlide().sort((a, b) => b.diameter_mm - a.diameter_mm);
  if (state.review) {
    state.features = found.map((f) => ({ properties: { id: f.id, class: f.class, diameter_mm: f.diameter_mm, diameter_text: f.diameter_text },
      geometry: { coordinates: f.l0_outline.map((ring) => [ring]) }, bbox: f.l0_bbox }));
  }
  const p2 = (v) => (v == null ? "—" : v.toFixed(2));
  for (const f of found) {
    const li = document.createElement("li");
    li.dataset.id = f.id;
    li.className = f.class === "rejected" ? "rejected" : "";
    li.innerHTML = `<span class="badge" style="background:${classColour(f.class)}">${f.class}</span> ` +
      `${f.id} ${f.diameter_text}, p ${p2(f.max_probability)}, confirmed p ${p2(f.confirmed_probability)}` +
      (f.n_cells != null ? `, ${f.n_cells} cells` : "") +
      (f.decision ? ` <i>(${f.decision}${f.by ? " by " + f.by : ""}; proposed ${f.proposed ?? "—"})</i>` : "");
    li.addEventListener("click", () => zoomToLesion(f));
    if (f.id === state.selected) {
      li.classList.add("selected");
      $("selected-finding").textContent = `selected ${f.id} (${f.class}, ${f.diameter_text})`;
    }
    list.appendChild(li);
  }
  if (!found.length) list.innerHTML = "<li>no deposits detected</li>";
  redraw();
}

function showReview() {
  const r = state.review;
  $("decided-stage").textContent = r ? r.decided.pn_stage : "—";
  $("proposed-stage").textContent = r ? r.proposed.pn_stage : "—";
  if (r && state.slide) {
    $("pn-stage").textContent = r.events.length ? `${r.decided.pn_stage} (decided; proposed ${r.proposed.pn_stage})`
      : r.proposed.pn_stage;
    const node = r.nodes.find((n) => n.node === state.slide.node);
    if (node) { $("node-class").textContent = node.decided; $("node-class").style.background = classColour(node.decided); }
  }
  const frozen = !r || r.frozen;
  document.querySelectorAll("#review button, #review input, #review select").forEach((el) => { el.disabled = frozen; });
  $("review-status").className = "";
  $("review-status").textContent = !r ? "slides analysed on their own: no case to review"
    : r.frozen ? `signed out by ${r.signed.by} on ${r.signed.at}; the case is frozen` : `${r.events.length} decision(s) logged`;
  $("exports").innerHTML = r ? `<a href="/api/cases/${state.caseKey}/review.csv">CSV</a> · ` +
    `<a href="/api/cases/${state.caseKey}/review/${encodeURIComponent(state.slide.slide_id)}.geojson">GeoJSON (QuPath)</a> · ` +
    `<a id="report-link" href="/api/cases/${state.caseKey}/report" target="_blank">report</a>` : "";
}

async function loadReview() {
  state.review = state.caseKey
    ? await (await fetch(`/api/cases/${state.caseKey}/review`)).json() : null;
  showReview();
  renderFindings();
}

async function decide(event) {
  const by = $("reviewer").value.trim();
  localStorage.setItem("micromets-reviewer", by);
  const resp = await fetch(`/api/cases/${state.caseKey}/review`, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ by, ...event }),
  });
  const body = await resp.json();
  if (!resp.ok) { $("review-status").className = "error"; $("review-status").textContent = body.detail; return null; }
  state.review = body.state;
  showReview();
  renderFindings();
  return body.event;
}

const sel = () => ({ slide: state.slide.slide_id, finding: state.selected });
$("accept-btn").addEventListener("click", () => decide({ action: "accept", ...sel() }));
$("reject-btn").addEventListener("click", () => decide({ action: "reject", ...sel() }));
$("reclass-btn").addEventListener("click", () => decide({ action: "reclassify", ...sel(), class: $("reclass-select").value }));
$("comment-btn").addEventListener("click", async () => {
  const ev = await decide({ action: "comment", text: $("comment-text").value, slide: state.slide.slide_id,
                            ...(state.selected ? { finding: state.selected } : {}) });
  if (ev) $("comment-text").value = "";
});
$("ruler-save").addEventListener("click", () => state.ruler &&
  decide({ action: "ruler", slide: state.slide.slide_id, l0_a: state.ruler.a, l0_b: state.ruler.b }));
$("sign-btn").addEventListener("click", () => decide({ action: "sign", by: $("sign-name").value.trim() || $("reviewer").value.trim() }));
function setDrawMode(on) {
  state.drawMode = on; state.drawPts = [];
  $("draw-toggle").classList.toggle("active", on);
  overlay.style.pointerEvents = on || state.rulerMode ? "auto" : "none";
  overlay.style.cursor = on ? "crosshair" : "";
  viewer.setMouseNavEnabled(!on && !state.rulerMode);
  redraw();
}
$("draw-toggle").addEventListener("click", () => setDrawMode(!state.drawMode));
$("draw-finish").addEventListener("click", async () => {
  const pts = state.drawPts;
  if (pts.length < 3) return;
  const ev = await decide({ action: "draw", slide: state.slide.slide_id, l0_outline: [pts] });
  setDrawMode(false);
  if (ev) zoomToLesion(findingsOfSlide().find((f) => f.id === ev.finding));
});
overlay.addEventListener("click", (ev) => { if (state.drawMode) { state.drawPts.push(overlayPoint(ev)); redraw(); } });
// clicking an outline selects it (topmost = smallest containing finding)
function inRing(x, y, ring) {
  let inside = false;
  for (let i = 0, j = ring.length - 1; i < ring.length; j = i++) {
    const [xi, yi] = ring[i], [xj, yj] = ring[j];
    if ((yi > y) !== (yj > y) && x < ((xj - xi) * (y - yi)) / (yj - yi) + xi) inside = !inside;
  }
  return inside;
}
viewer.addHandler("canvas-click", (ev) => {
  if (!ev.quick || !state.slide || state.rulerMode || state.drawMode) return;
  const [x, y] = transform().toL0(ev.position.x, ev.position.y);
  const hit = findingsOfSlide().filter((f) => f.l0_outline.some((ring) => inRing(x, y, ring)))
    .sort((a, b) => a.diameter_mm - b.diameter_mm)[0];
  if (hit) { ev.preventDefaultAction = true; zoomToLesion(hit); }
});

function showSlideInfo(s) {
  $("patient-name").textContent = s.patient ?? "(no case)";
  $("pn-stage").textContent = s.pn_stage ?? "—";
  $("node-name").textContent = s.node ?? "—";
  $("node-class").textContent = s.node_class;
  $("node-class").style.background = classColour(s.node_class);
  $("slide-name").textContent = `${s.slide_id} (${s.stain === "ihc" ? "IHC" : "H&E"}, ${s.l0_mpp.toFixed(3)} µm/px)`;
  $("largest").textContent = s.largest_deposit_mm == null ? "no deposit"
    : `largest deposit ${s.largest_deposit_text}`;
  $("ood-warning").hidden = !s.ood_warning;
  $("ood-warning").textContent = s.ood_warning ? `⚠ ${s.ood_warning.warning}` : "";
  $("ood-warning").title = s.ood_warning ? s.ood_warning.reasons.join("; ") : "";
  $("ink-notice").hidden = !s.inked_mm2;
  $("ink-notice").textContent = s.inked_mm2 ? `⚠ ${s.inked_mm2.toFixed(2)} mm² under ink not read` : "";
  $("ink-notice").title = s.inked_mm2 ? "tissue under ink or black pigment was not scored: a deposit there is yours to see" : "";
  renderFindings();
  document.querySelectorAll("#case-list a").forEach((a) => a.classList.toggle("current", a.dataset.key === s.key));
}

async function openSlide(key) {
  const resp = await fetch(`/api/slides/${encodeURIComponent(key)}`);
  if (!resp.ok) { $("message").textContent = `slide ${key} not found`; return; }
  const s = await resp.json();
  const geo = await (await fetch(`/api/slides/${encodeURIComponent(key)}/lesions.geojson`)).json();
  state.key = key; state.slide = s; state.selected = null; state.ruler = null; state.heatmapItem = null;
  $("ruler-readout").textContent = "drag on the slide to measure"; // the ruler does not carry over
  state.drawPts = [];
  const caseOf = state.catalog.cases.find((c) => c.case && c.nodes.some((n) => n.slides.includes(key)));
  state.caseKey = caseOf ? caseOf.case : null;
  state.cells = [];
  $("cells-readout").textContent = "";
  state.features = outlineFeatures(geo);
  showSlideInfo(s);
  await loadReview();
  const wanted = (location.hash.match(/finding=([^&]+)/) || [])[1];
  const pick = wanted && findingsOfSlide().find((f) => f.id === decodeURIComponent(wanted));
  viewer.addOnceHandler("open", () => {
    if (pick) zoomToLesion(pick);
    addHeatmap(viewer, key, s, (item) => { state.heatmapItem = item; });
  });
  viewer.open(`/dzi/${encodeURIComponent(key)}/slide.dzi`);
  showSideControl();
}

// the lesions.geojson features with their level-0 bounding boxes, larger lesions first
function outlineFeatures(geo) {
  return geo.features.map((f) => {
    const pts = f.geometry.coordinates.flatMap((poly) => poly[0]);
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    return { ...f, bbox: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)] };
  }).sort((a, b) => b.properties.diameter_mm - a.properties.diameter_mm);
}

// the slide's heatmap as a second tiled image of viewer v, placed at its cell grid's level-0 origin
function addHeatmap(v, key, s, onItem) {
  if (!s.heatmap) return;
  const cellL0 = s.heatmap.cell_um / s.l0_mpp;
  const w = s.l0_width;
  v.addTiledImage({
    tileSource: { type: "image", url: `/api/slides/${encodeURIComponent(key)}/heatmap.png`, buildPyramid: false },
    x: s.heatmap.l0_origin[0] / w, y: s.heatmap.l0_origin[1] / w, width: s.heatmap.shape[1] * cellL0 / w,
    opacity: 0,
    success: (ev) => { onItem(ev.item); setHeatmapOpacity(); },
  });
}

// ---- side by side: a node's H&E slide in the main viewer (left) and its IHC slide in a second one (right),
// pan and zoom synchronised in µm through each slide's l0_mpp. The sections are not registered: level-0
// origins are taken as the same point of the node.
const left = { get viewer() { return viewer; }, get slide() { return state.slide; }, expect: null };
const right = { viewer: null, overlay: null, slide: null, key: null, features: [], heatmapItem: null, expect: null };

function hashFor(key, sideKey, finding) {
  return `#slide=${encodeURIComponent(key)}` + (sideKey ? `&side=${encodeURIComponent(sideKey)}` : "") +
    (finding != null ? `&finding=${encodeURIComponent(finding)}` : "");
}

// the first H&E and the first IHC slide of the node holding slide `key` (either may be undefined)
function nodePair(key) {
  const node = state.catalog.cases.flatMap((c) => c.nodes).find((n) => n.node !== null && n.slides.includes(key));
  const of = (stain) => node && node.slides.find((k) => state.catalog.slides[k].stain === stain);
  return { he: of("he"), ihc: of("ihc") };
}

function showSideControl() {
  const pair = nodePair(state.key);
  $("side-by-side").hidden = !(pair.he && pair.ihc);
  $("side-toggle").textContent = right.key ? "single view" : "H&E | IHC side by side";
}
$("side-toggle").addEventListener("click", () => {
  const pair = nodePair(state.key);
  location.hash = right.key ? hashFor(state.key) : hashFor(pair.he, pair.ihc);
});

const same = (a, b) => Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(b));
// move dst to show the same µm centre at the same µm per screen px as src (not when src only echoes dst)
function syncFrom(src, dst) {
  if (!right.key || !src.slide || !dst.slide || !dst.viewer.world.getItemCount()) return;
  const vs = src.viewer.viewport, c = vs.getCenter(true), z = vs.getZoom(true);
  if (src.expect && same(c.x, src.expect.x) && same(c.y, src.expect.y) && same(z, src.expect.z)) return;
  const srcUm = src.slide.l0_mpp * src.slide.l0_width, dstUm = dst.slide.l0_mpp * dst.slide.l0_width; // µm per viewport unit
  const umPerPx = srcUm / (vs.getContainerSize().x * z);
  const vd = dst.viewer.viewport;
  vd.zoomTo(dstUm / (umPerPx * vd.getContainerSize().x), null, true);
  vd.panTo(new OpenSeadragon.Point(c.x * srcUm / dstUm, c.y * srcUm / dstUm), true);
  const got = vd.getCenter(true);
  dst.expect = { x: got.x, y: got.y, z: vd.getZoom(true) };
}
viewer.addHandler("viewport-change", () => syncFrom(left, right));

function createRightViewer() {
  right.viewer = OpenSeadragon({
    element: $("viewer-right"), prefixUrl: "/static/vendor/openseadragon/images/", drawer: "canvas",
    showNavigator: true, navigatorPosition: "BOTTOM_RIGHT", maxZoomPixelRatio: 2, navigatorAutoFade: false,
    autoHideControls: false, animationTime: 0.6, crossOriginPolicy: false,
  });
  right.overlay = document.createElement("canvas");
  right.overlay.id = "overlay-right";
  right.overlay.style.cssText = overlay.style.cssText;
  right.viewer.canvas.appendChild(right.overlay);
  ["animation", "animation-finish", "resize", "update-viewport", "open"].forEach((e) => right.viewer.addHandler(e, redraw));
  right.viewer.addHandler("animation-finish", setHeatmapOpacity);
  right.viewer.addHandler("viewport-change", () => syncFrom(right, left));
}

function drawRight() {
  if (!right.overlay) return;
  const dpr = window.devicePixelRatio || 1;
  const rect = right.overlay.getBoundingClientRect();
  right.overlay.width = Math.round(rect.width * dpr);
  right.overlay.height = Math.round(rect.height * dpr);
  const ctx = right.overlay.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, rect.width, rect.height);
  if (!right.slide) return;
  const t = transform(right.viewer, right.slide);
  if ($("outline-toggle").checked) drawOutlines(ctx, t, right.features, null);
  drawScaleBar(ctx, t, rect);
}

const paneLabel = (s) => `${s.stain === "ihc" ? "IHC" : "H&E"} · ${s.slide_id} · ${s.l0_mpp.toFixed(3)} µm/px`;

async function showSideBySide(key) {
  const resp = await fetch(`/api/slides/${encodeURIComponent(key)}`);
  if (!resp.ok) { $("message").textContent = `slide ${key} not found`; return; }
  const s = await resp.json();
  const geo = await (await fetch(`/api/slides/${encodeURIComponent(key)}/lesions.geojson`)).json();
  document.body.classList.add("side-by-side");
  $("viewer-right").hidden = false;
  if (!right.viewer) createRightViewer();
  Object.assign(right, { key, slide: s, features: outlineFeatures(geo), heatmapItem: null, expect: null });
  left.expect = null;
  $("pane-left").textContent = paneLabel(state.slide);
  $("pane-right").textContent = paneLabel(s);
  right.viewer.addOnceHandler("open", () => {
    addHeatmap(right.viewer, key, s, (item) => { right.heatmapItem = item; });
    syncFrom(left, right);
  });
  right.viewer.open(`/dzi/${encodeURIComponent(key)}/slide.dzi`);
  showSideControl();
}

function leaveSideBySide() {
  Object.assign(right, { key: null, slide: null, features: [], heatmapItem: null, expect: null });
  right.viewer.close();
  $("viewer-right").hidden = true;
  document.body.classList.remove("side-by-side");
  showSideControl();
  redraw();
}

// the view the URL names: #slide=KEY (single view) or #slide=HE_KEY&side=IHC_KEY (side by side)
async function route() {
  const key = hashParam("slide") || state.key || Object.keys(state.catalog.slides)[0], side = hashParam("side");
  if (key !== state.key) await openSlide(key);
  if (side && side !== right.key) await showSideBySide(side);
  else if (!side && right.key) leaveSideBySide();
}

function renderCases(cat) {
  const ul = $("case-list");
  ul.innerHTML = "";
  for (const c of cat.cases) {
    const li = document.createElement("li");
    li.className = "case";
    li.innerHTML = c.patient !== null
      ? `patient <b>${c.patient}</b> <span class="badge pn">${c.pn_stage}</span>` : `<i>${c.stage_reason}</i>`;
    const nodes = document.createElement("ul");
    for (const n of c.nodes) {
      const nli = document.createElement("li");
      nli.innerHTML = (n.node !== null ? `node ${n.node} ` : "") +
        `<span class="badge" style="background:${classColour(n.node_class)}">${n.node_class}</span>`;
      const slides = document.createElement("ul");
      for (const key of n.slides) {
        const sli = document.createElement("li");
        const a = document.createElement("a");
        a.href = `#slide=${encodeURIComponent(key)}`;
        a.dataset.key = key;
        a.className = "slide-link";
        a.textContent = `${cat.slides[key].slide_id} (${cat.slides[key].node_class})`;
        sli.appendChild(a);
        slides.appendChild(sli);
      }
      nli.appendChild(slides);
      nodes.appendChild(nli);
    }
    li.appendChild(nodes);
    ul.appendChild(li);
  }
  for (const [file, why] of Object.entries(cat.unreadable || {})) {
    const li = document.createElement("li");
    li.className = "case unreadable";
    li.textContent = `${file}: left out, ${why}`;
    ul.appendChild(li);
  }
}

function hashParam(name) {
  const m = location.hash.match(new RegExp(`[#&]${name}=([^&]+)`));
  return m ? decodeURIComponent(m[1]) : null;
}

async function main() {
  state.catalog = await (await fetch("/api/catalog")).json();
  state.colours = state.catalog.class_colours;
  const pc = state.catalog.prob_colours.map((c) => `rgb(${c[0]},${c[1]},${c[2]})`);
  $("colour-bar").style.background = `linear-gradient(to right, ${pc.join(", ")})`;
  renderCases(state.catalog);
  window.addEventListener("hashchange", route);
  $("reviewer").value = localStorage.getItem("micromets-reviewer") || "";
  await route();
}

window.micromets = { viewer, state, openSlide, zoomToLesion, decide, left, right };
main();
