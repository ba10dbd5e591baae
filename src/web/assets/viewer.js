// riac-node 16-bit X-ray viewer.
//
// The node sends the scan's 16-bit samples (riac.samples/1: delta-coded byte planes, gzip on
// the wire); this script undoes the delta once, then every window/level, invert or palette
// change is a 65536-entry lookup table applied to the samples into an RGBA buffer, drawn to
// an offscreen canvas; zoom and pan only redraw that canvas with a transform. A browser
// canvas cannot hold 16-bit values, which is why the lookup runs here and not in an <img>.
//
// Attenuation readout: A = ln(I0 / I), with I the sample (transmission, air bright) and I0
// the air level, estimated as the 99.5th percentile of the scan's samples.
"use strict";

(function () {
  const root = document.getElementById("viewer");
  if (!root) return;
  const RIAC = (window.RIAC = window.RIAC || {});
  const W = +root.dataset.width, H = +root.dataset.height;
  const pmm = (root.dataset.pixelMm || "").split(",").map(Number).filter((x) => x > 0);
  const stage = document.getElementById("stage");
  const canvas = document.getElementById("view");
  const ctx = canvas.getContext("2d");
  const status = document.getElementById("viewer-status");
  const readout = document.getElementById("readout");
  const cIn = document.getElementById("wl-center"), wIn = document.getElementById("wl-width");
  const cOut = document.getElementById("wl-center-out"), wOut = document.getElementById("wl-width-out");
  const invIn = document.getElementById("invert"), palIn = document.getElementById("palette");
  const profBtn = document.getElementById("profile-toggle");
  const profCanvas = document.getElementById("profile");

  const off = document.createElement("canvas");
  off.width = W; off.height = H;
  const offCtx = off.getContext("2d");
  let image = null, out32 = null;
  const lut = new Uint32Array(65536);
  let samples = null, hist = null, air = 65535;

  const st = { center: 32768, width: 65536, invert: false, palette: "gray", preset: "full",
    scale: 1, tx: 0, ty: 0, profile: false, line: null };
  const api = (RIAC.viewer = { state: st, applyMs: null, ready: false });

  // ---------- palettes: 256 RGB triples each ----------
  const clamp01 = (x) => (x < 0 ? 0 : x > 1 ? 1 : x);
  function turbo(t) {
    const r = 0.13572138 + t * (4.6153926 + t * (-42.66032258 + t * (132.13108234 + t * (-152.94239396 + t * 59.28637943))));
    const g = 0.09140261 + t * (2.19418839 + t * (4.84296658 + t * (-14.18503333 + t * (4.27729857 + t * 2.82956604))));
    const b = 0.1066733 + t * (12.64194608 + t * (-60.58204836 + t * (110.36276771 + t * (-89.90310912 + t * 27.34824973))));
    return [clamp01(r), clamp01(g), clamp01(b)];
  }
  const PALETTES = {
    gray: (t) => [t, t, t],
    // Dense is black, air is white, in between runs through red and yellow.
    hot: (t) => [clamp01(3 * t), clamp01(3 * t - 1), clamp01(3 * t - 2)],
    // Air is calm blue, the densest goods are red.
    turbo: (t) => turbo(1 - t),
  };
  const palTables = {};
  function palette(name) {
    if (!palTables[name]) {
      const f = PALETTES[name] || PALETTES.gray;
      const tab = new Uint32Array(256);
      for (let i = 0; i < 256; i++) {
        const [r, g, b] = f(i / 255);
        tab[i] = (255 << 24) | (Math.round(b * 255) << 16) | (Math.round(g * 255) << 8) | Math.round(r * 255);
      }
      palTables[name] = tab;
    }
    return palTables[name];
  }

  function buildLut() {
    const tab = palette(st.palette);
    const lo = st.center - st.width / 2, k = 255 / Math.max(1, st.width);
    for (let v = 0; v < 65536; v++) {
      let i = (v - lo) * k;
      i = i < 0 ? 0 : i > 255 ? 255 : i | 0;
      lut[v] = tab[st.invert ? 255 - i : i];
    }
  }

  function apply() {
    if (!samples) return;
    const t0 = performance.now();
    buildLut();
    const n = samples.length, s = samples, o = out32, l = lut;
    for (let i = 0; i < n; i++) o[i] = l[s[i]];
    offCtx.putImageData(image, 0, 0);
    api.applyMs = performance.now() - t0;
    root.dataset.applyMs = api.applyMs.toFixed(1);
    draw();
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; apply(); });
  }

  // ---------- view transform ----------
  function resize() {
    const dpr = window.devicePixelRatio || 1;
    canvas.width = Math.max(1, Math.round(stage.clientWidth * dpr));
    canvas.height = Math.max(1, Math.round(stage.clientHeight * dpr));
  }
  function fitScale() { return Math.min(stage.clientWidth / W, stage.clientHeight / H); }
  function fit() {
    st.scale = fitScale();
    st.tx = (stage.clientWidth - W * st.scale) / 2;
    st.ty = (stage.clientHeight - H * st.scale) / 2;
    draw();
  }
  function zoomAt(px, py, f) {
    const s = Math.min(32, Math.max(fitScale() / 2, st.scale * f));
    st.tx = px - (px - st.tx) * (s / st.scale);
    st.ty = py - (py - st.ty) * (s / st.scale);
    st.scale = s;
    draw();
  }
  function oneToOne() {
    const cx = stage.clientWidth / 2, cy = stage.clientHeight / 2;
    const dpr = window.devicePixelRatio || 1;
    zoomAt(cx, cy, 1 / dpr / st.scale);
  }
  function draw() {
    const dpr = window.devicePixelRatio || 1;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.setTransform(dpr * st.scale, 0, 0, dpr * st.scale, dpr * st.tx, dpr * st.ty);
    // Smooth when shrinking (no aliasing of the corrugations); crisp pixels when magnified.
    ctx.imageSmoothingEnabled = st.scale * dpr < 1;
    ctx.drawImage(off, 0, 0);
    if (st.line) {
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      const [a, b] = [toScreen(st.line[0]), toScreen(st.line[1])];
      ctx.strokeStyle = "#ffe14d"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(a[0], a[1]); ctx.lineTo(b[0], b[1]); ctx.stroke();
    }
  }
  const toImage = (mx, my) => [(mx - st.tx) / st.scale, (my - st.ty) / st.scale];
  const toScreen = (p) => [p[0] * st.scale + st.tx, p[1] * st.scale + st.ty];

  // ---------- window controls ----------
  function setWindow(center, width, preset) {
    st.center = Math.round(Math.min(65535, Math.max(0, center)));
    st.width = Math.round(Math.min(65536, Math.max(16, width)));
    st.preset = preset || null;
    cIn.value = st.center; wIn.value = st.width;
    cOut.textContent = st.center; wOut.textContent = st.width;
    root.querySelectorAll("[data-preset]").forEach((b) =>
      b.setAttribute("aria-pressed", String(b.dataset.preset === st.preset)));
    remember();
    schedule();
  }
  function percentile(p) {
    if (!hist) return p < 0.5 ? 0 : 65535;
    const target = p * samples.length;
    let acc = 0;
    for (let v = 0; v < 65536; v++) { acc += hist[v]; if (acc >= target) return v; }
    return 65535;
  }
  // Presets are bands of attenuation, so they mean the same on every scanner.
  const band = (aLo, aHi) => { const hi = air * Math.exp(-aLo), lo = air * Math.exp(-aHi); return [(lo + hi) / 2, hi - lo]; };
  function preset(name) {
    let cw;
    if (name === "organic") cw = band(0.02, 1.2);
    else if (name === "metal") cw = band(1.2, 6.0);
    else if (name === "auto") { const lo = percentile(0.01), hi = percentile(0.99); cw = [(lo + hi) / 2, Math.max(64, hi - lo)]; }
    else { name = "full"; cw = [32768, 65536]; }
    setWindow(cw[0], cw[1], name);
  }
  function remember() {
    try {
      sessionStorage.setItem("riac.viewer", JSON.stringify({
        preset: st.preset, center: st.center, width: st.width, invert: st.invert, palette: st.palette }));
    } catch (_) { /* private mode */ }
  }
  function restore() {
    try { return JSON.parse(sessionStorage.getItem("riac.viewer") || "null"); } catch (_) { return null; }
  }

  cIn.addEventListener("input", () => setWindow(+cIn.value, st.width, null));
  wIn.addEventListener("input", () => setWindow(st.center, +wIn.value, null));
  invIn.addEventListener("change", () => { st.invert = invIn.checked; remember(); schedule(); });
  palIn.addEventListener("change", () => { st.palette = palIn.value; remember(); schedule(); });
  root.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => preset(b.dataset.preset)));
  document.getElementById("zoom-fit").addEventListener("click", fit);
  document.getElementById("zoom-1").addEventListener("click", oneToOne);
  profBtn.addEventListener("click", () => setProfile(!st.profile));

  function setProfile(on) {
    st.profile = on;
    profBtn.setAttribute("aria-pressed", String(on));
    stage.classList.toggle("profiling", on);
    if (!on) { st.line = null; profCanvas.hidden = true; draw(); }
  }

  // ---------- mouse ----------
  let drag = null;
  stage.addEventListener("contextmenu", (e) => e.preventDefault());
  stage.addEventListener("mousedown", (e) => {
    const r = stage.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
    if (e.button === 2) drag = { kind: "wl", x: e.clientX, y: e.clientY, c: st.center, w: st.width };
    else if (st.profile) { const p = toImage(mx, my); st.line = [p, p]; drag = { kind: "line" }; }
    else { drag = { kind: "pan", x: e.clientX, y: e.clientY, tx: st.tx, ty: st.ty }; stage.classList.add("dragging"); }
    e.preventDefault();
  });
  window.addEventListener("mousemove", (e) => {
    const r = stage.getBoundingClientRect(), mx = e.clientX - r.left, my = e.clientY - r.top;
    if (drag && drag.kind === "pan") { st.tx = drag.tx + e.clientX - drag.x; st.ty = drag.ty + e.clientY - drag.y; draw(); }
    else if (drag && drag.kind === "wl") {
      // Right-drag: horizontal widens or narrows the window, vertical moves the level.
      const w = drag.w * Math.exp((e.clientX - drag.x) * 0.005);
      setWindow(drag.c - (e.clientY - drag.y) * (w / 300), w, null);
    } else if (drag && drag.kind === "line") { st.line[1] = toImage(mx, my); draw(); plotProfile(); }
    if (mx >= 0 && my >= 0 && mx <= r.width && my <= r.height) showValue(mx, my);
  });
  window.addEventListener("mouseup", () => { drag = null; stage.classList.remove("dragging"); });
  stage.addEventListener("wheel", (e) => {
    const r = stage.getBoundingClientRect();
    zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
    e.preventDefault();
  }, { passive: false });

  const attenuation = (v) => Math.log(air / Math.max(1, v));
  const metres = (px, axis) => (pmm.length === 2 ? " (" + (px * pmm[axis] / 1000).toFixed(2) + " m)" : "");
  function showValue(mx, my) {
    if (!samples) return;
    const [fx, fy] = toImage(mx, my), x = Math.floor(fx), y = Math.floor(fy);
    if (x < 0 || y < 0 || x >= W || y >= H) { readout.textContent = "outside the image"; return; }
    const v = samples[y * W + x];
    readout.textContent = "x " + x + metres(x, 0) + "  y " + y + metres(y, 1) + "  ·  value " + v +
      "  ·  attenuation " + attenuation(v).toFixed(3) + " (ln I0/I, I0 = " + air + ")  ·  zoom " +
      (st.scale * 100).toFixed(0) + "%";
  }

  function plotProfile() {
    if (!st.line || !samples) return;
    const [[x0, y0], [x1, y1]] = st.line;
    const len = Math.hypot(x1 - x0, y1 - y0);
    const n = Math.max(2, Math.min(4000, Math.ceil(len)));
    const vals = [];
    for (let i = 0; i < n; i++) {
      const x = Math.round(x0 + (x1 - x0) * i / (n - 1)), y = Math.round(y0 + (y1 - y0) * i / (n - 1));
      if (x >= 0 && y >= 0 && x < W && y < H) vals.push(attenuation(samples[y * W + x]));
    }
    if (vals.length < 2) return;
    profCanvas.hidden = false;
    const dpr = window.devicePixelRatio || 1, cw = profCanvas.clientWidth, ch = profCanvas.clientHeight;
    profCanvas.width = cw * dpr; profCanvas.height = ch * dpr;
    const g = profCanvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, cw, ch);
    let lo = Infinity, hi = -Infinity, sum = 0;
    vals.forEach((a) => { lo = Math.min(lo, a); hi = Math.max(hi, a); sum += a; });
    const top = Math.max(hi, lo + 0.1), pad = 22;
    g.strokeStyle = "#c3c8d1"; g.beginPath(); g.moveTo(pad, 4); g.lineTo(pad, ch - pad); g.lineTo(cw - 4, ch - pad); g.stroke();
    g.strokeStyle = "#1f5fbf"; g.lineWidth = 1.5; g.beginPath();
    vals.forEach((a, i) => {
      const px = pad + (cw - pad - 6) * i / (vals.length - 1), py = (ch - pad) - (ch - pad - 6) * (a - Math.min(0, lo)) / (top - Math.min(0, lo));
      if (i) g.lineTo(px, py); else g.moveTo(px, py);
    });
    g.stroke();
    g.fillStyle = "#5b6474"; g.font = "11px system-ui";
    g.fillText(top.toFixed(2), 2, 12); g.fillText(Math.min(0, lo).toFixed(1), 2, ch - pad);
    const lenTxt = len.toFixed(0) + " px" + (pmm.length === 2 ? " (" + (len * pmm[0] / 1000).toFixed(2) + " m)" : "");
    g.fillText("attenuation along " + lenTxt + ": min " + lo.toFixed(2) + "  mean " + (sum / vals.length).toFixed(2) + "  max " + hi.toFixed(2), pad + 6, ch - 6);
  }

  // ---------- keyboard ----------
  document.addEventListener("keydown", (e) => {
    if (RIAC.typing && RIAC.typing(e)) return;
    const cx = stage.clientWidth / 2, cy = stage.clientHeight / 2;
    const k = e.key;
    if (k === "1") preset("full");
    else if (k === "2") preset("organic");
    else if (k === "3") preset("metal");
    else if (k === "4") preset("auto");
    else if (k === "i") { invIn.checked = !invIn.checked; invIn.dispatchEvent(new Event("change")); }
    else if (k === "c") {
      const names = Object.keys(PALETTES);
      palIn.value = names[(names.indexOf(st.palette) + 1) % names.length];
      palIn.dispatchEvent(new Event("change"));
    }
    else if (k === "0") fit();
    else if (k === "=") oneToOne();
    else if (k === "+") zoomAt(cx, cy, 1.25);
    else if (k === "-") zoomAt(cx, cy, 0.8);
    else if (k === "p") setProfile(!st.profile);
    else if (k === "ArrowLeft") { st.tx += 60; draw(); }
    else if (k === "ArrowRight") { st.tx -= 60; draw(); }
    else if (k === "ArrowUp") { st.ty += 60; draw(); }
    else if (k === "ArrowDown") { st.ty -= 60; draw(); }
    else return;
    e.preventDefault();
  });
  window.addEventListener("resize", () => { resize(); draw(); });

  // ---------- loading ----------
  function decode(buf) {
    const b = new Uint8Array(buf);
    const magic = "RIACS16\u0001";
    for (let i = 0; i < 8; i++) if (b[i] !== magic.charCodeAt(i)) throw new Error("not riac.samples/1 data");
    const dv = new DataView(buf), w = dv.getUint32(8, true), h = dv.getUint32(12, true), n = w * h;
    if (w !== W || h !== H || b.length !== 16 + 2 * n) throw new Error("sample data does not match the scan's size");
    const lo = b.subarray(16, 16 + n), hi = b.subarray(16 + n), out = new Uint16Array(n);
    for (let y = 0; y < h; y++) {
      const row = y * w;
      let prev = y ? out[row - w] : 0;
      for (let x = 0; x < w; x++) {
        const i = row + x;
        prev = (prev + (lo[i] | (hi[i] << 8))) & 0xffff;
        out[i] = prev;
      }
    }
    return out;
  }

  async function load() {
    resize();
    const t0 = performance.now();
    let r;
    try {
      r = await fetch(root.dataset.samples, { credentials: "same-origin" });
    } catch (e) { status.textContent = "Cannot reach the node: " + e.message; return; }
    if (!r.ok) {
      let msg = "HTTP " + r.status;
      try { msg = (await r.json()).error.message; } catch (_) { /* keep the status */ }
      status.textContent = "Cannot load the image: " + msg;
      return;
    }
    const buf = await r.arrayBuffer();
    const td = performance.now();
    try { samples = decode(buf); } catch (e) { status.textContent = "Cannot read the image: " + e.message; return; }
    api.decodeMs = performance.now() - td;
    hist = new Uint32Array(65536);
    for (let i = 0; i < samples.length; i++) hist[samples[i]]++;
    air = Math.max(1, percentile(0.995));
    image = offCtx.createImageData(W, H);
    out32 = new Uint32Array(image.data.buffer);
    const loadMs = performance.now() - t0;
    api.loadMs = loadMs;
    const saved = restore();
    if (saved) {
      st.invert = !!saved.invert; invIn.checked = st.invert;
      st.palette = PALETTES[saved.palette] ? saved.palette : "gray"; palIn.value = st.palette;
    }
    fit();
    if (saved && saved.preset) preset(saved.preset);
    else if (saved) setWindow(saved.center, saved.width, null);
    else preset("full");
    apply();
    api.ready = true;
    root.dataset.ready = "1";
    status.textContent = W + "×" + H + " · 16-bit · loaded in " + Math.round(loadMs) + " ms · window applied in " + api.applyMs.toFixed(0) + " ms";
    setTimeout(() => { status.hidden = true; }, 6000);
  }
  api.setWindow = setWindow;
  api.preset = preset;
  api.apply = apply;
  api.draw = draw;
  load();
})();
