// Charts drawn by uPlot (vendor/uplot/, loaded by index.html as a classic script that defines
// the global `uPlot`). This module is the page's only user of it:
//
//   LineChart  a fixed time window ending "now", a few series, a legend above the plot with the
//              latest (or hovered) value of each; series with `spanGaps` join the points they
//              have across seconds without a value (latency exists only in seconds with traffic).
//   Spark      a small per-minute bar chart (a client's last hour) with a read-out line.
//
// Colours and fonts come from the page's CSS variables (app.css), read when a chart is made.
// uPlot styles its own elements through the CSSOM (element.style), which the page's CSP allows.

import { fmtInt, h } from './dom.js';
import { t } from './i18n.js';

const HEIGHT = 128;
const charts = new WeakMap(); // a chart's element → the chart (tests and debugging use it)

// The chart object drawn into `el` (a LineChart's <figure>, a Spark's element), or null.
export function chartOf(el) {
  return charts.get(el) || null;
}

function lib() {
  const u = globalThis.uPlot;
  if (typeof u !== 'function') throw new Error('uPlot is not loaded (vendor/uplot/uPlot.iife.min.js)');
  return u;
}

function cssVar(name, fallback) {
  const v = getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  return v || fallback;
}

// '#rrggbb' with an alpha, as rgba(); anything else as it is
function withAlpha(color, alpha) {
  const m = /^#([0-9a-f]{6})$/i.exec(color);
  if (!m) return color;
  const n = parseInt(m[1], 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

function theme() {
  const font = cssVar('--font', 'system-ui, sans-serif');
  return {
    label: cssVar('--muted', '#6b737e'),
    grid: cssVar('--chart-grid', '#edf0f3'),
    surface: cssVar('--surface', '#ffffff'),
    font: `10.5px ${font}`,
  };
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(v));
  const f = v / exp;
  const nf = f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10;
  return nf * exp;
}

const valid = (v) => v != null && Number.isFinite(v);

// Points to draw as dots: a value with no neighbour to join (a line needs two), and, on a series
// that spans gaps, every measured value while there are few of them (the line alone would hide
// where the measurements were).
function dotFilter(u, si) {
  const ys = u.data[si];
  const span = u.series[si].spanGaps;
  const idx = [];
  let count = 0;
  for (let i = 0; i < ys.length; i++) if (valid(ys[i])) count++;
  for (let i = 0; i < ys.length; i++) {
    if (!valid(ys[i])) continue;
    const lonely = span ? count === 1 : !valid(ys[i - 1]) && !valid(ys[i + 1]);
    if (lonely || (span && count <= 20)) idx.push(i);
  }
  return idx.length ? idx : null;
}

// y-axis width for its widest label (canvas text at 10.5 px: ~6 px a character)
function axisWidth(_u, values) {
  const longest = Math.max(1, ...(values || []).map((v) => String(v ?? '').length));
  return Math.ceil(longest * 6.2) + 12;
}

export class LineChart {
  // series: [{ key, label, cls, color (a CSS variable), area?, hideZero?, spanGaps? }];
  // fmt(value) → short text for the legend, axisFmt for the y axis.
  constructor({ title, series, fmt, axisFmt, window = 120, emptyMax = 1, height = HEIGHT }) {
    this.title = title;
    this.series = series;
    this.fmt = fmt;
    this.axisFmt = axisFmt || fmt;
    this.window = window;
    this.emptyMax = emptyMax;
    this.height = height;
    this.now = Date.now() / 1000;
    this.data = [[], ...series.map(() => [])];
    this.yLabels = [];
    this.u = null;
    this.legendValues = new Map();
    this.legend = h(
      'div',
      { class: 'chart-legend' },
      series.map((sr) => {
        const value = h('span', { class: 'chart-legend-value' }, '—');
        this.legendValues.set(sr.key, value);
        return h('span', { class: 'chart-legend-item' }, h('span', { class: `swatch ${sr.cls}` }), h('span', null, sr.label), value);
      }),
    );
    this.hoverTime = h('span', { class: 'chart-hover-time' }, '');
    this.plot = h('div', { class: 'chart-plot', role: 'img', 'aria-label': title });
    this.empty = h('p', { class: 'chart-empty', hidden: true }, t('chart.no_data'));
    this.el = h(
      'figure',
      { class: 'chart' },
      h('div', { class: 'chart-head' }, h('figcaption', { class: 'chart-title' }, title), this.hoverTime),
      this.legend,
      h('div', { class: 'chart-body' }, this.plot, this.empty),
    );
    charts.set(this.el, this);
    if (typeof ResizeObserver !== 'undefined') {
      this.resize = new ResizeObserver(() => this.fit());
      this.resize.observe(this.plot);
    }
  }

  destroy() {
    if (this.resize) this.resize.disconnect();
    if (this.u) this.u.destroy();
    this.u = null;
  }

  // points: [{ t, <key>: value, … }] sorted by t; now: the window's right edge (epoch seconds)
  update(points, now) {
    this.now = now;
    const t0 = now - this.window;
    const pts = points.filter((p) => p.t >= t0 && p.t <= now);
    const xs = pts.map((p) => p.t);
    const ys = this.series.map((sr) =>
      pts.map((p) => {
        const v = p[sr.key];
        return valid(v) && !(sr.hideZero && v === 0) ? v : null;
      }),
    );
    // the x range is the data's: pad both ends so it is always the whole window
    if (!xs.length || xs[0] > t0) {
      xs.unshift(t0);
      for (const y of ys) y.unshift(null);
    }
    if (xs[xs.length - 1] < now) {
      xs.push(now);
      for (const y of ys) y.push(null);
    }
    this.data = [xs, ...ys];
    this.empty.hidden = ys.some((y) => y.some(valid));
    if (this.u) this.u.setData(this.data);
    else this.fit();
    this.showValues(null);
  }

  fit() {
    const width = Math.floor(this.plot.clientWidth);
    if (!width) return; // not laid out yet: the ResizeObserver calls again
    if (this.u) {
      if (width !== this.u.width) this.u.setSize({ width, height: this.height });
      return;
    }
    this.u = new (lib())(this.options(width), this.data, this.plot);
  }

  options(width) {
    const th = theme();
    const yMax = (_u, _min, max) => [0, valid(max) && max > 0 ? niceMax(max) : this.emptyMax];
    return {
      width,
      height: this.height,
      padding: [8, 14, 0, 0],
      legend: { show: false },
      select: { show: false },
      cursor: {
        y: false,
        drag: { x: false, y: false, setScale: false },
        points: { size: 7, width: 2, fill: th.surface },
      },
      scales: { x: { time: false }, y: { range: yMax } },
      axes: [
        {
          font: th.font,
          stroke: th.label,
          size: 22,
          gap: 4,
          grid: { show: false },
          ticks: { show: false },
          splits: (_u, _i, _min, max) => {
            const out = [];
            for (let i = Math.round(this.window / 60); i >= 0; i--) out.push(max - i * 60);
            return out;
          },
          values: (u, splits) =>
            splits.map((v) => {
              const n = Math.round((u.scales.x.max - v) / 60);
              return n === 0 ? t('chart.now') : t('chart.ago_m', { n });
            }),
        },
        {
          font: th.font,
          stroke: th.label,
          size: axisWidth,
          gap: 6,
          grid: { stroke: th.grid, width: 1 },
          ticks: { show: false },
          splits: (_u, _i, min, max) => [min, (min + max) / 2, max],
          values: (_u, splits) => {
            this.yLabels = splits.map((v) => this.axisFmt(v));
            return this.yLabels;
          },
        },
      ],
      series: [
        {},
        ...this.series.map((sr) => {
          const color = cssVar(sr.color, '#2563eb');
          return {
            label: sr.label,
            stroke: color,
            width: 1.75,
            fill: sr.area ? withAlpha(color, 0.12) : undefined,
            spanGaps: Boolean(sr.spanGaps),
            points: { show: false, filter: dotFilter, size: 5, width: 1, fill: color, stroke: color },
          };
        }),
      ],
      hooks: { setCursor: [(u) => this.showValues(u.cursor.idx)] },
    };
  }

  // the legend: the hovered second's values, else the latest value of each series
  showValues(idx) {
    const [xs, ...ys] = this.data;
    const hovered = idx != null && idx >= 0 && idx < xs.length ? idx : null;
    this.series.forEach((sr, i) => {
      let v = null;
      if (hovered !== null) v = ys[i][hovered];
      else {
        for (let j = ys[i].length - 1; j >= 0; j--) {
          if (valid(ys[i][j])) {
            v = ys[i][j];
            break;
          }
        }
      }
      this.legendValues.get(sr.key).textContent = valid(v) ? this.fmt(v) : '—';
    });
    this.hoverTime.textContent = hovered !== null ? new Date(xs[hovered] * 1000).toLocaleTimeString([], { hour12: false }) : '';
  }
}

// A small bar chart of per-minute counts, oldest first and ending with the current minute (a
// client's requests over the last hour): one bar a minute on a 0…max scale, the hour marked
// below, and a line under it that reads the total, or the hovered minute's count.
export class Spark {
  constructor(values, { width = 220, height = 64, label = '' } = {}) {
    const counts = values.map((v) => Number(v) || 0);
    const n = counts.length;
    const total = counts.reduce((a, b) => a + b, 0);
    const minute = Math.floor(Date.now() / 60_000); // the current minute, the last bar
    this.total = total;
    this.label = label;
    this.xs = counts.map((_, i) => i - n); // each bar starts at its minute: -60 … -1 (minutes from now)
    this.readout = h('span', { class: 'spark-readout' }, label);
    this.box = h('div', { class: 'spark-plot' });
    this.el = h('div', { class: 'client-spark', role: 'img', 'aria-label': label, dataset: { total: String(total) } }, this.box, this.readout);
    charts.set(this.el, this);
    const U = lib();
    const th = theme();
    const color = cssVar('--accent', '#2563eb');
    const top = niceMax(Math.max(1, ...counts));
    const minuteAt = (m) => new Date((minute + 1 + m) * 60_000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
    this.u = new U(
      {
        width,
        height,
        padding: [6, 10, 0, 0],
        legend: { show: false },
        select: { show: false },
        cursor: { y: false, points: { show: false }, drag: { x: false, y: false, setScale: false } },
        scales: { x: { time: false, range: () => [-n, 0] }, y: { range: () => [0, top] } },
        axes: [
          {
            font: th.font,
            stroke: th.label,
            size: 16,
            gap: 2,
            grid: { show: false },
            ticks: { show: false },
            splits: () => [-n, -n / 2, 0],
            values: (_u, splits) => splits.map((m) => (m === 0 ? t('chart.now') : t('chart.ago_m', { n: -m }))),
          },
          {
            font: th.font,
            stroke: th.label,
            size: axisWidth,
            gap: 4,
            grid: { stroke: th.grid, width: 1 },
            ticks: { show: false },
            splits: () => [0, top],
            values: (_u, splits) => splits.map((v) => (v ? fmtInt(v) : '')), // the baseline needs no 0
          },
        ],
        series: [
          {},
          {
            stroke: color,
            fill: withAlpha(color, 0.85),
            width: 0,
            paths: U.paths.bars({ align: 1, size: [0.8, Infinity, 2] }),
            points: { show: false },
          },
        ],
        hooks: {
          setCursor: [
            (u) => {
              const i = u.cursor.idx;
              this.readout.textContent = i == null ? this.label : t('clients.spark_at', { n: fmtInt(counts[i]), time: minuteAt(this.xs[i]) });
            },
          ],
        },
      },
      [this.xs, counts],
      this.box,
    );
  }

  destroy() {
    if (this.u) this.u.destroy();
    this.u = null;
  }
}
