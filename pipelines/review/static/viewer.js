// A small 3D mesh viewer on a 2D canvas (no WebGL, nothing from outside): painter's algorithm with
// back faces culled and Lambert shading from the viewer, orthographic view, orbit by dragging, zoom by
// the wheel, double-click to reset. It loads the binary mesh of /api/mesh.bin (see app.mesh_bytes):
// "PRLM", uint32 V, uint32 F, float32 vertices [V, 3] (OpenCV camera frame: x right, y down, z forward),
// uint32 faces [F, 3], uint8 part per vertex [V] (0 body, 1 hands, 2 face). The first view is the
// camera's own, so the mesh appears as in the photo.
"use strict";

class MeshViewer {
  constructor(canvas) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d");
    this.mesh = null;
    this.yaw = 0;
    this.pitch = 0;
    this.zoom = 1;
    this.url = null;
    this.colors = [[158, 189, 230], [140, 217, 140], [245, 194, 140]];
    let drag = null;
    canvas.addEventListener("mousedown", (e) => { drag = [e.clientX, e.clientY]; });
    window.addEventListener("mouseup", () => { drag = null; });
    window.addEventListener("mousemove", (e) => {
      if (!drag || !this.mesh) return;
      this.yaw += (e.clientX - drag[0]) * 0.01;
      this.pitch = Math.max(-1.5, Math.min(1.5, this.pitch - (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY];
      this.requestDraw();
    });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      this.zoom = Math.max(0.2, Math.min(8, this.zoom * Math.exp(-e.deltaY * 0.001)));
      this.requestDraw();
    }, { passive: false });
    canvas.addEventListener("dblclick", () => { this.yaw = 0; this.pitch = 0; this.zoom = 1; this.requestDraw(); });
  }

  async load(url) {
    this.url = url;
    this.canvas.dataset.state = "loading";
    if (!url) { this.mesh = null; this.message("no body: keypoints only"); this.canvas.dataset.state = "empty"; return; }
    try {
      const response = await fetch(url);
      if (!response.ok) throw new Error((await response.json()).error || response.statusText);
      const buffer = await response.arrayBuffer();
      if (this.url !== url) return;  // a newer person was asked for meanwhile
      this.mesh = MeshViewer.parse(buffer);
      this.yaw = 0; this.pitch = 0; this.zoom = 1;
      this.draw();
      this.canvas.dataset.state = "ready";
    } catch (err) {
      if (this.url !== url) return;
      this.mesh = null;
      this.message(`no mesh: ${err.message}`);
      this.canvas.dataset.state = "error";
    }
  }

  static parse(buffer) {
    const head = new DataView(buffer, 0, 12);
    const magic = String.fromCharCode(head.getUint8(0), head.getUint8(1), head.getUint8(2), head.getUint8(3));
    if (magic !== "PRLM") throw new Error("not a pearl mesh");
    const nv = head.getUint32(4, true);
    const nf = head.getUint32(8, true);
    const verts = new Float32Array(buffer.slice(12, 12 + nv * 12));
    const faces = new Uint32Array(buffer.slice(12 + nv * 12, 12 + nv * 12 + nf * 12));
    const parts = new Uint8Array(buffer.slice(12 + nv * 12 + nf * 12, 12 + nv * 12 + nf * 12 + nv));
    const lo = [Infinity, Infinity, Infinity];
    const hi = [-Infinity, -Infinity, -Infinity];
    for (let i = 0; i < nv; i++) {
      for (let k = 0; k < 3; k++) {
        const v = verts[3 * i + k];
        if (v < lo[k]) lo[k] = v;
        if (v > hi[k]) hi[k] = v;
      }
    }
    const centre = [0, 1, 2].map((k) => (lo[k] + hi[k]) / 2);
    const extent = Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) || 1;
    // which way the faces wind: outward normals point away from the centre on a closed surface
    let outward = 0;
    for (let f = 0; f < nf; f++) {
      const [a, b, c] = [faces[3 * f], faces[3 * f + 1], faces[3 * f + 2]];
      const n = MeshViewer.normal(verts, a, b, c);
      outward += n[0] * (verts[3 * a] - centre[0]) + n[1] * (verts[3 * a + 1] - centre[1]) + n[2] * (verts[3 * a + 2] - centre[2]);
    }
    return { nv, nf, verts, faces, parts, centre, extent, sign: outward >= 0 ? 1 : -1 };
  }

  static normal(p, a, b, c) {
    const ux = p[3 * b] - p[3 * a], uy = p[3 * b + 1] - p[3 * a + 1], uz = p[3 * b + 2] - p[3 * a + 2];
    const vx = p[3 * c] - p[3 * a], vy = p[3 * c + 1] - p[3 * a + 1], vz = p[3 * c + 2] - p[3 * a + 2];
    return [uy * vz - uz * vy, uz * vx - ux * vz, ux * vy - uy * vx];
  }

  message(text) {
    const { ctx, canvas } = this;
    ctx.fillStyle = "#20262e";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.fillStyle = "#aab";
    ctx.font = "13px sans-serif";
    ctx.fillText(text, 12, 24);
    canvas.dataset.faces = "0";
  }

  requestDraw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const m = this.mesh;
    if (!m) return;
    const { ctx, canvas } = this;
    const w = canvas.width, h = canvas.height;
    const cy = Math.cos(this.yaw), sy = Math.sin(this.yaw), cp = Math.cos(this.pitch), sp = Math.sin(this.pitch);
    const scale = 0.9 * Math.min(w, h) / m.extent * this.zoom;
    const p = new Float32Array(m.nv * 3);
    for (let i = 0; i < m.nv; i++) {
      const x = m.verts[3 * i] - m.centre[0], y = m.verts[3 * i + 1] - m.centre[1], z = m.verts[3 * i + 2] - m.centre[2];
      const x1 = cy * x + sy * z, z1 = -sy * x + cy * z;  // turn about the vertical (y) axis
      const y2 = cp * y - sp * z1, z2 = sp * y + cp * z1;  // then tilt about x
      p[3 * i] = w / 2 + x1 * scale;
      p[3 * i + 1] = h / 2 + y2 * scale;
      p[3 * i + 2] = z2;
    }
    const order = [];
    const depth = new Float32Array(m.nf);
    const shade = new Float32Array(m.nf);
    for (let f = 0; f < m.nf; f++) {
      const a = m.faces[3 * f], b = m.faces[3 * f + 1], c = m.faces[3 * f + 2];
      const n = MeshViewer.normal(p, a, b, c);
      // screen x right, y down, z away from the viewer: a face looks at the viewer when its outward normal has z < 0
      const nz = m.sign * n[2];
      if (nz >= 0) continue;
      const len = Math.hypot(n[0], n[1], n[2]) || 1;
      shade[f] = 0.3 + 0.7 * (-nz / len);
      depth[f] = p[3 * a + 2] + p[3 * b + 2] + p[3 * c + 2];
      order.push(f);
    }
    order.sort((f, g) => depth[g] - depth[f]);  // far to near
    ctx.fillStyle = "#20262e";
    ctx.fillRect(0, 0, w, h);
    ctx.lineWidth = 0.6;
    ctx.lineJoin = "round";
    for (const f of order) {
      const a = m.faces[3 * f], b = m.faces[3 * f + 1], c = m.faces[3 * f + 2];
      const base = this.colors[m.parts[a]] || this.colors[0];
      const s = shade[f];
      const style = `rgb(${(base[0] * s) | 0},${(base[1] * s) | 0},${(base[2] * s) | 0})`;
      ctx.beginPath();
      ctx.moveTo(p[3 * a], p[3 * a + 1]);
      ctx.lineTo(p[3 * b], p[3 * b + 1]);
      ctx.lineTo(p[3 * c], p[3 * c + 1]);
      ctx.closePath();
      ctx.fillStyle = style;
      ctx.strokeStyle = style;
      ctx.fill();
      ctx.stroke();
    }
    canvas.dataset.faces = String(order.length);
  }
}

window.MeshViewer = MeshViewer;
