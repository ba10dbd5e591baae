#!/usr/bin/env python3
"""Builds models/riac-texture.onnx and its contract models/riac-texture.toml, reproducibly.

The model is a fixed multi-scale filter bank with a projection learned here (no download,
no pretrained weights):

  input  tiles [N, 1, 64, 64]: attenuation ln((I_air - dark) / (I - dark)) at 20 mm per pixel,
         dark being the scan's own dark level (src/matching/photometry.rs; riac-node cuts
         them: `riac-node library export-tiles`, the same code the node runs)
  1. density profile: mean of relu(x - t) for 9 thresholds t (how much matter, how dense)
  2. texture: a 4-level pyramid (2x2 average pooling); at each level 16 Gabor filters
     (4 orientations x 2 wavelengths x even/odd phase, 7x7, zero mean); mean |response|
  3. log(feature + eps), minus the training mean, times a projection matrix
  output embedding [N, D] (the node L2-normalises it)

The filter bank is hand-designed and domain-agnostic (edges, stripes and blobs at 5 cm to
60 cm, the scales at which cargo differs); only the last linear projection is learned, by
linear discriminant analysis on simulator tiles of the goods classes, with shrinkage. This
keeps the model small, fast on tract, made of operators every runtime has (Conv, Relu,
Abs, AveragePool, GlobalAveragePool, Log, Sub, MatMul, Flatten), and it does not learn
pixels of the simulator: real scans change the density and texture statistics, not the
operators. Class separation is measured on scans from seeds never used here, and on goods
classes the projection never saw (`[evaluation]` in the contract).

The training scans come from the simulator's default scanners only (no scanner family:
`bench match --families` keeps every family unseen by the model). So that the projection
does not lean on what differs between scanners, each training tile is also seen as other
scanners would give it (`AUGMENT`: blur, lag along the scan, attenuation scale, photon
noise, in ranges from detector and source physics); LDA then counts those differences as
within-class scatter and projects them away.

Training data: `riac-node simulate --goods <HS> --seed <s>` (seeds from 9_000_000 up;
`riac-node bench match` uses seeds below 1_000_000). The script needs the riac-node binary
(`cargo build`), python3 with numpy, onnx and onnxruntime (pinned below; installed into
target/model-venv by --setup).

Usage:  python3 tools/build_model.py --setup        # create target/model-venv, then re-run in it
        target/model-venv/bin/python tools/build_model.py [--riac-node target/debug/riac-node]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PINNED = ["numpy==2.2.6", "onnx==1.19.1", "onnxruntime==1.24.1"]

NAME = "riac-texture"
VERSION = "1.1.0"  # 1.1.0: dark level taken out; trained with scanner nuisance
NORMALISATION = "attenuation-dark"
TILE, STRIDE, PIXEL_MM = 64, 32, 20.0
THRESHOLDS = [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 5.5]
LEVELS = 4
ORIENTATIONS = [0.0, 45.0, 90.0, 135.0]
WAVELENGTHS = [2.5, 4.0]
KSIZE = 7
EPS = 1e-3
DIM = 15  # LDA gives at most classes - 1 directions

# The simulator's goods classes (src/sim/goods.rs), the empty container last.
CLASSES = ["8703.23", "4011.20", "6109.10", "8528.72", "2402.20", "1006.30", "3102.10",
           "7208.39", "7213.91", "0803.90", "9403.60", "6907.21", "4804.11", "8429.52",
           "2202.10", "8609.00"]
# Classes the projection never sees in the generalisation check.
HELD_OUT = ["2202.10", "8528.72", "7213.91", "9403.60"]
TRAIN_SEED, VAL_SEED = 9_000_000, 9_500_000
TRAIN_PER_CLASS, VAL_PER_CLASS = 14, 8
SCALE = 0.5
# What differs between scanners for the same goods, from detector and source physics, not
# from any scanner family of the simulator: blur at the 20 mm tile pixel (detector pitch
# 2.5-8 mm, cross-talk and focal spot: a Gaussian of up to ~12 mm, 0.6 px), afterglow and
# motion along the scan (up to 0.5 px more), the attenuation scale of the spectrum and the
# response curve (iron attenuates ~1.8x more per gram at 1.25 MeV than at 9 MeV; a Co-60
# source to a 9 MV linac, with gamma 0.9-1.1: 0.85-1.5 relative to a 6 MV linac), and
# photon noise per 20 mm pixel through air (100,000 down to ~3,000 photons: sigma 0.003-
# 0.018 in attenuation, growing as exp(att / 2)).
AUGMENT = {"psf_px": (0.0, 0.6), "lag_px": (0.0, 0.5), "scale": (0.85, 1.5),
           "noise": (0.0, 0.018)}
AUGMENT_COPIES = 2


def setup():
    venv = ROOT / "target" / "model-venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *PINNED], check=True)
    print(f"now run: {venv}/bin/python tools/build_model.py")


def simulate(binary, work, split, seed0, per_class):
    """Drops per class under work/<normalisation>/split/<hs>/ and their tiles; cached when
    present (tiles cut for another normalisation are not reused)."""
    out = {}
    for ci, hs in enumerate(CLASSES):
        d = work / NORMALISATION / split / hs
        tiles = d / "tiles.f32"
        if not tiles.exists():
            d.mkdir(parents=True, exist_ok=True)
            subprocess.run([binary, "simulate", "--goods", hs, "--count", str(per_class),
                            "--seed", str(seed0 + ci * 1000), "--format", "pgm",
                            "--resolution-scale", str(SCALE), "--out", str(d)],
                           check=True, stdout=subprocess.DEVNULL)
            subprocess.run([binary, "library", "export-tiles", str(d), "--out", str(tiles),
                            "--tile", str(TILE), "--stride", str(STRIDE),
                            "--pixel-mm", str(PIXEL_MM), "--normalisation", NORMALISATION],
                           check=True, stdout=subprocess.DEVNULL)
            for f in d.iterdir():  # keep the tiles, not the images
                if f.suffix in (".pgm",):
                    f.unlink()
        out[hs] = tiles
    return out


def load_tiles(paths, np):
    """-> tiles [n,64,64], class index per tile, scan index per tile, scan class list."""
    xs, ys, scans, scan_class = [], [], [], []
    for ci, hs in enumerate(CLASSES):
        p = paths[hs]
        index = json.loads(p.with_suffix(".json").read_text())
        data = np.fromfile(p, dtype="<f4").reshape(-1, TILE, TILE)
        at = 0
        for drop in index["drops"]:
            n = drop["tiles"]
            if n > 0:
                xs.append(data[at:at + n])
                ys.append(np.full(n, ci))
                scans.append(np.full(n, len(scan_class)))
            scan_class.append(ci)
            at += n
    return (np.concatenate(xs), np.concatenate(ys), np.concatenate(scans),
            np.array(scan_class))


def gauss_kernel(np, sigma):
    if sigma < 0.05:
        return np.array([1.0])
    r = max(1, int(np.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def blur_axis(np, x, k, axis):
    """Separable convolution along one axis of [n, h, w] tiles, edges replicated."""
    r = len(k) // 2
    if r == 0:
        return x
    pad = [(0, 0)] * 3
    pad[axis] = (r, r)
    xp = np.pad(x, pad, mode="edge")
    out = np.zeros_like(x)
    n = x.shape[axis]
    for i, w in enumerate(k):
        sl = [slice(None)] * 3
        sl[axis] = slice(i, i + n)
        out += w * xp[tuple(sl)]
    return out


def nuisance(np, x, rng):
    """The same tiles as another scanner would give them: the things that differ between
    scanners and are not goods (AUGMENT ranges), drawn per tile group."""
    out = np.empty_like(x)
    groups = np.array_split(np.arange(len(x)), max(1, len(x) // 64))
    for g in groups:
        t = x[g].astype(np.float64)
        sv = rng.uniform(*AUGMENT["psf_px"])
        sh = np.hypot(sv, rng.uniform(*AUGMENT["lag_px"]))
        t = blur_axis(np, t, gauss_kernel(np, sv), 1)
        t = blur_axis(np, t, gauss_kernel(np, sh), 2)
        t = t * rng.uniform(*AUGMENT["scale"])
        s0 = rng.uniform(*AUGMENT["noise"])
        t = t + s0 * np.exp(0.5 * np.clip(t, 0, 8)) * rng.standard_normal(t.shape)
        out[g] = np.clip(t, 0.0, 8.0).astype(np.float32)
    return out


def gabor_bank(np):
    k = []
    r = KSIZE // 2
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    for lam in WAVELENGTHS:
        sigma = 0.5 * lam
        for th in ORIENTATIONS:
            t = np.deg2rad(th)
            u = xx * np.cos(t) + yy * np.sin(t)
            env = np.exp(-(xx ** 2 + yy ** 2) / (2 * sigma ** 2))
            for phase in (np.cos, np.sin):
                g = env * phase(2 * np.pi * u / lam)
                g -= env * (g.sum() / env.sum())  # zero mean: no response to flat density
                g /= np.abs(g).sum()
                k.append(g)
    return np.stack(k)[:, None].astype(np.float32)  # [16, 1, 7, 7]


def feature_graph(onnx, np, mean=None, proj=None):
    """The ONNX graph; without mean/proj it outputs the raw log features."""
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []
    bank = gabor_bank(np)
    nt = len(THRESHOLDS)
    inits.append(numpy_helper.from_array(np.ones((nt, 1, 1, 1), np.float32), "thr_w"))
    inits.append(numpy_helper.from_array(-np.array(THRESHOLDS, np.float32), "thr_b"))
    inits.append(numpy_helper.from_array(bank, "gabor"))
    inits.append(numpy_helper.from_array(np.array([EPS], np.float32), "eps"))
    nodes.append(helper.make_node("Conv", ["tiles", "thr_w", "thr_b"], ["thr"], kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Relu", ["thr"], ["thr_r"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["thr_r"], ["f_density"]))
    feats = ["f_density"]
    src = "tiles"
    for lv in range(LEVELS):
        if lv > 0:
            nodes.append(helper.make_node("AveragePool", [src], [f"pyr{lv}"],
                                          kernel_shape=[2, 2], strides=[2, 2]))
            src = f"pyr{lv}"
        p = KSIZE // 2
        nodes.append(helper.make_node("Conv", [src, "gabor"], [f"g{lv}"],
                                      kernel_shape=[KSIZE, KSIZE], pads=[p, p, p, p]))
        nodes.append(helper.make_node("Abs", [f"g{lv}"], [f"a{lv}"]))
        nodes.append(helper.make_node("GlobalAveragePool", [f"a{lv}"], [f"f{lv}"]))
        feats.append(f"f{lv}")
    nodes.append(helper.make_node("Concat", feats, ["f_all"], axis=1))
    nodes.append(helper.make_node("Flatten", ["f_all"], ["f_flat"], axis=1))
    nodes.append(helper.make_node("Add", ["f_flat", "eps"], ["f_eps"]))
    out = "logf"
    nodes.append(helper.make_node("Log", ["f_eps"], [out]))
    nfeat = nt + LEVELS * len(bank)
    dim = nfeat
    if mean is not None:
        inits.append(numpy_helper.from_array(mean.astype(np.float32), "feat_mean"))
        inits.append(numpy_helper.from_array(proj.astype(np.float32), "proj"))
        nodes.append(helper.make_node("Sub", [out, "feat_mean"], ["centred"]))
        nodes.append(helper.make_node("MatMul", ["centred", "proj"], ["embedding"]))
        out, dim = "embedding", proj.shape[1]
    else:
        nodes.append(helper.make_node("Identity", [out], ["embedding"]))
        out = "embedding"
    graph = helper.make_graph(
        nodes, NAME,
        [helper.make_tensor_value_info("tiles", TensorProto.FLOAT, ["batch", 1, TILE, TILE])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="riac-node tools/build_model.py")
    model.ir_version = 8  # readable by ONNX Runtime >= 1.10 and tract
    onnx.checker.check_model(model)
    return model


def run(model, x, ort, np):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1  # deterministic reductions
    s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = []
    for i in range(0, len(x), 256):
        out.append(s.run(None, {"tiles": x[i:i + 256, None]})[0])
    return np.concatenate(out)


def lda(f, y, np, classes, shrink=0.1):
    mu = f.mean(0)
    d = f.shape[1]
    sw = np.zeros((d, d))
    sb = np.zeros((d, d))
    for c in classes:
        fc = f[y == c]
        mc = fc.mean(0)
        sw += (fc - mc).T @ (fc - mc)
        sb += len(fc) * np.outer(mc - mu, mc - mu)
    sw /= len(f)
    sb /= len(f)
    sw = (1 - shrink) * sw + shrink * np.trace(sw) / d * np.eye(d)
    # Generalised eigenproblem sb v = l sw v, through the whitening of sw.
    ev, evec = np.linalg.eigh(sw)
    wh = evec @ np.diag(ev ** -0.5) @ evec.T
    lv, lvec = np.linalg.eigh(wh @ sb @ wh)
    order = np.argsort(lv)[::-1]
    return wh @ lvec[:, order], lv[order]


def whiten_pca(f, np, k):
    c = np.cov(f - f.mean(0), rowvar=False)
    ev, evec = np.linalg.eigh(c)
    order = np.argsort(ev)[::-1][:k]
    return evec[:, order] / np.sqrt(ev[order] + 1e-6)


def scan_knn_accuracy(lib_e, lib_scan, lib_scan_class, q_e, q_scan, q_scan_class, np):
    """The node's search: reference score = mean over query tiles of the best cosine
    similarity to any of the reference's tiles; top-1 reference's class vs the truth."""
    def norm(e):
        return e / np.linalg.norm(e, axis=1, keepdims=True)
    lib_e, q_e = norm(lib_e), norm(q_e)
    refs = np.unique(lib_scan)
    hits = n = 0
    per_class = {}
    for s in np.unique(q_scan):
        q = q_e[q_scan == s]
        sims = q @ lib_e.T
        best, best_ref = -9, None
        for r in refs:
            m = sims[:, lib_scan == r].max(1).mean()
            if m > best:
                best, best_ref = m, r
        ok = best_ref is not None and lib_scan_class[best_ref] == q_scan_class[s]
        hits += ok
        n += 1
        c = CLASSES[q_scan_class[s]]
        per_class.setdefault(c, [0, 0])
        per_class[c][0] += 1
        per_class[c][1] += int(ok)
    return hits / max(n, 1), per_class


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true")
    ap.add_argument("--riac-node", default=str(ROOT / "target" / "debug" / "riac-node"))
    ap.add_argument("--work", default=str(ROOT / "target" / "model-work"))
    ap.add_argument("--out", default=str(ROOT / "models"))
    a = ap.parse_args()
    if a.setup:
        return setup()
    import numpy as np
    import onnx
    import onnxruntime as ort

    work = Path(a.work)
    print("simulating training and validation scans (cached in", work, ")", flush=True)
    tr = load_tiles(simulate(a.riac_node, work, "train", TRAIN_SEED, TRAIN_PER_CLASS), np)
    va = load_tiles(simulate(a.riac_node, work, "val", VAL_SEED, VAL_PER_CLASS), np)
    xtr, ytr, str_, sctr = tr
    xva, yva, sva, scva = va
    # Mirrored scans (cab on the other side) are the same goods: train on both.
    # And as other scanners would see them (AUGMENT): the projection learns to look past
    # what differs between scanners, so that a library from one scanner serves another.
    rng = np.random.default_rng(20261207)
    base = np.concatenate([xtr, xtr[:, :, ::-1]])
    xtr_aug = np.concatenate([base] + [nuisance(np, base, rng) for _ in range(AUGMENT_COPIES)])
    ytr_aug = np.concatenate([ytr] * (2 * (1 + AUGMENT_COPIES)))
    print(f"train tiles {len(xtr)} ({len(sctr)} scans), validation tiles {len(xva)} ({len(scva)} scans)")

    raw = feature_graph(onnx, np)
    ftr = run(raw, np.ascontiguousarray(xtr_aug), ort, np).astype(np.float64)
    fva = run(raw, xva, ort, np).astype(np.float64)
    ftr_plain = ftr[:len(xtr)]
    mu = ftr.mean(0)
    goods = [CLASSES.index(c) for c in CLASSES if c != "8609.00"]
    eval_ = {}

    def evaluate(proj, label, classes=None):
        ltr = (ftr_plain - mu) @ proj
        lva = (fva - mu) @ proj
        mtr = np.isin(ytr, classes) if classes is not None else np.ones(len(ytr), bool)
        mva = np.isin(yva, classes) if classes is not None else np.ones(len(yva), bool)
        acc, per = scan_knn_accuracy(ltr[mtr], str_[mtr], sctr, lva[mva], sva[mva], scva, np)
        print(f"  {label}: scan top-1 {acc:.3f}")
        return acc, per

    std = np.diag(1 / np.maximum(ftr.std(0), 1e-6))
    w_lda, lvals = lda(ftr, ytr_aug, np, goods)
    w_lda = w_lda[:, :DIM]
    acc_std, _ = evaluate(std, "standardised features (no learning)")
    acc_pca, _ = evaluate(whiten_pca(ftr, np, DIM), f"whitened PCA {DIM}")
    acc_lda, per_lda = evaluate(w_lda, f"LDA {DIM}")
    # Generalisation: a projection learned without HELD_OUT classes, tested on them only.
    seen = [CLASSES.index(c) for c in CLASSES if c not in HELD_OUT and c != "8609.00"]
    unseen = [CLASSES.index(c) for c in HELD_OUT]
    keep = np.isin(ytr_aug, seen)
    w_seen, _ = lda(ftr[keep], ytr_aug[keep], np, seen)
    acc_unseen_lda, _ = evaluate(w_seen[:, :DIM], "LDA without held-out classes, on held-out classes", unseen)
    acc_unseen_std, _ = evaluate(std, "standardised features, on held-out classes", unseen)

    model = feature_graph(onnx, np, mean=mu, proj=w_lda)
    check = run(model, xva[:64], ort, np)
    ref = (fva[:64] - mu) @ w_lda
    err = float(np.abs(check - ref).max())
    assert err < 1e-3, f"graph and numpy projection differ by {err}"

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path = out / f"{NAME}.onnx"
    onnx_path.write_bytes(model.SerializeToString())
    sha = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    per_class = {c: round(v[1] / v[0], 3) for c, v in sorted(per_lda.items())}
    toml = f'''# Contract of {NAME}.onnx: checked by riac-node at load (sha256, input and output shapes).
# Made by tools/build_model.py (python tools/build_model.py --setup, then run it in the venv).

[model]
name = "{NAME}"
version = "{VERSION}"
file = "{NAME}.onnx"
sha256 = "{sha}"
licence = "Apache-2.0 (made here from no third-party weights: a hand-designed Gabor filter bank and a projection fitted to riac-node simulator scans)"
provenance = "tools/build_model.py: fixed multi-scale Gabor filter bank + density profile, log, LDA projection ({DIM} dims, shrinkage 0.1) fitted on {len(xtr)} cargo tiles (x2 mirrored, then x{1 + AUGMENT_COPIES} with scanner nuisance: blur, lag, attenuation scale, photon noise, AUGMENT in the script) of {len(sctr)} simulator scans, {TRAIN_PER_CLASS} per goods class, seeds {TRAIN_SEED}+; numpy {np.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}"

[input]
name = "tiles"
shape = [-1, 1, {TILE}, {TILE}]
layout = "NCHW"
dtype = "float32"
normalisation = "{NORMALISATION}"
clip = [0.0, 8.0]
pixel_mm = {PIXEL_MM}
tile = {TILE}
stride = {STRIDE}

[output]
name = "embedding"
dim = {DIM}

# Scan-level nearest-reference accuracy (the node's own search), library = training scans,
# queries = the {len(np.unique(sva))} validation scans with cargo, from seeds {VAL_SEED}+ (never trained on).
[evaluation]
validation_scans = {len(np.unique(sva))}
top1_lda = {acc_lda:.3f}
top1_whitened_pca = {acc_pca:.3f}
top1_standardised_features = {acc_std:.3f}
held_out_classes = {json.dumps(HELD_OUT)}
top1_held_out_classes_lda_without_them = {acc_unseen_lda:.3f}
top1_held_out_classes_standardised_features = {acc_unseen_std:.3f}
per_class_top1_lda = {json.dumps(per_class).replace('": ', '" = ')}
'''
    (out / f"{NAME}.toml").write_text(toml)
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes, sha256 {sha}) and {NAME}.toml")


if __name__ == "__main__":
    main()
