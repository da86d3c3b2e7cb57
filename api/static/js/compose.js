// Layers recombined in the page: visibility, order and position, alpha-composited bottom → top on a
// canvas (the authors' "combine layers" tool, live). save.js turns an arrangement into a compose job.

export function loadImage(url) {
  const crossOrigin = new URL(url, location.href).origin !== location.origin;
  const attempt = (cors) => new Promise((resolve, reject) => {
    const img = new Image();
    // Object stores on another origin need CORS for the canvas to stay readable (downloads of the
    // composite); without CORS the image still draws, and only that download is lost.
    if (cors) img.crossOrigin = "anonymous";
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error(`could not load ${url.split("?")[0]}`));
    img.src = url;
  });
  return crossOrigin ? attempt(true).catch(() => attempt(false)) : attempt(false);
}

export class LayerStack {
  constructor(canvas, onChange = () => {}) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.onChange = onChange;
    this.layers = []; // bottom first: {index, url, img, visible, dx, dy}
    this.selected = null;
    this.#wireMoves();
  }

  async load(links, width, height) {
    const imgs = await Promise.all(links.map((l) => loadImage(l.url)));
    this.width = width;
    this.height = height;
    this.canvas.width = width;
    this.canvas.height = height;
    this.original = links.map((l, i) => ({ index: l.index, url: l.url, img: imgs[i] }));
    this.reset();
  }

  reset() {
    this.layers = this.original.map((l) => ({ ...l, visible: true, dx: 0, dy: 0 }));
    this.selected = this.layers.at(-1) || null;
    this.changed();
  }

  changed() {
    this.render();
    this.onChange(this);
  }

  render() {
    const { ctx } = this;
    ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
    for (const l of this.layers) {
      if (l.visible) ctx.drawImage(l.img, l.dx, l.dy, this.width, this.height);
    }
  }

  toggle(layer, visible) { layer.visible = visible; this.changed(); }

  select(layer) { this.selected = layer; this.onChange(this); }

  /** Move a layer `by` places up (+1, towards the top) or down (-1) in the stack. */
  restack(layer, by) {
    const i = this.layers.indexOf(layer);
    const j = i + by;
    if (i < 0 || j < 0 || j >= this.layers.length) return;
    [this.layers[i], this.layers[j]] = [this.layers[j], this.layers[i]];
    this.changed();
  }

  nudge(dx, dy) {
    if (!this.selected) return;
    this.selected.dx += dx;
    this.selected.dy += dy;
    this.render(); // positions are not shown in the gallery: no need to rebuild it on every move
  }

  #wireMoves() {
    const c = this.canvas;
    let last = null;
    const toCanvas = (e) => {
      const r = c.getBoundingClientRect();
      return [(e.clientX - r.left) * (c.width / r.width), (e.clientY - r.top) * (c.height / r.height)];
    };
    c.addEventListener("pointerdown", (e) => { last = toCanvas(e); c.setPointerCapture(e.pointerId); });
    c.addEventListener("pointermove", (e) => {
      if (!last) return;
      const p = toCanvas(e);
      const dx = Math.round(p[0] - last[0]), dy = Math.round(p[1] - last[1]);
      if (!dx && !dy) return;
      last = [last[0] + dx, last[1] + dy]; // carry the sub-pixel rest, so slow drags still move
      this.nudge(dx, dy);
    });
    const end = () => { last = null; };
    c.addEventListener("pointerup", end);
    c.addEventListener("pointercancel", end);
    c.addEventListener("keydown", (e) => {
      const step = e.shiftKey ? 10 : 1;
      const moves = { ArrowLeft: [-step, 0], ArrowRight: [step, 0], ArrowUp: [0, -step], ArrowDown: [0, step] };
      if (!moves[e.key]) return;
      e.preventDefault();
      this.nudge(...moves[e.key]);
    });
  }
}
