// micromets viewer front end: case -> node -> slide navigation over OpenSeadragon, heatmap layer,
// lesion outlines drawn on an overlay canvas, deposit list, ruler in µm/mm.
// Geometry from the server is in level-0 pixels; OpenSeadragon's viewport unit is the slide width
// (viewport x = l0_x / l0_width, viewport y = l0_y / l0_width).
"use strict";

const state = {
  catalog: null, slide: null, key: null, features: [], selected: null,
  heatmapItem: null, ruler: null, rulerMode: false, colours: {}, cells: [],
};

const $ = (id) => document.getElementById(id);
const LABEL_MIN_PX = 24; // a lesion is labelled once it spans this many screen pixels (or is selected)

const viewer = OpenSeadragon({
  element: $("viewer"),
  prefixUrl: "/static/vendor/openseadragon/images/",
  drawer: "canvas",
  showNavigator: true,
  navigatorPosition: "BOTTOM_RIGHT",
  maxZoomPixelRatio: 4,
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
function transform() {
  const b = viewer.viewport.getBoundsNoRotate(true);
  const size = viewer.viewport.getContainerSize();
  const w = state.slide.l0_width;
  const scale = size.x / b.width; // element px per viewport unit
  return {
    toEl: (x, y) => [(x / w - b.x) * scale, (y / w - b.y) * scale],
    toL0: (px, py) => [(px / scale + b.x) * w, (py / scale + b.y) * w],
    umPerPx: state.slide.l0_mpp * w / scale,
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
  if ($("outline-toggle").checked) {
    ctx.font = "bold 13px DejaVu Sans, Arial, sans-serif";
    const placed = []; // label boxes drawn so far: larger lesions first, later labels that would overlap are skipped
    for (const f of state.features) {
      const p = f.properties;
      const selected = state.selected === p.id;
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
      const label = `#${p.id} ${p.class} ${p.diameter_text}`;
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
  if ($("cells-toggle").checked) drawCells(ctx, t);
  drawScaleBar(ctx, t, rect);
  if (state.ruler) drawRuler(ctx, t);
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
  requestAnimationFrame(() => { drawQueued = false; draw(); });
}
["animation", "animation-finish", "resize", "update-viewport", "open"].forEach((e) => viewer.addHandler(e, redraw));

function setHeatmapOpacity() {
  if (!state.heatmapItem) return;
  const on = $("heatmap-toggle").checked;
  state.heatmapItem.setOpacity(on ? $("heatmap-opacity").value / 100 : 0);
}
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
  document.querySelectorAll("#lesion-list li").forEach((li) =>
    li.classList.toggle("selected", Number(li.dataset.id) === lesion.id));
  const [x0, y0, x1, y1] = lesion.l0_bbox;
  const w = state.slide.l0_width;
  const minSide = 200 / state.slide.l0_mpp; // show at least 200 µm around small deposits
  const side = Math.max(x1 - x0, y1 - y0, minSide) * 1.5;
  const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
  viewer.viewport.fitBounds(new OpenSeadragon.Rect((cx - side / 2) / w, (cy - side / 2) / w, side / w, side / w));
  state.cells = [];
  redraw();
  if (state.slide.stain === "he") loadCells(state.key, lesion);
}

async function loadCells(key, lesion) {
  $("cells-readout").textContent = `finding the cells of #${lesion.id}…`;
  const resp = await fetch(`/api/slides/${encodeURIComponent(key)}/lesions/${lesion.id}/cells.geojson`);
  if (!resp.ok || state.key !== key || state.selected !== lesion.id) return;
  const geo = await resp.json();
  state.cells = geo.features;
  $("cells-readout").textContent = geo.properties.not_counted
    ? `#${lesion.id}: not counted (${geo.properties.not_counted})`
    : `#${lesion.id}: ${geo.properties.n_cells} nuclei`;
  redraw();
}

function showSlideInfo(s) {
  $("patient-name").textContent = s.patient ?? "(no case)";
  $("pn-stage").textContent = s.pn_stage ?? "—";
  $("node-name").textContent = s.node ?? "—";
  $("node-class").textContent = s.node_class;
  $("node-class").style.background = classColour(s.node_class);
  $("slide-name").textContent = `${s.slide_id} (${s.stain === "ihc" ? "IHC" : "H&E"}, ${s.l0_mpp.toFixed(3)} µm/px)`;
  $("largest").textContent = s.largest_deposit_mm == null ? "no deposit"
    : `largest deposit ${s.largest_deposit_text}`;
  const list = $("lesion-list");
  list.innerHTML = "";
  for (const les of s.lesions) {
    const li = document.createElement("li");
    li.dataset.id = les.id;
    li.innerHTML = `<span class="badge" style="background:${classColour(les.class)}">${les.class}</span> ` +
      `#${les.id} ${les.diameter_text}` + (les.n_cells != null ? `, ${les.n_cells} cells` : "");
    li.addEventListener("click", () => zoomToLesion(les));
    list.appendChild(li);
  }
  if (!s.lesions.length) list.innerHTML = "<li>no deposits detected</li>";
  document.querySelectorAll("#case-list a").forEach((a) => a.classList.toggle("current", a.dataset.key === s.key));
}

async function openSlide(key) {
  const resp = await fetch(`/api/slides/${encodeURIComponent(key)}`);
  if (!resp.ok) { $("message").textContent = `slide ${key} not found`; return; }
  const s = await resp.json();
  const geo = await (await fetch(`/api/slides/${encodeURIComponent(key)}/lesions.geojson`)).json();
  state.key = key; state.slide = s; state.selected = null; state.ruler = null; state.heatmapItem = null;
  state.cells = [];
  $("cells-readout").textContent = "";
  state.features = geo.features.map((f) => {
    const pts = f.geometry.coordinates.flatMap((poly) => poly[0]);
    const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
    return { ...f, bbox: [Math.min(...xs), Math.min(...ys), Math.max(...xs), Math.max(...ys)] };
  }).sort((a, b) => b.properties.diameter_mm - a.properties.diameter_mm);
  showSlideInfo(s);
  viewer.addOnceHandler("open", () => {
    if (!s.heatmap) return;
    const cellL0 = s.heatmap.cell_um / s.l0_mpp;
    const w = s.l0_width;
    viewer.addTiledImage({
      tileSource: { type: "image", url: `/api/slides/${encodeURIComponent(key)}/heatmap.png`, buildPyramid: false },
      x: s.heatmap.l0_origin[0] / w, y: s.heatmap.l0_origin[1] / w, width: s.heatmap.shape[1] * cellL0 / w,
      opacity: 0,
      success: (ev) => { state.heatmapItem = ev.item; setHeatmapOpacity(); },
    });
  });
  viewer.open(`/dzi/${encodeURIComponent(key)}/slide.dzi`);
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
}

function keyFromHash() {
  const m = location.hash.match(/slide=([^&]+)/);
  return m ? decodeURIComponent(m[1]) : null;
}

async function main() {
  state.catalog = await (await fetch("/api/catalog")).json();
  state.colours = state.catalog.class_colours;
  const pc = state.catalog.prob_colours.map((c) => `rgb(${c[0]},${c[1]},${c[2]})`);
  $("colour-bar").style.background = `linear-gradient(to right, ${pc.join(", ")})`;
  renderCases(state.catalog);
  window.addEventListener("hashchange", () => { const k = keyFromHash(); if (k) openSlide(k); });
  const first = keyFromHash() || Object.keys(state.catalog.slides)[0];
  await openSlide(first);
}

window.micromets = { viewer, state, openSlide, zoomToLesion };
main();
