// Showing a stereo (3D) feed the way each screen can: one eye in 2D, red-cyan
// anaglyph, or the side-by-side picture untouched for 3D monitors.
//
// The server never touches the pixels: a publisher says how its picture packs
// the two eyes (layout "sbs": left eye in the left half, "tb": left eye on
// top, or "mono"), and each viewer renders the decoded video here.
//
// * "2d": the left eye, scaled back to the full frame's aspect ratio. The
//   default for ordinary monitors.
// * "anaglyph": red from the left eye, green and blue from the right eye, for
//   red-cyan glasses. Built with 2D-canvas compositing (multiply by pure red or
//   cyan, then add), so no pixel is touched in JavaScript and it keeps up with
//   the feed's frame rate, also where WebGL is not available.
// * "sbs": the video element itself, unchanged (a 3D monitor splits it).
//
// 2D and anaglyph draw into a canvas the size of one eye, shown with the full
// frame's aspect ratio, redrawn on every decoded frame
// (requestVideoFrameCallback).

export const VIEW_MODES = ["2d", "anaglyph", "sbs"];
export const LAYOUTS = ["mono", "sbs", "tb"];

/** A view mode from a deep-link value; anything unknown falls back to 2D. */
export function parseViewMode(value) {
  return VIEW_MODES.includes(value) ? value : "2d";
}

/**
 * Source rectangles of the two eyes in a decoded frame.
 * @returns {{left: number[], right: number[], eye: number[]}} [x, y, w, h] each, and eye = [w, h]
 */
export function eyeRects(layout, width, height) {
  if (layout === "tb") {
    const h = Math.floor(height / 2);
    return { left: [0, 0, width, h], right: [0, h, width, h], eye: [width, h] };
  }
  const w = Math.floor(width / 2);
  return { left: [0, 0, w, height], right: [w, 0, w, height], eye: [w, height] };
}

export class StereoView {
  /**
   * @param {HTMLVideoElement} video the element playing the feed
   * @param {HTMLCanvasElement} canvas where 2D and anaglyph are drawn (placed over the video)
   */
  constructor(video, canvas) {
    this.video = video;
    this.canvas = canvas;
    this.context = canvas.getContext("2d");
    this.scratch = document.createElement("canvas");
    this.scratchContext = this.scratch.getContext("2d");
    this.layout = "mono";
    this.mode = "2d";
    this.frames = 0; // frames drawn, for tests and diagnostics
    this.pending = null;
    this.apply();
  }

  /** The feed's layout changed (publisher) or the viewer picked a mode. */
  set({ layout = this.layout, mode = this.mode } = {}) {
    this.layout = LAYOUTS.includes(layout) ? layout : "mono";
    this.mode = parseViewMode(mode);
    this.apply();
  }

  /** Whether the canvas (not the video element) is what the viewer sees. */
  get drawing() {
    return this.layout !== "mono" && this.mode !== "sbs";
  }

  apply() {
    this.canvas.hidden = !this.drawing;
    this.video.classList.toggle("stereo-hidden", this.drawing);
    this.canvas.dataset.mode = this.drawing ? this.mode : "";
    if (this.drawing) this.schedule();
    if (this.drawing && this.video.readyState >= 2) this.draw();
  }

  schedule() {
    if (this.pending != null) return;
    const next = () => {
      this.pending = null;
      if (!this.drawing) return;
      this.draw();
      this.schedule();
    };
    if (this.video.requestVideoFrameCallback) {
      this.pending = this.video.requestVideoFrameCallback(next);
    } else {
      this.pending = requestAnimationFrame(next);
    }
  }

  draw() {
    const { videoWidth: width, videoHeight: height } = this.video;
    if (!width || !height) return;
    const { left, right, eye } = eyeRects(this.layout, width, height);
    const [w, h] = eye;
    for (const canvas of [this.canvas, this.scratch]) {
      if (canvas.width !== w || canvas.height !== h) {
        canvas.width = w;
        canvas.height = h;
      }
    }
    // The eye is drawn at its own size; CSS shows it at the full frame's aspect.
    this.canvas.style.aspectRatio = `${width} / ${height}`;
    const ctx = this.context;
    ctx.globalCompositeOperation = "copy";
    ctx.drawImage(this.video, ...left, 0, 0, w, h);
    if (this.mode === "anaglyph") {
      keepChannels(ctx, "#ff0000", w, h);
      const scratch = this.scratchContext;
      scratch.globalCompositeOperation = "copy";
      scratch.drawImage(this.video, ...right, 0, 0, w, h);
      keepChannels(scratch, "#00ffff", w, h);
      ctx.globalCompositeOperation = "lighter";
      ctx.drawImage(this.scratch, 0, 0);
      ctx.globalCompositeOperation = "source-over";
    }
    this.frames += 1;
  }

  /** [r, g, b] of what the viewer sees at (fx, fy), fractions of the shown picture. */
  pixel(fx, fy) {
    if (this.drawing) {
      const x = Math.min(this.canvas.width - 1, Math.floor(fx * this.canvas.width));
      const y = Math.min(this.canvas.height - 1, Math.floor(fy * this.canvas.height));
      return Array.from(this.context.getImageData(x, y, 1, 1).data.slice(0, 3));
    }
    const probe = document.createElement("canvas");
    probe.width = this.video.videoWidth;
    probe.height = this.video.videoHeight;
    if (!probe.width) return null;
    const ctx = probe.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(this.video, 0, 0);
    const x = Math.min(probe.width - 1, Math.floor(fx * probe.width));
    const y = Math.min(probe.height - 1, Math.floor(fy * probe.height));
    return Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3));
  }
}

/** Multiply the canvas by a pure colour: keeps only those channels. */
function keepChannels(ctx, color, w, h) {
  ctx.globalCompositeOperation = "multiply";
  ctx.fillStyle = color;
  ctx.fillRect(0, 0, w, h);
}
