// riac-node transit view: the entry scan and the exit scan aligned onto it, side by side or
// overlaid (difference heatmap), flicker or swipe between them, with the changed regions
// boxed. Regions are in entry-image pixels; every layer is drawn in that frame, so a box
// sits on the same goods in every mode. A missing layer says so in place.
"use strict";

(function () {
  const dataEl = document.getElementById("transit-data");
  const stage = document.getElementById("transit-stage");
  if (!dataEl || !stage) return;
  const d = JSON.parse(dataEl.textContent);
  const section = document.getElementById("transit");
  const boxesIn = document.getElementById("boxes");
  const heatIn = document.getElementById("heat-opacity");
  const swipeIn = document.getElementById("swipe");
  const note = document.getElementById("transit-note");
  const SVG = "http://www.w3.org/2000/svg";
  let frame = d.frame; // [w, h] in entry-image pixels, or null until the entry image loads
  let mode = "side", flickTimer = null, flickPaused = false;
  const frames = [];

  function layer(src, cls, missing) {
    const img = document.createElement("img");
    img.className = cls;
    img.alt = missing.split(" ")[0];
    img.addEventListener("error", () => {
      const m = document.createElement("div");
      m.className = "msg " + cls;
      m.textContent = missing;
      img.replaceWith(m);
      // The stand-in takes the layer's place in every mode (clipped in swipe, and so on).
      setHeat();
      setSwipe();
    }, { once: true });
    img.addEventListener("load", () => {
      if (!frame && cls === "entry") { frame = [img.naturalWidth, img.naturalHeight]; layout(); }
    }, { once: true });
    img.src = src;
    return img;
  }
  const entryImg = () => layer(d.entry_src, "entry", "The entry image is not available on this node.");
  const alignedImg = () => layer(d.aligned_src, "aligned", "The aligned exit image is not available on this node.");
  const heatImg = () => layer(d.heatmap_src, "heat", "The difference heatmap is not available on this node.");

  function boxes() {
    const svg = document.createElementNS(SVG, "svg");
    svg.setAttribute("class", "boxes");
    svg.setAttribute("preserveAspectRatio", "none");
    (d.regions || []).forEach((r, i) => {
      const rect = document.createElementNS(SVG, "rect");
      rect.setAttribute("x", r.x0); rect.setAttribute("y", r.y0);
      rect.setAttribute("width", Math.max(1, r.x1 - r.x0)); rect.setAttribute("height", Math.max(1, r.y1 - r.y0));
      rect.dataset.region = i;
      const t = document.createElementNS(SVG, "title");
      t.textContent = "region " + (i + 1) + ", score " + (r.score != null ? Number(r.score).toFixed(3) : "?") +
        (r.area_m2 != null ? ", " + Number(r.area_m2).toFixed(2) + " m²" : "");
      rect.appendChild(t);
      svg.appendChild(rect);
    });
    return svg;
  }

  function tframe(title, layers) {
    const p = document.createElement("div");
    p.className = "tpanel";
    const h = document.createElement("h3");
    h.textContent = title;
    const f = document.createElement("div");
    f.className = "tframe";
    layers.forEach((l) => f.appendChild(l));
    f.appendChild(boxes());
    p.append(h, f);
    frames.push(f);
    return p;
  }

  function layout() {
    frames.forEach((f) => {
      if (frame) f.style.aspectRatio = frame[0] + " / " + frame[1];
      const svg = f.querySelector("svg");
      if (svg && frame) svg.setAttribute("viewBox", "0 0 " + frame[0] + " " + frame[1]);
      if (svg) svg.style.display = boxesIn.checked ? "" : "none";
    });
    if (!frame) note.textContent = "Waiting for the entry image to learn the frame size…";
  }

  function setHeat() {
    stage.querySelectorAll(".heat").forEach((h) => { h.style.opacity = heatIn.value / 100; });
  }
  function setSwipe() {
    stage.querySelectorAll(".aligned").forEach((a) => {
      if (mode === "swipe") a.style.clipPath = "inset(0 0 0 " + swipeIn.value + "%)";
    });
  }

  function show(m) {
    mode = m;
    clearInterval(flickTimer);
    flickTimer = null;
    frames.length = 0;
    stage.innerHTML = "";
    stage.dataset.mode = m;
    section.classList.toggle("swipe", m === "swipe");
    section.classList.toggle("overlay", m === "overlay");
    document.querySelectorAll("[data-mode]").forEach((b) => {
      if (b.tagName === "BUTTON") b.setAttribute("aria-pressed", String(b.dataset.mode === m));
    });
    note.textContent = "";
    if (m === "side") {
      stage.append(tframe("Entry", [entryImg()]), tframe("Exit, aligned onto the entry", [alignedImg()]));
    } else if (m === "overlay") {
      const heat = heatImg();
      stage.append(tframe("Exit (aligned) with the difference heatmap", [alignedImg(), heat]));
    } else if (m === "flicker") {
      stage.append(tframe("Flicker: entry ⇄ exit (space pauses)", [entryImg(), alignedImg()]));
      let showExit = false;
      const tick = () => {
        if (flickPaused) return;
        showExit = !showExit;
        stage.querySelectorAll(".aligned").forEach((a) => { a.style.visibility = showExit ? "visible" : "hidden"; });
        note.textContent = showExit ? "showing: EXIT (aligned)" : "showing: ENTRY";
      };
      tick();
      flickTimer = setInterval(tick, 650);
    } else if (m === "swipe") {
      stage.append(tframe("Swipe: entry left of the line, exit right", [entryImg(), alignedImg()]));
    }
    layout();
    setHeat();
    setSwipe();
  }

  document.querySelectorAll("button[data-mode]").forEach((b) => b.addEventListener("click", () => show(b.dataset.mode)));
  boxesIn.addEventListener("change", layout);
  heatIn.addEventListener("input", setHeat);
  swipeIn.addEventListener("input", setSwipe);
  document.querySelectorAll("#regions tr[data-region]").forEach((tr) => {
    const hot = (on) => {
      tr.classList.toggle("hot", on);
      stage.querySelectorAll('rect[data-region="' + tr.dataset.region + '"]').forEach((r) => r.classList.toggle("hot", on));
    };
    tr.addEventListener("mouseenter", () => hot(true));
    tr.addEventListener("mouseleave", () => hot(false));
  });
  document.addEventListener("keydown", (e) => {
    if (window.RIAC && window.RIAC.typing && window.RIAC.typing(e)) return;
    const modes = { 1: "side", 2: "overlay", 3: "flicker", 4: "swipe" };
    if (modes[e.key]) show(modes[e.key]);
    else if (e.key === "b") { boxesIn.checked = !boxesIn.checked; layout(); }
    else if (e.key === " " && mode === "flicker") { flickPaused = !flickPaused; e.preventDefault(); }
    else return;
  });
  show("side");
})();
