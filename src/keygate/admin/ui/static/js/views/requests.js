// Recent requests (newest first) with provider and status filters; refreshes every 3 s while
// "Live" is on. A logged request never changes, so a refresh keeps the rows it already shows
// (an opened error stays open, keyboard focus stays put) and only adds and drops rows.

import { api, qs } from '../api.js';
import { badge, emptyState, errorText, fmtDateTime, fmtInt, fmtMs, fmtTime, h, pageHeader, poller, select } from '../dom.js';
import { t } from '../i18n.js';

const STATUSES = ['', '2xx', '4xx', '5xx', 'error', '429', '401'];
const STATUS_LABEL = { '': 'req.any_status', '2xx': 'req.s2xx', '4xx': 'req.s4xx', '5xx': 'req.s5xx', error: 'req.serror', 429: 'req.s429', 401: 'req.s401' };
const LIMITS = [50, 100, 200, 500];

function statusKind(code) {
  const n = Number(code);
  if (!n) return 'bad';
  if (n < 300) return 'ok';
  if (n === 429 || n < 500) return 'warn';
  return 'bad';
}

export function mount(root, params, ctx) {
  const st = {
    provider: params.provider || '',
    status: STATUSES.includes(params.status || '') ? params.status || '' : '',
    limit: LIMITS.includes(Number(params.limit)) ? Number(params.limit) : 100,
    live: params.live !== '0',
  };
  let destroyed = false;
  const sync = () => ctx.setParams({ provider: st.provider, status: st.status, limit: st.limit === 100 ? '' : st.limit, live: st.live ? '' : '0' });

  const providerSel = h('select', { class: 'select', id: 'req-provider' }, h('option', { value: '' }, t('req.all_providers')));
  providerSel.addEventListener('change', () => {
    st.provider = providerSel.value;
    sync();
    poll.now();
  });
  const statusSel = select(
    STATUSES.map((s) => [s, t(STATUS_LABEL[s])]),
    st.status,
    (v) => {
      st.status = v;
      sync();
      poll.now();
    },
    { id: 'req-status' },
  );
  const limitSel = select(
    LIMITS.map((n) => [n, String(n)]),
    st.limit,
    (v) => {
      st.limit = Number(v);
      sync();
      poll.now();
    },
    { id: 'req-limit' },
  );
  const live = h('input', { type: 'checkbox', id: 'req-live', checked: st.live });
  live.addEventListener('change', () => {
    st.live = live.checked;
    sync();
    if (st.live) poll.now();
  });
  const count = h('span', { class: 'muted toolbar-note' });
  const toolbar = h(
    'div',
    { class: 'card toolbar-card' },
    h(
      'div',
      { class: 'toolbar' },
      h(
        'div',
        { class: 'toolbar-filters' },
        h('label', { class: 'field field-inline' }, h('span', { class: 'field-label' }, t('req.col.provider')), providerSel),
        h('label', { class: 'field field-inline' }, h('span', { class: 'field-label' }, t('req.status')), statusSel),
        h('label', { class: 'field field-inline' }, h('span', { class: 'field-label' }, t('req.limit')), limitSel),
      ),
      h('div', { class: 'toolbar-actions' }, count, h('label', { class: 'check', for: 'req-live' }, live, h('span', null, t('req.live')))),
    ),
  );
  const body = h('section', { class: 'card table-card' }, h('p', { class: 'loading' }, t('common.loading')));
  root.append(pageHeader(t('req.title'), t('req.subtitle')), toolbar, body);

  const cols = ['time', 'provider', 'model', 'route', 'key', 'status', 'latency', 'retries', 'path', 'error'];
  const tbody = h('tbody');
  const rowCache = new Map(); // identity of a logged request → its <tr>
  const wrap = h(
    'div',
    { class: 'table-wrap' },
    h('table', { class: 'table rtable req-table' }, h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: `col-${c}` }, t(`req.col.${c}`))))), tbody),
  );
  function render(list) {
    count.textContent = t('req.shown', { n: fmtInt(list.length) });
    if (!list.length) {
      const filtered = st.provider || st.status;
      body.replaceChildren(
        filtered ? emptyState(null, t('req.empty_filtered')) : emptyState(t('req.empty_title'), t('req.empty'), h('a', { class: 'btn btn-primary', href: '#/connect' }, t('nav.connect'))),
      );
      return;
    }
    const seen = new Map();
    const rows = list.map((r) => {
      const base = JSON.stringify(r);
      const n = (seen.get(base) || 0) + 1;
      seen.set(base, n);
      const id = `${base}#${n}`;
      let tr = rowCache.get(id);
      if (!tr) {
        tr = row(r);
        rowCache.set(id, tr);
      }
      return [id, tr];
    });
    const keep = new Set(rows.map(([id]) => id));
    for (const id of rowCache.keys()) if (!keep.has(id)) rowCache.delete(id);
    rows.forEach(([, tr], i) => {
      if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
    });
    while (tbody.children.length > rows.length) tbody.lastChild.remove();
    if (body.firstChild !== wrap || body.childNodes.length !== 1) body.replaceChildren(wrap);
  }

  function row(r) {
    const td = (col, ...kids) => h('td', { class: `col-${col}`, dataset: { label: t(`req.col.${col}`) } }, kids);
    const blank = (el, yes) => {
      if (yes) el.classList.add('is-blank');
      return el;
    };
    return h(
      'tr',
      null,
      td('time', h('time', { title: fmtDateTime(r.ts) }, fmtTime(r.ts))),
      td('provider', r.provider || ''),
      td('model', r.model ? h('code', { class: 'mono' }, r.model) : h('span', { class: 'muted' }, t('common.none'))),
      blank(td('route', r.route ? h('code', { class: 'mono route' }, r.route) : h('span', { class: 'muted' }, t('common.none'))), !r.route),
      td(
        'key',
        r.key ? h('code', { class: 'mono' }, r.key) : h('span', { class: 'muted' }, t('common.none')),
        r.client_name ? h('div', { class: 'muted req-client', title: t('req.client') }, r.client_name) : null,
      ),
      td('status', badge(r.status ? String(r.status) : t('keys.unreachable'), statusKind(r.status))),
      td('latency', h('span', { class: 'num' }, fmtMs(r.latency_ms))),
      blank(td('retries', h('span', { class: `num${r.retries ? ' is-retry' : ''}` }, fmtInt(r.retries || 0))), !r.retries),
      td(
        'path',
        h('code', { class: 'mono path' }, `${r.method || ''} ${r.path || ''}`.trim()),
        // a request that changed API family on the way (anthropic→openai, …)
        r.translated ? badge(r.translated, 'neutral', 'translated', t('req.translated')) : null,
      ),
      blank(td('error', r.error ? errorText(r.error) : h('span', { class: 'muted' }, t('common.none'))), !r.error),
    );
  }

  let first = true;
  const poll = poller(async () => {
    if (!first && !st.live) return;
    first = false;
    try {
      const data = await api('GET', `/api/requests${qs({ provider: st.provider, status: st.status, limit: st.limit })}`);
      if (!destroyed) render((data && data.requests) || []);
    } catch (err) {
      if (err.status === 401 || destroyed) return;
      body.replaceChildren(h('p', { class: 'banner banner-error', role: 'alert' }, err.message));
    }
  }, 3000);
  const origNow = poll.now;
  poll.now = () => {
    first = true;
    origNow();
  };

  ctx
    .loadProviders()
    .then((list) => {
      if (destroyed) return;
      for (const p of list) providerSel.append(h('option', { value: p.name, selected: p.name === st.provider }, p.name));
      providerSel.value = st.provider;
    })
    .catch(() => {});

  return {
    destroy() {
      destroyed = true;
      poll.stop();
    },
  };
}
