// Small hand-drawn SVG line charts (no library): a fixed time window ending "now", a few series,
// gaps where a series has no value, hover read-out in the legend. Colours come from CSS classes.

import { h, s } from './dom.js';
import { t } from './i18n.js';

const HEIGHT = 128;
const PAD = { l: 44, r: 10, t: 10, b: 20 };

function niceMax(v) {
  if (!(v > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(v));
  const f = v / exp;
  const nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nf * exp;
}

export class LineChart {
  // series: [{ key, label, cls, area? }]; fmt(value) → short text for axis and legend.
  constructor({ title, series, fmt, axisFmt, window = 120, emptyMax = 1, gap = 2.5 }) {
    this.gap = gap;
    this.title = title;
    this.emptyMax = emptyMax;
    this.series = series;
    this.fmt = fmt;
    this.axisFmt = axisFmt || fmt;
    this.window = window;
    this.points = [];
    this.now = Date.now() / 1000;
    this.hoverT = null;
    this.legendValues = new Map();
    this.legend = h(
      'div',
      { class: 'chart-legend' },
      series.map((sr) => {
        const value = h('span', { class: 'chart-legend-value' }, '');
        this.legendValues.set(sr.key, value);
        return h('span', { class: 'chart-legend-item' }, h('span', { class: `swatch ${sr.cls}` }), h('span', null, sr.label), value);
      }),
    );
    this.titleEl = h('figcaption', { class: 'chart-title' }, title);
    this.hoverTime = h('span', { class: 'chart-hover-time' }, '');
    this.plot = h('div', { class: 'chart-plot' });
    this.el = h('figure', { class: 'chart' }, h('div', { class: 'chart-head' }, this.titleEl, this.hoverTime), this.legend, this.plot);
    if (typeof ResizeObserver !== 'undefined') {
      let lastW = 0;
      this.resize = new ResizeObserver(() => {
        const w = this.plot.clientWidth;
        if (w && w !== lastW) {
          lastW = w;
          this.draw();
        }
      });
      this.resize.observe(this.plot);
    }
  }

  destroy() {
    if (this.resize) this.resize.disconnect();
  }

  update(points, now) {
    this.points = points;
    this.now = now;
    this.draw();
  }

  draw() {
    const width = Math.max(160, this.plot.clientWidth || 320);
    const pw = width - PAD.l - PAD.r;
    const ph = HEIGHT - PAD.t - PAD.b;
    const t0 = this.now - this.window;
    const pts = this.points.filter((p) => p.t >= t0 - 1 && p.t <= this.now + 1);
    let max = 0;
    let any = false;
    for (const p of pts) {
      for (const sr of this.series) {
        const v = p[sr.key];
        if (v != null && Number.isFinite(v)) {
          any = true;
          if (v > max) max = v;
        }
      }
    }
    const yMax = max > 0 ? niceMax(max) : this.emptyMax;
    const x = (tt) => PAD.l + ((tt - t0) / this.window) * pw;
    const y = (v) => PAD.t + ph - (Math.min(v, yMax) / yMax) * ph;
    this.geom = { pts, x, y, t0, pw, ph };

    if (!this.svg) this.build();
    const svg = this.svg;
    svg.setAttribute('width', width);
    svg.setAttribute('viewBox', `0 0 ${width} ${HEIGHT}`);
    this.overlay.setAttribute('width', pw);
    this.overlay.setAttribute('height', ph);

    const grid = [];
    for (const frac of [0, 0.5, 1]) {
      const gy = y(yMax * frac);
      grid.push(s('line', { class: frac === 0 ? 'chart-axis' : 'chart-grid', x1: PAD.l, x2: width - PAD.r, y1: gy, y2: gy }));
      grid.push(s('text', { class: 'chart-label', x: PAD.l - 6, y: gy + 3.5, 'text-anchor': 'end' }, this.axisFmt(yMax * frac)));
    }
    const mins = Math.round(this.window / 60);
    for (let i = mins; i >= 0; i--) {
      const tx = x(this.now - i * 60);
      const anchor = i === mins ? 'start' : i === 0 ? 'end' : 'middle';
      grid.push(s('text', { class: 'chart-label', x: tx, y: HEIGHT - 5, 'text-anchor': anchor }, i === 0 ? t('chart.now') : t('chart.ago_m', { n: i })));
    }
    if (!any) {
      grid.push(s('text', { class: 'chart-empty', x: PAD.l + pw / 2, y: PAD.t + ph / 2 + 4, 'text-anchor': 'middle' }, t('chart.no_data')));
    }
    this.gGrid.replaceChildren(...grid);

    const data = [];
    const gap = this.gap; // seconds: points further apart are not joined
    for (const sr of this.series) {
      const segments = [];
      let cur = [];
      let prevT = null;
      for (const p of pts) {
        const v = p[sr.key];
        if (v == null || !Number.isFinite(v) || (sr.hideZero && v === 0)) continue; // no value: skip
        if (prevT !== null && p.t - prevT > gap) {
          segments.push(cur);
          cur = [];
        }
        cur.push([x(p.t), y(v)]);
        prevT = p.t;
      }
      if (cur.length) segments.push(cur);
      for (const seg of segments) {
        if (seg.length === 1) {
          data.push(s('circle', { class: `chart-dot ${sr.cls}`, cx: seg[0][0].toFixed(1), cy: seg[0][1].toFixed(1), r: 2 }));
          continue;
        }
        const d = seg.map(([px, py], i) => `${i ? 'L' : 'M'}${px.toFixed(1)},${py.toFixed(1)}`).join('');
        if (sr.area) {
          const base = y(0).toFixed(1);
          data.push(s('path', { class: `chart-area ${sr.cls}`, d: `${d}L${seg[seg.length - 1][0].toFixed(1)},${base}L${seg[0][0].toFixed(1)},${base}Z` }));
        }
        data.push(s('path', { class: `chart-line ${sr.cls}`, d }));
      }
    }
    this.gData.replaceChildren(...data);
    this.drawHover();
  }

  build() {
    this.svg = s('svg', { class: 'chart-svg', height: HEIGHT, role: 'img', 'aria-label': this.title });
    this.gGrid = s('g');
    this.gData = s('g');
    this.gHover = s('g');
    this.overlay = s('rect', { class: 'chart-overlay', x: PAD.l, y: PAD.t, width: 1, height: 1 });
    this.overlay.addEventListener('pointermove', (ev) => {
      const { pts, t0, pw } = this.geom;
      const rect = this.svg.getBoundingClientRect();
      const tt = t0 + ((ev.clientX - rect.left - PAD.l) / pw) * this.window;
      let best = null;
      for (const p of pts) if (best === null || Math.abs(p.t - tt) < Math.abs(best.t - tt)) best = p;
      const next = best ? best.t : null;
      if (next !== this.hoverT) {
        this.hoverT = next;
        this.drawHover();
      }
    });
    this.overlay.addEventListener('pointerleave', () => {
      this.hoverT = null;
      this.drawHover();
    });
    this.svg.append(this.gGrid, this.gData, this.gHover, this.overlay);
    this.plot.replaceChildren(this.svg);
  }

  drawHover() {
    const { pts, x, y, ph } = this.geom;
    let hovered = null;
    if (this.hoverT !== null) hovered = pts.find((p) => p.t === this.hoverT) || null;
    const marks = [];
    if (hovered) {
      const hx = x(hovered.t);
      marks.push(s('line', { class: 'chart-cursor', x1: hx, x2: hx, y1: PAD.t, y2: PAD.t + ph }));
      for (const sr of this.series) {
        const v = hovered[sr.key];
        if (v != null && Number.isFinite(v)) marks.push(s('circle', { class: `chart-dot ${sr.cls}`, cx: hx, cy: y(v), r: 3 }));
      }
    }
    this.gHover.replaceChildren(...marks);
    // legend: the hovered values, else the latest value of each series
    for (const sr of this.series) {
      let v = null;
      if (hovered) v = hovered[sr.key];
      else {
        for (let i = pts.length - 1; i >= 0; i--) {
          const pv = pts[i][sr.key];
          if (pv != null && Number.isFinite(pv)) {
            v = pv;
            break;
          }
        }
      }
      this.legendValues.get(sr.key).textContent = v == null ? '—' : this.fmt(v);
    }
    this.hoverTime.textContent = hovered ? new Date(hovered.t * 1000).toLocaleTimeString([], { hour12: false }) : '';
  }
}
