// Dashboard: totals on top, then one card per provider with key states, counters, in-flight and
// queue meters and two live charts, drawn by uPlot (requests/s with errors/s; latency p50/p95).
// Polls /api/stats every 2 s; the per-second timeline is merged into a history that outlives
// view switches.

import { api } from '../api.js';
import { LineChart } from '../chart.js';
import { emptyState, fmtCompact, fmtDuration, fmtInt, fmtMs, fmtNum, fmtPct, fmtTime, h, pageHeader, poller, serverNow } from '../dom.js';
import { t } from '../i18n.js';
import { quotaMeters } from '../quota.js';

const STATES = ['active', 'cooling', 'invalid', 'exhausted', 'disabled'];
const WINDOW_S = 120;
const SMOOTH_S = 5;
const history = new Map(); // provider → Map(t → point)

function merge(name, timeline, now) {
  let m = history.get(name);
  if (!m) {
    m = new Map();
    history.set(name, m);
  }
  for (const p of timeline || []) {
    if (p && typeof p.t === 'number') m.set(p.t, p);
  }
  for (const k of m.keys()) if (k < now - WINDOW_S - 10) m.delete(k);
  const pts = [...m.values()].sort((a, b) => a.t - b.t);
  // Per-second counts jump between 0 and n at low rates; the chart shows a 5 s moving average.
  const out = [];
  for (let i = 0; i < pts.length; i++) {
    let sum = 0;
    let errs = 0;
    let n = 0;
    for (let j = i; j >= 0 && pts[i].t - pts[j].t < SMOOTH_S; j--) {
      sum += pts[j].rps || 0;
      errs += pts[j].errors || 0;
      n++;
    }
    out.push({ ...pts[i], rate: sum / n, errRate: errs / n });
  }
  return out;
}

function stat(label, value, sub, extraClass = '') {
  return h(
    'div',
    { class: `card stat ${extraClass}` },
    h('div', { class: 'stat-label' }, label),
    h('div', { class: 'stat-value' }, value),
    sub ? h('div', { class: 'stat-sub' }, sub) : null,
  );
}

// One chip per key state. A state's colour shows only when some key is in it: a provider without
// keys gets a single neutral "no keys" chip, and "0 active" (nothing usable) is neutral, never green.
export function stateChips(keys, { all = false } = {}) {
  const count = (st) => Number((keys && keys[st]) || 0);
  const total = keys && keys.total != null ? Number(keys.total) : STATES.reduce((a, st) => a + count(st), 0);
  const dot = () => h('span', { class: 'dot', 'aria-hidden': 'true' });
  if (!total && !all) return h('div', { class: 'chips' }, h('span', { class: 'chip chip-none chip-zero' }, dot(), t('state.none')));
  const chips = [];
  for (const st of STATES) {
    const n = count(st);
    if (!all && !n && st !== 'active') continue;
    chips.push(h('span', { class: `chip chip-${st}${n ? '' : ' chip-zero'}` }, dot(), `${fmtInt(n)} ${t(`state.${st}`)}`));
  }
  return h('div', { class: 'chips' }, chips);
}

function meter(label, value, max) {
  const fill = h('div', { class: 'meter-fill' });
  const frac = max > 0 ? Math.min(1, value / max) : 0;
  fill.style.width = `${(frac * 100).toFixed(1)}%`;
  if (frac >= 0.9) fill.classList.add('is-high');
  else if (frac >= 0.6) fill.classList.add('is-mid');
  return h(
    'div',
    { class: 'meter' },
    h('div', { class: 'meter-head' }, h('span', { class: 'meter-label' }, label), h('span', { class: 'meter-value' }, `${fmtInt(value)} / ${fmtInt(max)}`)),
    h('div', { class: 'meter-track', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': max || 0, 'aria-valuenow': value || 0, 'aria-label': label }, fill),
  );
}

function metric(label, value, sub) {
  return h('div', { class: 'metric' }, h('div', { class: 'metric-label' }, label), h('div', { class: 'metric-value' }, value), sub ? h('div', { class: 'metric-sub' }, sub) : null);
}

class ProviderCard {
  constructor(name) {
    this.name = name;
    this.rps = new LineChart({
      title: t('dash.rps'),
      series: [
        { key: 'rate', label: t('dash.rps_short'), cls: 's-rps', color: '--c-rps', area: true },
        { key: 'errRate', label: t('dash.errors_s'), cls: 's-err', color: '--c-err', hideZero: true },
      ],
      fmt: (v) => fmtNum(v, v < 10 ? 1 : 0),
      axisFmt: (v) => fmtNum(v, 2),
      emptyMax: 1,
      window: WINDOW_S,
    });
    this.lat = new LineChart({
      title: t('dash.latency'),
      // latency exists only in seconds with traffic: the line joins the seconds that have one
      series: [
        { key: 'p50', label: 'p50', cls: 's-p50', color: '--c-p50', spanGaps: true },
        { key: 'p95', label: 'p95', cls: 's-p95', color: '--c-p95', spanGaps: true },
      ],
      fmt: fmtMs,
      // sub-10 ms scales keep a decimal, or a 1 ms axis would read "1 ms, 0 ms, 0 ms"
      axisFmt: (v) => (v >= 1000 ? `${fmtNum(v / 1000, 1)} s` : `${fmtNum(v, v > 0 && v < 10 ? 1 : 0)} ms`),
      window: WINDOW_S,
      emptyMax: 100,
    });
    this.chips = h('div');
    this.metrics = h('div', { class: 'metrics' });
    this.meters = h('div', { class: 'meters' });
    this.quota = h('div', { class: 'prov-quota' });
    this.note = h('p', { class: 'prov-note', hidden: true });
    this.el = h(
      'article',
      { class: 'card prov-card', dataset: { provider: name } },
      h(
        'header',
        { class: 'prov-card-head' },
        h('h3', { class: 'prov-card-title' }, name),
        h('a', { class: 'link', href: `#/keys?${new URLSearchParams({ provider: name })}` }, t('dash.manage_keys')),
      ),
      this.chips,
      this.metrics,
      this.meters,
      this.quota,
      this.note,
      h('div', { class: 'charts' }, this.rps.el, this.lat.el),
    );
  }

  update(p, points, now) {
    this.chips.replaceChildren(stateChips(p.keys));
    const errors = (p.err_4xx || 0) + (p.err_5xx || 0);
    this.metrics.replaceChildren(
      metric(t('dash.requests'), fmtCompact(p.requests || 0), t('dash.ok_n', { n: fmtCompact(p.ok || 0) })),
      metric(t('dash.errors'), fmtCompact(errors), t('dash.err_split', { a: fmtCompact(p.err_4xx || 0), b: fmtCompact(p.err_5xx || 0) })),
      metric(t('dash.tokens'), fmtCompact((p.tokens_in || 0) + (p.tokens_out || 0)), t('dash.tokens_split', { a: fmtCompact(p.tokens_in || 0), b: fmtCompact(p.tokens_out || 0) })),
    );
    this.meters.replaceChildren(meter(t('dash.conn'), p.in_flight || 0, p.max_conn || 0), meter(t('dash.queue'), p.queued || 0, p.queue || 0));
    const quota = quotaMeters(p.quota);
    this.quota.replaceChildren(...(quota ? [quota] : []));
    const paused = Number(p.paused_for_s || 0);
    this.note.hidden = !(paused > 0);
    this.note.textContent = paused > 0 ? t('dash.paused', { s: fmtDuration(paused) }) : '';
    this.rps.update(points, now);
    this.lat.update(points, now);
  }

  destroy() {
    this.rps.destroy();
    this.lat.destroy();
  }
}

export function mount(root, _params, ctx) {
  const banner = h('p', { class: 'banner banner-warn', role: 'status', hidden: true });
  const stateBanner = h('p', { class: 'banner banner-error', role: 'alert', hidden: true });
  const totals = h('section', { class: 'stat-grid', 'aria-label': t('dash.title') });
  const grid = h('section', { class: 'prov-grid' });
  const heading = h('h2', { class: 'section-title' }, t('dash.providers'));
  const empty = h('div', { hidden: true });
  root.append(pageHeader(t('dash.title'), t('dash.subtitle')), stateBanner, banner, totals, heading, grid, empty);
  const cards = new Map();
  let first = true;

  const render = (data) => {
    const state = data.state || {};
    stateBanner.hidden = state.state !== 'local-fallback';
    if (!stateBanner.hidden) {
      stateBanner.textContent = t('dash.state_fallback', {
        since: state.state_since ? fmtTime(state.state_since) : '?',
        n: state.fleet_size || 1,
        reason: state.state_reason || '',
      });
    }
    const tot = data.totals || {};
    const errors = (tot.err_4xx || 0) + (tot.err_5xx || 0);
    const keyTotal = tot.keys ? (tot.keys.total ?? STATES.reduce((a, st) => a + (tot.keys[st] || 0), 0)) : 0;
    totals.replaceChildren(
      stat(t('dash.requests'), fmtCompact(tot.requests || 0), t('dash.ok_n', { n: fmtCompact(tot.ok || 0) })),
      stat(t('dash.errors'), fmtCompact(errors), `${fmtPct(errors, tot.requests || 0)} · ${t('dash.err_split', { a: fmtCompact(tot.err_4xx || 0), b: fmtCompact(tot.err_5xx || 0) })}`, errors ? 'stat-warn' : ''),
      stat(t('dash.tokens'), fmtCompact((tot.tokens_in || 0) + (tot.tokens_out || 0)), t('dash.tokens_split', { a: fmtCompact(tot.tokens_in || 0), b: fmtCompact(tot.tokens_out || 0) })),
      h('div', { class: 'card stat stat-keys' }, h('div', { class: 'stat-label' }, t('dash.keys')), h('div', { class: 'stat-value' }, fmtInt(keyTotal)), stateChips(tot.keys || {}, { all: false })),
      stat(t('dash.inflight'), fmtInt(tot.in_flight || 0), t('dash.queued_n', { n: fmtInt(tot.queued || 0) })),
      stat(t('dash.uptime'), fmtDuration(data.uptime_s || 0), data.since ? t('dash.since', { time: fmtTime(data.since) }) : ''),
    );
    const provs = data.providers || {};
    const names = Object.keys(provs);
    let now = serverNow();
    for (const name of names) {
      const tl = provs[name].timeline || [];
      if (tl.length) now = Math.max(now, tl[tl.length - 1].t);
    }
    for (const [name, card] of cards) {
      if (!(name in provs)) {
        card.el.remove();
        card.destroy();
        cards.delete(name);
      }
    }
    names.forEach((name, i) => {
      let card = cards.get(name);
      if (!card) {
        card = new ProviderCard(name);
        cards.set(name, card);
      }
      if (grid.children[i] !== card.el) grid.insertBefore(card.el, grid.children[i] || null);
      card.update(provs[name], merge(name, provs[name].timeline, now), now);
    });
    heading.hidden = !names.length;
    empty.hidden = !!names.length;
    if (!names.length && !empty.firstChild) {
      empty.append(
        h(
          'div',
          { class: 'card' },
          emptyState(
            t('dash.empty_title'),
            t('dash.empty_body'),
            h('a', { class: 'btn btn-primary', href: '#/keys?add=1' }, t('dash.add_key')),
            h('a', { class: 'btn', href: '#/connect' }, t('dash.connect')),
          ),
        ),
      );
    }
  };

  const poll = poller(async () => {
    try {
      const data = await api('GET', '/api/stats');
      banner.hidden = true;
      render(data || {});
      first = false;
    } catch (err) {
      if (err.status === 401) return;
      banner.textContent = t('dash.stale', { message: err.message });
      banner.hidden = false;
      if (first) {
        first = false;
        totals.replaceChildren();
      }
    }
  }, 2000);
  void ctx;

  return {
    destroy() {
      poll.stop();
      for (const card of cards.values()) card.destroy();
      cards.clear();
    },
  };
}
