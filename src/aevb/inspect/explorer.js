// aevb latent explorer: the decoder's forward pass in the page, driven by the pointer over a latent plane.
// Reads the JSON in <script id="aevb-explorer-data"> (written by aevb/inspect/report.py): float32 weights as base64,
// the training encodings to draw, and which latent dimensions span the plane. No server, no libraries.
(function () {
  "use strict";
  const DATA = JSON.parse(document.getElementById("aevb-explorer-data").textContent);

  function f32(b64) {
    const s = atob(b64);
    const bytes = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
    return new Float32Array(bytes.buffer);  // little-endian, as written by numpy's "<f4"
  }

  // erf to ~1e-15: Taylor series near 0, continued fraction for erfc beyond |x| = 3
  function erf(x) {
    const ax = Math.abs(x);
    if (ax < 3) {
      let term = ax, sum = ax;
      for (let n = 1; n < 200; n++) {
        term *= -ax * ax / n;
        const t = term / (2 * n + 1);
        sum += t;
        if (Math.abs(t) < 1e-17 * Math.abs(sum)) break;
      }
      const r = 2 / Math.sqrt(Math.PI) * sum;
      return x < 0 ? -r : r;
    }
    let f = ax;  // erfc(x) = exp(-x^2)/sqrt(pi) / (x + (1/2)/(x + 1/(x + (3/2)/(x + ...))))
    for (let k = 60; k >= 1; k--) f = ax + (k / 2) / f;
    const erfc = Math.exp(-ax * ax) / Math.sqrt(Math.PI) / f;
    return x < 0 ? erfc - 1 : 1 - erfc;
  }
  const sigmoid = (v) => v >= 0 ? 1 / (1 + Math.exp(-v)) : Math.exp(v) / (1 + Math.exp(v));

  function activation(spec) {
    switch (spec.name) {
      case "tanh": return Math.tanh;
      case "relu": return (v) => v > 0 ? v : 0;
      case "elu": return (v) => v > 0 ? v : spec.alpha * Math.expm1(v);
      case "gelu":
        if (spec.approximate === "tanh") {
          const c = Math.sqrt(2 / Math.PI);
          return (v) => 0.5 * v * (1 + Math.tanh(c * (v + 0.044715 * v * v * v)));
        }
        return (v) => 0.5 * v * (1 + erf(v / Math.SQRT2));
      case "silu": return (v) => v * sigmoid(v);
      case "softplus": return (v) => v * spec.beta > spec.threshold ? v : Math.log1p(Math.exp(spec.beta * v)) / spec.beta;
      case "sigmoid": return sigmoid;
      default: throw new Error("aevb explorer: unsupported activation " + spec.name);
    }
  }

  const layers = DATA.layers.map((l) => ({ W: f32(l.W), b: f32(l.b), n_in: l.n_in, n_out: l.n_out }));
  const act = activation(DATA.activation);
  const head = DATA.head;
  const out = { W: f32(head.W), b: f32(head.b), n_in: head.n_in, n_out: head.n_out };

  function linear(l, h, f) {
    const o = new Float64Array(l.n_out);
    for (let j = 0; j < l.n_out; j++) {
      let s = l.b[j];
      const row = j * l.n_in;
      for (let i = 0; i < l.n_in; i++) s += l.W[row + i] * h[i];
      o[j] = f ? f(s) : s;
    }
    return o;
  }

  function cbMean(logit) {  // torch.distributions.ContinuousBernoulli(logits).mean, probs clamped like torch
    let p = sigmoid(logit);
    p = Math.min(Math.max(p, head.eps), 1 - head.eps);
    if (p > head.lims[0] && p < head.lims[1]) {
      const x = p - 0.5;
      return 0.5 + (1 / 3 + 16 / 45 * x * x) * x;
    }
    return p / (2 * p - 1) + 1 / (Math.log1p(-p) - Math.log(p));
  }

  // The decoder's mean E[x | z] for one latent vector z (array of latentDim numbers): a Float64Array of xDim.
  function decode(z) {
    if (z.length !== DATA.latent_dim) throw new Error("expected " + DATA.latent_dim + " latent values");
    let h = Float64Array.from(z);
    for (const l of layers) h = linear(l, h, act);
    const a = linear(out, h, null);
    const d = DATA.x_dim;
    const mean = new Float64Array(d);
    switch (head.kind) {
      case "sigmoid": for (let i = 0; i < d; i++) mean[i] = sigmoid(a[i]); break;
      case "identity": for (let i = 0; i < d; i++) mean[i] = a[i]; break;
      case "continuous-bernoulli": for (let i = 0; i < d; i++) mean[i] = cbMean(a[i]); break;
      case "categorical": {
        const K = head.levels;
        for (let i = 0; i < d; i++) {
          let m = -Infinity;
          for (let k = 0; k < K; k++) m = Math.max(m, a[i * K + k]);
          let z0 = 0, s = 0;
          for (let k = 0; k < K; k++) { const e = Math.exp(a[i * K + k] - m); z0 += e; s += e * k / (K - 1); }
          mean[i] = s / z0;
        }
        break;
      }
      default: throw new Error("aevb explorer: unsupported output head " + head.kind);
    }
    return mean;
  }

  // -- the page ---------------------------------------------------------------------------------------------
  const plane = document.getElementById("explorer-plane");
  const view = document.getElementById("explorer-image");
  const small = document.getElementById("explorer-image-1x");
  const readout = document.getElementById("explorer-z");
  const selX = document.getElementById("explorer-dim-x");
  const selY = document.getElementById("explorer-dim-y");
  // image_shape is [H, W] (one channel) or [C, H, W] (C = 1 or 3); the decoded row is C-major: channel c of
  // pixel i is mean[c * H * W + i]
  const C = DATA.image_shape.length === 3 ? DATA.image_shape[0] : 1;
  const [H, W] = DATA.image_shape.slice(-2);
  small.width = W; small.height = H;
  const points = f32(DATA.points);  // (N, latentDim) posterior means of training images
  const nPoints = points.length / DATA.latent_dim;
  const labels = DATA.labels;  // array or null
  const state = { dims: DATA.dims.slice(), z: new Array(DATA.latent_dim).fill(0), image: null, updates: 0 };

  for (const sel of [selX, selY]) {
    for (let j = 0; j < DATA.latent_dim; j++) {
      const o = document.createElement("option");
      o.value = String(j); o.textContent = "z[" + j + "]";
      sel.appendChild(o);
    }
  }
  selX.value = String(state.dims[0]); selY.value = String(state.dims[1]);

  function extent(j) { return DATA.extent[j]; }
  function toPlane(zx, zy) {  // latent -> canvas pixels; y grows upward
    const ex = extent(state.dims[0]), ey = extent(state.dims[1]);
    return [(zx + ex) / (2 * ex) * plane.width, (1 - (zy + ey) / (2 * ey)) * plane.height];
  }
  function fromPlane(px, py) {
    const ex = extent(state.dims[0]), ey = extent(state.dims[1]);
    return [px / plane.width * 2 * ex - ex, (1 - py / plane.height) * 2 * ey - ey];
  }

  function drawPlane() {
    const g = plane.getContext("2d");
    g.fillStyle = "#ffffff"; g.fillRect(0, 0, plane.width, plane.height);
    g.strokeStyle = "#dddddd"; g.lineWidth = 1;
    const [cx, cy] = toPlane(0, 0);
    g.beginPath(); g.moveTo(cx, 0); g.lineTo(cx, plane.height); g.moveTo(0, cy); g.lineTo(plane.width, cy); g.stroke();
    const [dx, dy] = state.dims;
    for (let n = 0; n < nPoints; n++) {
      const [px, py] = toPlane(points[n * DATA.latent_dim + dx], points[n * DATA.latent_dim + dy]);
      g.fillStyle = labels ? DATA.colors[labels[n] % DATA.colors.length] : DATA.colors[0];
      g.globalAlpha = 0.55;
      g.fillRect(px - 1.5, py - 1.5, 3, 3);
    }
    g.globalAlpha = 1;
    const [mx, my] = toPlane(state.z[dx], state.z[dy]);
    g.strokeStyle = "#000000"; g.lineWidth = 1.5;
    g.beginPath(); g.arc(mx, my, 5, 0, 2 * Math.PI); g.stroke();
  }

  function show(z) {
    const mean = decode(z);
    const g = small.getContext("2d");
    const img = g.createImageData(W, H);
    const level = (v) => Math.round(Math.min(1, Math.max(0, v)) * 255);
    for (let i = 0; i < H * W; i++) {
      for (let c = 0; c < 3; c++) img.data[4 * i + c] = level(mean[(C === 3 ? c : 0) * H * W + i]);
      img.data[4 * i + 3] = 255;
    }
    g.putImageData(img, 0, 0);
    const big = view.getContext("2d");
    big.imageSmoothingEnabled = false;
    big.drawImage(small, 0, 0, view.width, view.height);
    state.z = Array.from(z); state.image = Array.from(mean); state.updates += 1;
    readout.textContent = "z[" + state.dims[0] + "] = " + z[state.dims[0]].toFixed(3) + ", z[" + state.dims[1] +
      "] = " + z[state.dims[1]].toFixed(3) + (DATA.latent_dim > 2 ? " (other dimensions 0)" : "");
    drawPlane();
  }

  function onPointer(ev) {
    const r = plane.getBoundingClientRect();  // the border box: step inside the border to the drawing
    const px = (ev.clientX - r.left - plane.clientLeft) * plane.width / plane.clientWidth;
    const py = (ev.clientY - r.top - plane.clientTop) * plane.height / plane.clientHeight;
    const [zx, zy] = fromPlane(px, py);
    const z = new Array(DATA.latent_dim).fill(0);
    z[state.dims[0]] = zx; z[state.dims[1]] = zy;
    show(z);
  }
  plane.addEventListener("pointermove", onPointer);
  plane.addEventListener("pointerdown", onPointer);
  function onDims() {
    const a = Number(selX.value), b = Number(selY.value);
    if (a === b) { selY.value = String(state.dims[1]); return; }
    state.dims = [a, b];
    show(new Array(DATA.latent_dim).fill(0));
  }
  selX.addEventListener("change", onDims);
  selY.addEventListener("change", onDims);

  show(new Array(DATA.latent_dim).fill(0));
  window.aevbExplorer = { decode: (z) => Array.from(decode(z)), state: state, latentDim: DATA.latent_dim,
                          fromPlane: fromPlane };
})();
