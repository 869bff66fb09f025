// Client keys (SPEC §13): issue one (its key is shown once, with a copy button), see each
// client's usage today / this month with a small per-minute chart of the last hour, disable,
// enable and delete. Refreshes every 3 s.

import { api, enc } from '../api.js';
import { Spark } from '../chart.js';
import { badge, confirmDialog, copyText, emptyState, fmtAgo, fmtDateTime, fmtInt, h, icon, openDialog, pageHeader, poller, toast } from '../dom.js';
import { t } from '../i18n.js';

const LIMITS = ['rpm', 'rpd', 'tpd', 'monthly_tokens'];

function list(text) {
  return text
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
}

// Requests per minute over the last hour: a small uPlot bar chart (chart.js), kept while the
// numbers stay the same (the view re-renders every 3 s; a chart is made again only when its
// minute counts change).
function spark(values) {
  return new Spark(values, { label: t('clients.spark', { n: fmtInt(values.reduce((a, b) => a + (Number(b) || 0), 0)) }) });
}

function limitsText(c) {
  const parts = LIMITS.filter((k) => c[k] != null).map((k) => `${t(`clients.lim.${k}`)} ${fmtInt(c[k])}`);
  return parts.length ? parts.join(' · ') : t('clients.no_limits');
}

function listsText(c) {
  const parts = [];
  if (c.providers && c.providers.length) parts.push(`${t('clients.providers')}: ${c.providers.join(', ')}`);
  if (c.models && c.models.length) parts.push(`${t('clients.models')}: ${c.models.join(', ')}`);
  return parts.length ? parts.join(' · ') : t('clients.any_model');
}

function statusBadge(status) {
  return badge(t(`clients.status.${status}`), status === 'active' ? 'ok' : status === 'expired' ? 'warn' : 'neutral', 'client-status');
}

function createForm(close) {
  const field = (id, label, props = {}) => {
    const input = h('input', { class: 'input', id, name: id, ...props });
    return [input, h('label', { class: 'field', for: id }, h('span', { class: 'field-label' }, label), input)];
  };
  const [name, nameField] = field('client-name', t('clients.name'), { required: true, maxlength: 100, autofocus: true, autocomplete: 'off' });
  const limitInputs = {};
  const limitFields = LIMITS.map((k) => {
    const [input, f] = field(`client-${k}`, t(`clients.lim.${k}`), { type: 'number', min: 0, step: 1, inputmode: 'numeric', placeholder: t('clients.unlimited') });
    limitInputs[k] = input;
    return f;
  });
  const [providers, providersField] = field('client-providers', t('clients.providers'), { placeholder: 'groq, cerebras' });
  const [models, modelsField] = field('client-models', t('clients.models'), { placeholder: 'gpt-4o, groq/*' });
  const [expires, expiresField] = field('client-expires', t('clients.expires'), { type: 'datetime-local' });
  const msg = h('p', { class: 'form-msg form-msg-error', hidden: true, role: 'alert' });
  const submit = h('button', { type: 'submit', class: 'btn btn-primary', id: 'client-create' }, t('clients.create'));
  return h(
    'form',
    {
      class: 'modal-body client-form',
      onsubmit: async (ev) => {
        ev.preventDefault();
        const doc = { name: name.value.trim() };
        for (const k of LIMITS) if (limitInputs[k].value !== '') doc[k] = Number(limitInputs[k].value);
        if (providers.value.trim()) doc.providers = list(providers.value);
        if (models.value.trim()) doc.models = list(models.value);
        if (expires.value) doc.expires_at = new Date(expires.value).getTime() / 1000;
        submit.disabled = true;
        try {
          close(await api('POST', '/api/clients', doc));
        } catch (err) {
          msg.textContent = err.message;
          msg.hidden = false;
        } finally {
          submit.disabled = false;
        }
      },
    },
    h('h2', { class: 'modal-title' }, t('clients.new')),
    nameField,
    h('div', { class: 'client-limits' }, limitFields),
    providersField,
    modelsField,
    h('p', { class: 'field-help' }, t('clients.lists_hint')),
    expiresField,
    msg,
    h('div', { class: 'modal-actions' }, h('button', { type: 'button', class: 'btn', onclick: () => close(null) }, t('common.cancel')), submit),
  );
}

function showKey(created) {
  return openDialog((close) => {
    const input = h('input', { class: 'input mono', id: 'client-new-key', value: created.key, readOnly: true, 'aria-label': t('clients.key') });
    input.addEventListener('focus', () => input.select());
    return h(
      'div',
      { class: 'modal-body' },
      h('h2', { class: 'modal-title' }, t('clients.key_title', { name: created.client.name })),
      h('p', { class: 'modal-text' }, t('clients.key_once')),
      h(
        'div',
        { class: 'copy-row' },
        input,
        h('button', { type: 'button', class: 'btn btn-primary', id: 'client-copy-key', onclick: () => copyText(created.key) }, icon('copy'), t('common.copy')),
      ),
      h('div', { class: 'modal-actions' }, h('button', { type: 'button', class: 'btn', id: 'client-key-done', autofocus: true, onclick: () => close(true) }, t('clients.done'))),
    );
  });
}

export function mount(root, params, ctx) {
  let destroyed = false;
  const addBtn = h('button', { type: 'button', class: 'btn btn-primary', id: 'client-add', onclick: () => create() }, icon('plus'), t('clients.new'));
  const body = h('section', { class: 'card table-card' }, h('p', { class: 'loading' }, t('common.loading')));
  root.append(pageHeader(t('clients.title'), t('clients.subtitle'), addBtn), body);

  async function create() {
    const created = await openDialog((close) => createForm(close), { className: 'modal-wide' });
    if (!created) return;
    await showKey(created);
    poll.now();
  }

  async function toggle(c) {
    try {
      await api('PATCH', `/api/clients/${enc(c.id)}`, { enabled: !c.enabled });
      toast(t(c.enabled ? 'clients.disabled_toast' : 'clients.enabled_toast', { name: c.name }), 'ok');
    } catch (err) {
      toast(err.message, 'error');
    }
    poll.now();
  }

  async function remove(c) {
    const yes = await confirmDialog({ title: t('clients.delete_title', { name: c.name }), body: t('clients.delete_body'), confirm: t('keys.delete'), danger: true });
    if (!yes) return;
    try {
      await api('DELETE', `/api/clients/${enc(c.id)}`);
    } catch (err) {
      toast(err.message, 'error');
    }
    poll.now();
  }

  const cols = ['name', 'status', 'limits', 'today', 'month', 'chart', 'last', 'actions'];
  const sparks = new Map(); // client id → { key, chart }
  function sparkFor(c) {
    const values = c.timeline && c.timeline.length ? c.timeline : new Array(60).fill(0);
    const id = String(c.id);
    const key = `${Math.floor(Date.now() / 60_000)}|${values.join(',')}`; // the hover reads times
    const was = sparks.get(id);
    if (was && was.key === key) return was.chart;
    if (was) was.chart.destroy();
    const chart = spark(values);
    sparks.set(id, { key, chart });
    return chart;
  }
  function dropSparks(keep) {
    for (const [id, was] of sparks) {
      if (!keep.has(id)) {
        was.chart.destroy();
        sparks.delete(id);
      }
    }
  }
  function row(c) {
    const td = (col, ...kids) => h('td', { class: `col-${col}`, dataset: { label: t(`clients.col.${col}`) } }, kids);
    const u = c.usage || {};
    const today = u.today || {};
    const month = u.month || {};
    return h(
      'tr',
      { dataset: { client: String(c.id) } },
      td('name', h('div', { class: 'client-name' }, c.name), h('code', { class: 'mono muted' }, c.masked)),
      td('status', statusBadge(c.status), c.expires_at ? h('div', { class: 'muted small' }, t('clients.expires_on', { when: fmtDateTime(c.expires_at) })) : null),
      td('limits', h('div', null, limitsText(c)), h('div', { class: 'muted small' }, listsText(c))),
      td(
        'today',
        h('span', { class: 'num client-today' }, fmtInt(today.requests || 0)),
        h('div', { class: 'muted small' }, t('clients.tokens', { n: fmtInt((today.tokens_in || 0) + (today.tokens_out || 0)) })),
        today.errors ? h('div', { class: 'muted small' }, t('clients.errors', { n: fmtInt(today.errors) })) : null,
      ),
      td('month', h('span', { class: 'num' }, fmtInt(month.requests || 0)), h('div', { class: 'muted small' }, t('clients.tokens', { n: fmtInt((month.tokens_in || 0) + (month.tokens_out || 0)) }))),
      td('chart', sparkFor(c).el),
      td('last', c.last_used ? h('time', { title: fmtDateTime(c.last_used) }, fmtAgo(c.last_used)) : h('span', { class: 'muted' }, t('common.none'))),
      td(
        'actions',
        h(
          'div',
          { class: 'row-actions' },
          h('button', { type: 'button', class: 'btn btn-sm btn-toggle', onclick: () => toggle(c) }, t(c.enabled ? 'clients.disable' : 'clients.enable')),
          h('button', { type: 'button', class: 'btn btn-sm btn-danger-ghost btn-delete', onclick: () => remove(c) }, t('keys.delete')),
        ),
      ),
    );
  }

  function render(clients) {
    dropSparks(new Set(clients.map((c) => String(c.id))));
    if (!clients.length) {
      body.replaceChildren(emptyState(t('clients.empty_title'), t('clients.empty'), h('button', { type: 'button', class: 'btn btn-primary', onclick: () => create() }, t('clients.new'))));
      return;
    }
    body.replaceChildren(
      h(
        'div',
        { class: 'table-wrap' },
        h('table', { class: 'table rtable clients-table' }, h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: `col-${c}` }, t(`clients.col.${c}`))))), h('tbody', null, clients.map(row))),
      ),
    );
  }

  const poll = poller(async () => {
    try {
      const data = await api('GET', '/api/clients');
      if (!destroyed) render((data && data.clients) || []);
    } catch (err) {
      if (err.status === 401 || destroyed) return;
      body.replaceChildren(h('p', { class: 'banner banner-error', role: 'alert' }, err.message));
    }
  }, 3000);

  return {
    destroy() {
      destroyed = true;
      poll.stop();
      dropSparks(new Set());
    },
  };
}
