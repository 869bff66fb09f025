// Keys: one provider at a time, or all of them at once (provider "*": a Provider column shows
// whose each key is); search, state filter and server-side pagination (limit/offset), so
// 100,000 keys cost no more than 50. Rows are updated in place on refresh so buttons do not
// move under the pointer. Add one, batch import, test one/all, enable/disable, delete.

import { api, enc, qs } from '../api.js';
import {
  badge,
  confirmDialog,
  debounce,
  emptyState,
  errorText,
  fill,
  fmtAgo,
  fmtDateTime,
  fmtDuration,
  fmtInt,
  fmtMs,
  h,
  icon,
  openDialog,
  pageHeader,
  poller,
  promptDialog,
  select,
  serverNow,
  stateBadge,
  toast,
} from '../dom.js';
import { localizeProblem } from '../errors.js';
import { t } from '../i18n.js';
import { quotaMeters } from '../quota.js';

const STATES = ['active', 'cooling', 'invalid', 'exhausted', 'disabled'];
const PAGE_SIZES = [25, 50, 100, 200];
const ALL = '*'; // the provider choice that lists every provider's keys
const testResults = new Map(); // key id → last TestResult (kept while the page is open)

function pickProvider(list, wanted, config) {
  const names = list.map((p) => p.name);
  if (wanted === ALL && names.length) return ALL;
  if (wanted && names.includes(wanted)) return wanted;
  const withKeys = list.filter((p) => p.keys && p.keys.total > 0).map((p) => p.name);
  const def = config && config.default_provider;
  if (def && withKeys.includes(def)) return def;
  if (withKeys.length) return withKeys[0];
  if (def && names.includes(def)) return def;
  return names[0] || '';
}

function testBadge(res) {
  if (!res) return null;
  const code = res.status ? String(res.status) : t('keys.unreachable');
  const el = badge(`${code} · ${fmtMs(res.latency_ms)}`, res.ok ? 'ok' : 'bad', 'test-result');
  if (res.error) el.title = res.error;
  el.dataset.status = String(res.status ?? '');
  return el;
}

export function mount(root, params, ctx) {
  const st = {
    provider: params.provider || '',
    status: STATES.includes(params.status) ? params.status : '',
    q: params.q || '',
    limit: PAGE_SIZES.includes(Number(params.limit)) ? Number(params.limit) : 50,
    offset: Math.max(0, Number(params.offset) || 0),
    total: 0,
    loaded: false,
  };
  let destroyed = false;
  let loadSeq = 0;
  const rows = new Map();

  // ---- toolbar ------------------------------------------------------------------------------
  const providerSel = h('select', { class: 'select', id: 'keys-provider' });
  const search = h('input', { class: 'input', type: 'search', id: 'keys-search', placeholder: t('keys.search'), value: st.q, autocomplete: 'off', spellcheck: 'false' });
  const stateSel = select(
    [['', t('keys.all_states')], ...STATES.map((x) => [x, t(`state.${x}`)])],
    st.status,
    (v) => {
      st.status = v;
      st.offset = 0;
      sync();
      load();
    },
    { id: 'keys-state' },
  );
  const addBtn = h('button', { type: 'button', class: 'btn btn-primary', 'aria-expanded': 'false', onclick: () => togglePanel('add') }, icon('plus'), t('keys.add'));
  const batchBtn = h('button', { type: 'button', class: 'btn', 'aria-expanded': 'false', onclick: () => togglePanel('batch') }, icon('upload'), t('keys.batch'));
  const testAllBtn = h('button', { type: 'button', class: 'btn', onclick: () => testAll() }, icon('bolt'), t('keys.test_all'));

  const toolbar = h(
    'div',
    { class: 'toolbar' },
    h(
      'div',
      { class: 'toolbar-filters' },
      h('label', { class: 'field field-inline' }, h('span', { class: 'field-label' }, t('keys.provider')), providerSel),
      h('label', { class: 'field field-inline field-grow' }, h('span', { class: 'field-label' }, t('keys.search_label')), search),
      h('label', { class: 'field field-inline' }, h('span', { class: 'field-label' }, t('keys.state')), stateSel),
    ),
    h('div', { class: 'toolbar-actions' }, addBtn, batchBtn, testAllBtn),
  );

  // ---- add one ------------------------------------------------------------------------------
  const addKey = h('input', { class: 'input mono', id: 'add-key', type: 'text', placeholder: t('keys.add.key_ph'), autocomplete: 'off', spellcheck: 'false', required: true });
  const addLabel = h('input', { class: 'input', id: 'add-label', type: 'text', placeholder: t('keys.add.label_ph'), maxlength: 200, autocomplete: 'off' });
  const addTarget = h('select', { class: 'select', id: 'add-provider' });
  const addTargetField = h('label', { class: 'field', hidden: true }, h('span', { class: 'field-label' }, t('keys.add.provider')), addTarget);
  const addMsg = h('p', { class: 'form-msg', role: 'alert', hidden: true });
  const addSubmit = h('button', { type: 'submit', class: 'btn btn-primary' }, t('keys.add.submit'));
  const addPanel = h(
    'form',
    { class: 'card panel', id: 'add-panel', hidden: true, onsubmit: (ev) => onAdd(ev) },
    h('div', { class: 'panel-head' }, h('h2', { class: 'panel-title' }, t('keys.add')), closeBtn(() => togglePanel(null))),
    h(
      'div',
      { class: 'form-row' },
      addTargetField,
      h('label', { class: 'field field-grow' }, h('span', { class: 'field-label' }, t('keys.add.key')), addKey),
      h('label', { class: 'field' }, h('span', { class: 'field-label' }, t('keys.add.label')), addLabel),
      h('div', { class: 'field field-submit' }, addSubmit),
    ),
    addMsg,
  );

  // ---- batch import -------------------------------------------------------------------------
  const batchText = h('textarea', { class: 'input mono', id: 'batch-input', rows: 6, placeholder: t('keys.batch.ph'), spellcheck: 'false', autocomplete: 'off' });
  const batchSubmit = h('button', { type: 'submit', class: 'btn btn-primary' }, t('keys.batch.submit'));
  const batchMsg = h('p', { class: 'form-msg', role: 'alert', hidden: true });
  const batchResult = h('div', { class: 'batch-result', id: 'batch-result', hidden: true, 'aria-live': 'polite' });
  const batchTarget = h('select', { class: 'select', id: 'batch-provider' });
  const batchTargetField = h('label', { class: 'field field-target', hidden: true }, h('span', { class: 'field-label' }, t('keys.add.provider')), batchTarget);
  const batchPanel = h(
    'form',
    { class: 'card panel', id: 'batch-panel', hidden: true, onsubmit: (ev) => onBatch(ev) },
    h('div', { class: 'panel-head' }, h('h2', { class: 'panel-title' }, t('keys.batch')), closeBtn(() => togglePanel(null))),
    batchTargetField,
    h('label', { class: 'field' }, h('span', { class: 'field-label' }, t('keys.batch.label')), batchText),
    h('p', { class: 'field-help' }, t('keys.batch.hint')),
    h('div', { class: 'panel-actions' }, batchSubmit),
    batchMsg,
    batchResult,
  );

  // ---- table --------------------------------------------------------------------------------
  const cols = ['key', 'provider', 'label', 'state', 'uses', 'quota', 'last_used', 'last_error', 'test', 'actions'];
  const tbody = h('tbody');
  const table = h(
    'table',
    { class: 'table rtable keys-table' },
    h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: `col-${c}` }, t(`keys.col.${c}`))))),
    tbody,
  );
  const tableWrap = h('div', { class: 'table-wrap' }, table);
  const emptyBox = h('div', { class: 'empty-wrap', hidden: true });
  const errorBox = h('div', { class: 'banner banner-error', role: 'alert', hidden: true });
  const loading = h('p', { class: 'loading' }, t('common.loading'));
  const pager = h('div', { class: 'pager' });
  const tableCard = h('section', { class: 'card table-card' }, errorBox, loading, tableWrap, emptyBox, pager);
  tableWrap.hidden = true;

  root.append(pageHeader(t('keys.title'), t('keys.subtitle')), h('div', { class: 'card toolbar-card' }, toolbar), addPanel, batchPanel, tableCard);

  function closeBtn(fn) {
    return h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('common.close'), title: t('common.close'), onclick: fn }, icon('x'));
  }

  function togglePanel(which) {
    const showAdd = which === 'add' && addPanel.hidden;
    const showBatch = which === 'batch' && batchPanel.hidden;
    addPanel.hidden = !showAdd;
    batchPanel.hidden = !showBatch;
    addBtn.setAttribute('aria-expanded', String(showAdd));
    batchBtn.setAttribute('aria-expanded', String(showBatch));
    if (showAdd) addKey.focus();
    if (showBatch) batchText.focus();
  }

  function sync() {
    ctx.setParams({ provider: st.provider, status: st.status, q: st.q, limit: st.limit === 50 ? '' : st.limit, offset: st.offset || '' });
  }

  // ---- providers ----------------------------------------------------------------------------
  let providerList = [];
  function fillProviders(list) {
    providerList = list;
    const count = (p) => Number((p.keys && p.keys.total) || 0);
    const total = list.reduce((a, p) => a + count(p), 0);
    const opts = list.map((p) => h('option', { value: p.name, selected: p.name === st.provider }, `${p.name} (${fmtInt(count(p))})`));
    const all = list.length ? h('option', { value: ALL, selected: st.provider === ALL }, `${t('keys.all_providers')} (${fmtInt(total)})`) : null;
    fill(providerSel, all, opts);
    providerSel.value = st.provider;
    for (const target of [addTarget, batchTarget]) {
      const was = target.value;
      fill(target, list.map((p) => h('option', { value: p.name }, p.name)));
      target.value = list.some((p) => p.name === was) ? was : (list.find((p) => count(p) > 0) || list[0] || { name: '' }).name;
    }
    showMode();
  }

  // every provider at once: the Provider column and the panels' provider choice show
  function showMode() {
    const all = st.provider === ALL;
    table.classList.toggle('show-provider', all);
    addTargetField.hidden = !all;
    batchTargetField.hidden = !all;
  }

  // the provider a new key goes to
  const target = (sel) => (st.provider === ALL ? sel.value : st.provider);

  async function refreshProviders() {
    try {
      fillProviders(await ctx.loadProviders(true));
    } catch {
      /* the table shows errors */
    }
  }

  providerSel.addEventListener('change', () => {
    st.provider = providerSel.value;
    st.offset = 0;
    batchResult.hidden = true;
    showMode();
    sync();
    load();
  });
  search.addEventListener(
    'input',
    debounce(() => {
      if (search.value.trim() === st.q) return;
      st.q = search.value.trim();
      st.offset = 0;
      sync();
      load();
    }, 250),
  );

  // ---- rows ---------------------------------------------------------------------------------
  function td(col, ...children) {
    return h('td', { class: `col-${col}`, dataset: { label: t(`keys.col.${col}`) } }, children);
  }

  function createRow(id) {
    const r = { id, key: null };
    r.masked = h('code', { class: 'mono key-masked' });
    r.rank = h('div', { class: 'key-rank' });
    r.provider = h('span', { class: 'key-provider' });
    r.labelText = h('span', { class: 'key-label' });
    r.labelBtn = h('button', { type: 'button', class: 'icon-btn icon-btn-sm', title: t('keys.edit_label'), 'aria-label': t('keys.edit_label'), onclick: () => editLabel(r) }, icon('pencil'));
    r.state = h('span', { class: 'state-cell' });
    r.uses = td('uses');
    r.quotaBtn = h('button', { type: 'button', class: 'icon-btn icon-btn-sm btn-limits', title: t('keys.limits'), 'aria-label': t('keys.limits'), onclick: () => editLimits(r) }, icon('pencil'));
    r.quotaBody = h('span', { class: 'quota-body' });
    r.quota = td('quota', h('span', { class: 'quota-cell' }, r.quotaBody, r.quotaBtn));
    r.lastUsed = h('span');
    r.lastError = errorText('');
    r.noError = h('span', { class: 'last-error is-empty' }, t('common.none'));
    r.lastErrorCell = td('last_error', r.lastError, r.noError);
    r.test = td('test');
    r.testBtn = h('button', { type: 'button', class: 'btn btn-sm btn-test', onclick: () => testKey(r) }, t('keys.test'));
    r.toggleBtn = h('button', { type: 'button', class: 'btn btn-sm btn-toggle', onclick: () => toggleKey(r) });
    r.delBtn = h('button', { type: 'button', class: 'btn btn-sm btn-danger-ghost btn-delete', onclick: () => deleteKey(r) }, t('keys.delete'));
    r.el = h(
      'tr',
      { dataset: { id: String(id) } },
      td('key', h('span', { class: 'key-cell' }, r.masked, h('span', { class: 'key-id' }, `#${id}`)), r.rank),
      td('provider', r.provider),
      td('label', h('span', { class: 'label-cell' }, r.labelText, r.labelBtn)),
      td('state', r.state),
      r.uses,
      r.quota,
      td('last_used', r.lastUsed),
      r.lastErrorCell,
      r.test,
      td('actions', h('div', { class: 'row-actions' }, r.testBtn, r.toggleBtn, r.delBtn)),
    );
    return r;
  }

  function updateRow(r, k) {
    r.key = k;
    r.el.dataset.status = k.status;
    r.masked.textContent = k.masked || '';
    // tier and weight (SPEC §15): lower tiers are spent first; the weight is the share in one
    r.el.dataset.tier = String(k.tier ?? 0);
    r.rank.textContent = t('keys.rank', { tier: k.tier ?? 0, weight: k.weight ?? 1 });
    r.provider.textContent = k.provider || '';
    r.labelText.textContent = k.label || '';
    r.labelText.classList.toggle('is-empty', !k.label);
    const stateKids = [stateBadge(k.status)];
    const until = Number(k.cooldown_until || 0);
    if ((k.status === 'cooling' || k.status === 'exhausted') && until > serverNow()) {
      stateKids.push(h('span', { class: 'countdown', dataset: { until: String(until) } }, t('keys.time_left', { t: fmtDuration(until - serverNow()) })));
    }
    r.state.replaceChildren(...stateKids);
    r.uses.textContent = fmtInt(k.use_count || 0);
    const gauges = quotaMeters(k.quota, true);
    r.quotaBody.replaceChildren(gauges || h('span', { class: 'is-empty' }, t('quota.none')));
    r.lastUsed.textContent = fmtAgo(k.last_used);
    r.lastUsed.title = k.last_used ? fmtDateTime(k.last_used) : '';
    if (r.lastError.textContent !== (k.last_error || '')) r.lastError.textContent = k.last_error || '';
    r.lastError.hidden = !k.last_error;
    r.noError.hidden = !!k.last_error;
    r.lastErrorCell.classList.toggle('is-blank', !k.last_error);
    const tested = testBadge(testResults.get(k.id));
    r.test.replaceChildren(tested || h('span', { class: 'muted' }, t('common.none')));
    r.test.classList.toggle('is-blank', !tested);
    r.toggleBtn.textContent = k.status === 'disabled' ? t('keys.enable') : t('keys.disable');
  }

  function renderRows(keys) {
    const seen = new Set();
    let prev = null;
    // one provider: grouped by tier, lowest (spent first) on top, the server's order inside each
    const tiered = st.provider !== ALL;
    if (tiered) keys = keys.map((k, i) => [k, i]).sort((a, b) => (a[0].tier ?? 0) - (b[0].tier ?? 0) || a[1] - b[1]).map((p) => p[0]);
    for (const k of keys) {
      let r = rows.get(k.id);
      if (!r) {
        r = createRow(k.id);
        rows.set(k.id, r);
      }
      updateRow(r, k);
      r.el.classList.toggle('tier-start', tiered && !!prev && (prev.key.tier ?? 0) !== (k.tier ?? 0));
      seen.add(k.id);
      const want = prev ? prev.el.nextSibling : tbody.firstChild;
      if (want !== r.el) tbody.insertBefore(r.el, want);
      prev = r;
    }
    for (const [id, r] of rows) {
      if (!seen.has(id)) {
        r.el.remove();
        rows.delete(id);
      }
    }
  }

  function renderEmpty() {
    const filtered = st.q || st.status;
    let box;
    if (filtered) {
      box = emptyState(
        null,
        t('keys.empty_filtered'),
        h(
          'button',
          {
            type: 'button',
            class: 'btn',
            onclick: () => {
              st.q = '';
              st.status = '';
              st.offset = 0;
              search.value = '';
              stateSel.value = '';
              sync();
              load();
            },
          },
          t('keys.clear_filters'),
        ),
      );
    } else if (!st.provider) {
      box = emptyState(null, t('keys.no_provider'));
    } else {
      box = emptyState(
        t('keys.empty_title'),
        t('keys.empty'),
        h('button', { type: 'button', class: 'btn btn-primary', onclick: () => togglePanel('add') }, icon('plus'), t('keys.add')),
        h('button', { type: 'button', class: 'btn', onclick: () => togglePanel('batch') }, icon('upload'), t('keys.batch')),
      );
    }
    emptyBox.replaceChildren(box);
  }

  function renderPager() {
    const { total, limit, offset } = st;
    if (!total) {
      pager.replaceChildren();
      pager.hidden = true;
      return;
    }
    pager.hidden = false;
    const pages = Math.max(1, Math.ceil(total / limit));
    const page = Math.floor(offset / limit) + 1;
    const go = async (o) => {
      st.offset = Math.max(0, Math.min(o, (pages - 1) * limit));
      sync();
      await load();
      // a new page starts at its first row, not where the pager was
      const top = tableCard.getBoundingClientRect().top;
      if (top < 0) window.scrollTo({ top: window.scrollY + top - 72 });
    };
    const from = Math.min(total, offset + 1);
    const to = Math.min(total, offset + limit);
    pager.replaceChildren(
      h('span', { class: 'pager-range', id: 'keys-range' }, t('keys.range', { from: fmtInt(from), to: fmtInt(to), total: fmtInt(total) })),
      h(
        'label',
        { class: 'pager-size' },
        h('span', null, t('keys.page_size')),
        select(
          PAGE_SIZES.map((n) => [n, String(n)]),
          limit,
          (v) => {
            st.limit = Number(v);
            st.offset = 0;
            sync();
            load();
          },
          { class: 'select select-sm' },
        ),
      ),
      h(
        'div',
        { class: 'pager-nav' },
        h('button', { type: 'button', class: 'btn btn-sm', disabled: page <= 1, onclick: () => go(0) }, t('common.first')),
        h('button', { type: 'button', class: 'btn btn-sm', disabled: page <= 1, onclick: () => go(offset - limit) }, t('common.prev')),
        h('span', { class: 'pager-page' }, t('keys.page', { page: fmtInt(page), pages: fmtInt(pages) })),
        h('button', { type: 'button', class: 'btn btn-sm', disabled: page >= pages, onclick: () => go(offset + limit) }, t('common.next')),
        h('button', { type: 'button', class: 'btn btn-sm', disabled: page >= pages, onclick: () => go((pages - 1) * limit) }, t('common.last')),
      ),
    );
  }

  async function load() {
    if (destroyed) return;
    if (!st.provider) {
      loading.hidden = true;
      tableWrap.hidden = true;
      renderEmpty();
      emptyBox.hidden = false;
      return;
    }
    const seq = ++loadSeq;
    let data;
    try {
      const provider = st.provider === ALL ? '' : st.provider;
      data = await api('GET', `/api/keys${qs({ provider, status: st.status, q: st.q, limit: st.limit, offset: st.offset })}`);
    } catch (err) {
      if (seq !== loadSeq || err.status === 401) return;
      loading.hidden = true;
      errorBox.textContent = err.message;
      errorBox.hidden = false;
      return;
    }
    if (seq !== loadSeq || destroyed) return;
    errorBox.hidden = true;
    loading.hidden = true;
    const keys = (data && data.keys) || [];
    st.total = Number((data && data.total) || 0);
    if (!keys.length && st.offset > 0 && st.total > 0) {
      st.offset = Math.floor((st.total - 1) / st.limit) * st.limit;
      sync();
      load();
      return;
    }
    st.loaded = true;
    renderRows(keys);
    tableWrap.hidden = !keys.length;
    emptyBox.hidden = !!keys.length;
    if (!keys.length) renderEmpty();
    renderPager();
  }

  // ---- actions ------------------------------------------------------------------------------
  async function onAdd(ev) {
    ev.preventDefault();
    const key = addKey.value.trim();
    addMsg.hidden = true;
    if (!key) {
      addKey.focus();
      return;
    }
    addSubmit.disabled = true;
    try {
      const body = { provider: target(addTarget), key };
      if (addLabel.value.trim()) body.label = addLabel.value.trim();
      await api('POST', '/api/keys', body);
      addKey.value = '';
      addLabel.value = '';
      toast(t('keys.added', { provider: body.provider }), 'ok');
      st.offset = 0;
      sync();
      await Promise.all([load(), refreshProviders()]);
      addKey.focus();
    } catch (err) {
      if (err.status === 401) return;
      addMsg.textContent = err.message;
      addMsg.className = 'form-msg form-msg-error';
      addMsg.hidden = false;
    } finally {
      addSubmit.disabled = false;
    }
  }

  async function onBatch(ev) {
    ev.preventDefault();
    batchMsg.hidden = true;
    if (!batchText.value.trim()) {
      batchMsg.textContent = t('keys.batch.empty');
      batchMsg.className = 'form-msg form-msg-error';
      batchMsg.hidden = false;
      batchText.focus();
      return;
    }
    batchSubmit.disabled = true;
    batchSubmit.textContent = t('keys.batch.importing');
    try {
      const res = await api('POST', '/api/keys/batch', { provider: target(batchTarget), input: batchText.value });
      showBatch(res || {});
      if ((res && res.added) > 0) batchText.value = '';
      st.offset = 0;
      sync();
      await Promise.all([load(), refreshProviders()]);
    } catch (err) {
      if (err.status === 401) return;
      batchMsg.textContent = err.message;
      batchMsg.className = 'form-msg form-msg-error';
      batchMsg.hidden = false;
    } finally {
      batchSubmit.disabled = false;
      batchSubmit.textContent = t('keys.batch.submit');
    }
  }

  function showBatch(res) {
    const results = res.results || [];
    const shown = results.slice(0, 500);
    const kind = { added: 'ok', duplicate: 'warn', invalid: 'bad' };
    fill(batchResult,
      h('p', { class: 'batch-summary', id: 'batch-summary' }, t('keys.batch.summary', { added: fmtInt(res.added || 0), duplicate: fmtInt(res.duplicate || 0), invalid: fmtInt(res.invalid || 0) })),
      h(
        'ol',
        { class: 'batch-list' },
        shown.map((r) =>
          h(
            'li',
            { class: 'batch-item', dataset: { status: r.status || '' } },
            h('code', { class: 'mono' }, r.input || ''),
            badge(t(`keys.result.${r.status}`), kind[r.status] || 'neutral'),
            r.message ? h('span', { class: 'batch-msg' }, localizeProblem(r.message)) : null,
          ),
        ),
      ),
      results.length > shown.length ? h('p', { class: 'muted' }, t('keys.batch.more', { n: fmtInt(results.length - shown.length) })) : null,
    );
    batchResult.hidden = false;
  }

  async function testKey(r) {
    r.testBtn.disabled = true;
    r.testBtn.textContent = t('keys.testing');
    try {
      const res = await api('POST', `/api/keys/${enc(r.id)}/test`);
      testResults.set(r.id, res);
      if (res && res.key) updateRow(r, res.key);
      else if (r.key) updateRow(r, r.key);
    } catch (err) {
      if (err.status !== 401) toast(err.message, 'error');
    } finally {
      r.testBtn.disabled = false;
      r.testBtn.textContent = t('keys.test');
    }
  }

  async function testAll() {
    if (!st.provider) return;
    testAllBtn.disabled = true;
    const label = testAllBtn.lastChild;
    label.textContent = t('keys.testing_all');
    try {
      const names = st.provider === ALL ? providerList.filter((p) => p.keys && p.keys.total > 0).map((p) => p.name) : [st.provider];
      const results = [];
      for (const name of names) {
        const res = await api('POST', `/api/providers/${enc(name)}/test`);
        results.push(...((res && res.results) || []));
      }
      for (const r of results) testResults.set(r.id, r);
      const ok = results.filter((r) => r.ok).length;
      if (results.length) toast(t('keys.test_all_done', { n: fmtInt(results.length), ok: fmtInt(ok), bad: fmtInt(results.length - ok) }), ok === results.length ? 'ok' : 'warn');
      else toast(t('keys.test_all_none'), 'info');
      await Promise.all([load(), refreshProviders()]);
    } catch (err) {
      if (err.status !== 401) toast(err.message, 'error');
    } finally {
      testAllBtn.disabled = false;
      label.textContent = t('keys.test_all');
    }
  }

  async function toggleKey(r) {
    const next = r.key.status === 'disabled' ? 'active' : 'disabled';
    r.toggleBtn.disabled = true;
    try {
      const k = await api('PATCH', `/api/keys/${enc(r.id)}`, { status: next });
      if (k && k.id != null) updateRow(r, k);
      toast(next === 'disabled' ? t('keys.disabled') : t('keys.enabled'), 'ok');
      refreshProviders();
      if (st.status) load();
    } catch (err) {
      if (err.status !== 401) toast(err.message, 'error');
    } finally {
      r.toggleBtn.disabled = false;
    }
  }

  async function deleteKey(r) {
    const ok = await confirmDialog({
      title: t('keys.confirm_delete_title'),
      body: t('keys.confirm_delete_body', { key: r.key.masked, provider: r.key.provider || st.provider }),
      confirm: t('common.delete'),
      danger: true,
    });
    if (!ok) return;
    try {
      await api('DELETE', `/api/keys/${enc(r.id)}`);
      r.el.remove();
      rows.delete(r.id);
      testResults.delete(r.id);
      toast(t('keys.deleted'), 'ok');
      await Promise.all([load(), refreshProviders()]);
    } catch (err) {
      if (err.status !== 401) toast(err.message, 'error');
    }
  }

  async function editLimits(r) {
    const k = r.key;
    const fields = ['rpm', 'rph', 'rpd', 'tpm', 'tph', 'tpd', 'max_conn', 'tier', 'weight'];
    const low = (f) => (f === 'weight' ? 1 : 0);
    const high = { tier: 1000, weight: 100 };
    const now = (f) => Number(k[f] ?? low(f));
    const values = await openDialog((close) => {
      const inputs = Object.fromEntries(
        fields.map((f, i) => [f, h('input', { type: 'number', min: low(f), max: high[f], step: 1, class: 'input', name: f, value: String(now(f)), autofocus: i === 0 })]),
      );
      return h(
        'form',
        {
          class: 'modal-body limits-form',
          onsubmit: (ev) => {
            ev.preventDefault();
            const out = {};
            for (const f of fields) {
              const n = Number(inputs[f].value || low(f));
              if (!Number.isInteger(n) || n < low(f) || n > (high[f] ?? Infinity)) {
                inputs[f].setCustomValidity(t(f in high ? `v.${f}` : 'v.integer'));
                inputs[f].reportValidity();
                return;
              }
              if (n !== now(f)) out[f] = n;
            }
            close(out);
          },
        },
        h('h2', { class: 'modal-title' }, `${t('keys.limits_title')} · ${k.masked}`),
        h('p', { class: 'modal-text' }, t('keys.limits_hint')),
        h('div', { class: 'limits-grid' }, fields.map((f) => h('label', { class: 'field' }, h('span', { class: 'field-label' }, t(`keys.limit.${f}`)), inputs[f]))),
        h(
          'div',
          { class: 'modal-actions' },
          h('button', { type: 'button', class: 'btn', onclick: () => close(null) }, t('common.cancel')),
          h('button', { type: 'submit', class: 'btn btn-primary' }, t('common.save')),
        ),
      );
    });
    if (!values || !Object.keys(values).length) return;
    try {
      const updated = await api('PATCH', `/api/keys/${enc(r.id)}`, values);
      if (updated && updated.id != null) updateRow(r, updated);
      toast(t('keys.limits_saved'), 'ok');
      if ('tier' in values) await load(); // the key moves to its tier's group
    } catch (err) {
      if (err.status !== 401) toast(err.message, 'error');
    }
  }

  async function editLabel(r) {
    const value = await promptDialog({ title: t('keys.label_title'), label: `${t('keys.col.label')} · ${r.key.masked}`, value: r.key.label || '' });
    if (value === null) return;
    try {
      const k = await api('PATCH', `/api/keys/${enc(r.id)}`, { label: value.trim() });
      if (k && k.id != null) updateRow(r, k);
      toast(t('keys.label_saved'), 'ok');
    } catch (err) {
      if (err.status !== 401) toast(err.message, 'error');
    }
  }

  // ---- countdowns: cooling keys tick every second -------------------------------------------
  let refreshSoon = null;
  const ticker = setInterval(() => {
    for (const el of tbody.querySelectorAll('[data-until]')) {
      const left = Number(el.dataset.until) - serverNow();
      if (left > 0) el.textContent = t('keys.time_left', { t: fmtDuration(left) });
      else {
        el.textContent = t('keys.time_left', { t: fmtDuration(0) });
        if (!refreshSoon) refreshSoon = setTimeout(() => ((refreshSoon = null), poll.now()), 1200);
      }
    }
  }, 1000);

  // ---- start --------------------------------------------------------------------------------
  let poll = { stop() {}, now() {} };
  (async () => {
    let list = [];
    try {
      const [provs, config] = await Promise.all([ctx.loadProviders(true), ctx.loadConfig().catch(() => null)]);
      list = provs;
      st.provider = pickProvider(list, st.provider, config);
    } catch (err) {
      if (err.status === 401) return;
      loading.hidden = true;
      errorBox.textContent = err.message;
      errorBox.hidden = false;
      return;
    }
    if (destroyed) return;
    fillProviders(list);
    sync();
    if (params.add) togglePanel('add');
    else if (params.batch) togglePanel('batch');
    poll = poller(load, 5000);
  })();

  return {
    destroy() {
      destroyed = true;
      poll.stop();
      clearInterval(ticker);
      if (refreshSoon) clearTimeout(refreshSoon);
    },
  };
}
