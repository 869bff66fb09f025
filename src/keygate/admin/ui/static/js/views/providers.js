// Providers: a table of every provider's upstream and limits; "Edit" opens a form that checks
// values in the browser first, sends only what changed (PATCH) and shows the server's 400
// message when it disagrees. The gateway applies changes at once.

import { api, enc } from '../api.js';
import { badge, emptyState, fill, fmtInt, fmtNum, h, openDialog, pageHeader, toast } from '../dom.js';
import { t } from '../i18n.js';
import { stateChips } from './dashboard.js';

// name → kind: 'url' | 'float' | 'int' | 'pos' (float > 0) | 'text' | 'bool' | 'rules' (JSON list)
const FIELDS = {
  base_url: 'url',
  rps: 'float',
  burst: 'int',
  max_conn: 'int',
  queue: 'int',
  queue_timeout_s: 'float',
  retries: 'int',
  default_model: 'text',
  force_model: 'bool',
  backoff_base_s: 'float',
  retry_after_max_s: 'float',
  cooldown_s: 'float',
  exhausted_cooldown_s: 'float',
  recheck_interval_s: 'float',
  key_rpm: 'int',
  key_rph: 'int',
  key_rpd: 'int',
  key_tpm: 'int',
  key_tph: 'int',
  key_tpd: 'int',
  key_max_conn: 'int',
  quota_day_reset: 'text',
  default_max_tokens: 'int',
  timeout_connect_s: 'pos',
  timeout_first_byte_s: 'pos',
  timeout_idle_s: 'pos',
  max_body_mb: 'pos',
  error_rules: 'rules',
};
const GROUPS = [
  ['prov.group.upstream', ['base_url']],
  ['prov.group.limits', ['rps', 'burst', 'max_conn', 'queue', 'queue_timeout_s', 'retries']],
  ['prov.group.models', ['default_model', 'force_model']],
];
const ADVANCED = [
  'backoff_base_s',
  'retry_after_max_s',
  'cooldown_s',
  'exhausted_cooldown_s',
  'recheck_interval_s',
  'key_rpm',
  'key_rph',
  'key_rpd',
  'key_tpm',
  'key_tph',
  'key_tpd',
  'key_max_conn',
  'quota_day_reset',
  'default_max_tokens',
  'timeout_connect_s',
  'timeout_first_byte_s',
  'timeout_idle_s',
  'max_body_mb',
];

// Returns [value, errorKey|null] for one raw form value.
export function checkField(name, raw) {
  const kind = FIELDS[name];
  if (kind === 'bool') return [Boolean(raw), null];
  const s = String(raw).trim();
  if (kind === 'rules') {
    // the list's shape here; each rule's own checks are the server's (its 400 names the rule)
    try {
      const rules = JSON.parse(s || '[]');
      const ok = Array.isArray(rules) && rules.every((r) => r && typeof r === 'object' && !Array.isArray(r));
      return ok ? [rules, null] : [s, 'v.rules'];
    } catch {
      return [s, 'v.rules'];
    }
  }
  if (kind === 'text') return [s, null];
  if (kind === 'url') return /^https?:\/\/[^/\s]+\S*$/i.test(s) ? [s.replace(/\/+$/, ''), null] : [s, 'v.url'];
  if (s === '' || !/^[0-9]*\.?[0-9]+(e[+-]?[0-9]+)?$/i.test(s)) return [s, kind === 'int' ? 'v.integer' : 'v.number'];
  const n = Number(s);
  if (!Number.isFinite(n) || n < 0) return [s, kind === 'int' ? 'v.integer' : 'v.number'];
  if (kind === 'int' && !Number.isInteger(n)) return [s, 'v.integer'];
  if (kind === 'pos' && n <= 0) return [s, 'v.positive'];
  return [n, null];
}

// A rule list as the form shows it: one rule a line.
function showRules(rules) {
  if (!Array.isArray(rules) || !rules.length) return '[]';
  return `[\n${rules.map((r) => `  ${JSON.stringify(r)}`).join(',\n')}\n]`;
}

function editForm(p, close, onSaved) {
  const inputs = new Map();
  const errors = new Map();
  const formMsg = h('p', { class: 'form-msg form-msg-error', role: 'alert', hidden: true });
  const saveBtn = h('button', { type: 'submit', class: 'btn btn-primary', id: 'prov-save' }, t('common.save'));

  const field = (name) => {
    const kind = FIELDS[name];
    const id = `pf-${name}`;
    const err = h('span', { class: 'field-error', id: `${id}-err`, hidden: true });
    errors.set(name, err);
    const helpKey = `f.${name}.help`;
    const help = t(helpKey) !== helpKey ? h('span', { class: 'field-help' }, t(helpKey)) : null;
    if (kind === 'bool') {
      const input = h('input', { type: 'checkbox', id, name, checked: Boolean(p[name]) });
      inputs.set(name, input);
      return h('div', { class: 'field field-check' }, h('label', { for: id }, input, h('span', null, t(`f.${name}`))), err);
    }
    const attrs = { class: 'input', id, name, 'aria-describedby': `${id}-err`, autocomplete: 'off', spellcheck: 'false' };
    if (kind === 'rules') {
      attrs.class = 'input mono';
      attrs.rows = 4;
    } else if (kind === 'url' || kind === 'text') attrs.type = 'text';
    else {
      attrs.type = 'text';
      attrs.inputmode = kind === 'int' ? 'numeric' : 'decimal';
    }
    const input = h(kind === 'rules' ? 'textarea' : 'input', attrs);
    input.value = kind === 'rules' ? showRules(p[name]) : p[name] == null ? '' : String(p[name]);
    input.addEventListener('input', () => {
      input.classList.remove('is-invalid');
      err.hidden = true;
    });
    input.addEventListener('blur', () => validate(name));
    inputs.set(name, input);
    return h('label', { class: `field field-${kind}`, for: id }, h('span', { class: 'field-label' }, t(`f.${name}`)), input, help, err);
  };

  function validate(name) {
    const input = inputs.get(name);
    const raw = FIELDS[name] === 'bool' ? input.checked : input.value;
    const [value, errKey] = checkField(name, raw);
    const err = errors.get(name);
    if (errKey) {
      input.classList.add('is-invalid');
      input.setAttribute('aria-invalid', 'true');
      err.textContent = t(errKey);
      err.hidden = false;
    } else {
      input.classList.remove('is-invalid');
      input.removeAttribute('aria-invalid');
      err.hidden = true;
    }
    return [value, errKey];
  }

  async function onSubmit(ev) {
    ev.preventDefault();
    formMsg.hidden = true;
    const changes = {};
    let bad = null;
    for (const name of Object.keys(FIELDS)) {
      if (!inputs.has(name)) continue;
      const [value, errKey] = validate(name);
      if (errKey) {
        bad = bad || name;
        continue;
      }
      const old = p[name];
      const same =
        FIELDS[name] === 'rules'
          ? JSON.stringify(old || []) === JSON.stringify(value)
          : FIELDS[name] === 'bool'
            ? Boolean(old) === value
            : typeof value === 'number'
              ? Number(old) === value
              : String(old ?? '') === value;
      if (!same) changes[name] = value;
    }
    if (bad) {
      formMsg.textContent = t('prov.fix');
      formMsg.hidden = false;
      inputs.get(bad).focus();
      return;
    }
    if (!Object.keys(changes).length) {
      toast(t('prov.nochange'), 'info');
      close(null);
      return;
    }
    saveBtn.disabled = true;
    saveBtn.textContent = t('common.saving');
    try {
      const updated = await api('PATCH', `/api/providers/${enc(p.name)}`, changes);
      toast(t('prov.saved', { name: p.name }), 'ok');
      onSaved(updated);
      close(updated);
    } catch (err) {
      if (err.status === 401) {
        close(null);
        return;
      }
      // the server names the field: "rps: must be ≥ 0", "error_rules[1].action: must be one of …"
      const m = /^\s*([a-z_]+)[[:]/.exec(err.message || '');
      const name = (err.param || (m && m[1]) || '').split('[')[0];
      if (name && inputs.has(name) && FIELDS[name] !== 'bool') {
        const input = inputs.get(name);
        input.classList.add('is-invalid');
        const e = errors.get(name);
        e.textContent = err.message;
        e.hidden = false;
        const adv = input.closest('details');
        if (adv) adv.open = true;
        input.focus();
      } else {
        formMsg.textContent = err.message;
        formMsg.hidden = false;
      }
    } finally {
      saveBtn.disabled = false;
      saveBtn.textContent = t('common.save');
    }
  }

  return h(
    'form',
    { class: 'modal-body prov-form', novalidate: true, onsubmit: onSubmit },
    h('div', { class: 'modal-head' }, h('h2', { class: 'modal-title' }, t('prov.edit_title', { name: p.name })), h('code', { class: 'mono muted' }, p.base_url || '')),
    GROUPS.map(([title, names]) => h('fieldset', { class: 'fieldset' }, h('legend', null, t(title)), h('div', { class: `form-grid form-grid-${names.length > 2 ? 'multi' : 'single'}` }, names.map(field)))),
    h('details', { class: 'advanced' }, h('summary', null, t('prov.advanced')), h('div', { class: 'form-grid form-grid-multi' }, ADVANCED.filter((n) => n in p).map(field))),
    'error_rules' in p ? h('details', { class: 'advanced', id: 'prov-rules' }, h('summary', null, t('prov.group.errors'), ` (${(p.error_rules || []).length})`), h('div', { class: 'form-grid form-grid-single' }, field('error_rules'))) : null,
    formMsg,
    h(
      'div',
      { class: 'modal-actions' },
      h('button', { type: 'button', class: 'btn', onclick: () => close(null) }, t('common.cancel')),
      saveBtn,
    ),
  );
}

export function mount(root, params, ctx) {
  let destroyed = false;
  let list = [];
  let showAll = params.all === '1';
  const body = h('div', { class: 'card table-card' }, h('p', { class: 'loading' }, t('common.loading')));
  const toggle = h('input', { type: 'checkbox', id: 'prov-show-all', checked: showAll });
  toggle.addEventListener('change', () => {
    showAll = toggle.checked;
    ctx.setParams({ all: showAll ? '1' : '' });
    render();
  });
  root.append(pageHeader(t('prov.title'), t('prov.subtitle'), h('label', { class: 'check', for: 'prov-show-all' }, toggle, h('span', null, t('prov.show_all')))), body);

  const cols = ['name', 'keys', 'base_url', 'rps', 'burst', 'max_conn', 'queue', 'queue_timeout', 'retries', 'default_model', 'force_model'];

  function render() {
    const visible = list.filter((p) => showAll || (p.keys && p.keys.total > 0) || !p.builtin);
    const shown = visible.length ? visible : list;
    const hiddenCount = list.length - shown.length;
    if (!list.length) {
      body.replaceChildren(emptyState(null, t('prov.empty')));
      return;
    }
    const td = (col, ...kids) => h('td', { class: `col-${col}`, dataset: { label: t(`prov.col.${col}`) } }, kids);
    const rowsEl = shown.map((p) =>
      h(
        'tr',
        { dataset: { provider: p.name } },
        td('name', h('span', { class: 'prov-name' }, p.name), p.builtin ? null : badge(t('prov.custom'), 'neutral')),
        td('keys', h('span', { class: 'keys-total' }, fmtInt((p.keys && p.keys.total) || 0)), stateChips(p.keys || {})),
        td('base_url', h('code', { class: 'mono url', title: p.base_url || '' }, p.base_url || '')),
        td('rps', h('span', { class: 'num', dataset: { field: 'rps' } }, fmtNum(p.rps, 3))),
        td('burst', h('span', { class: 'num', dataset: { field: 'burst' } }, fmtInt(p.burst))),
        td('max_conn', h('span', { class: 'num' }, fmtInt(p.max_conn))),
        td('queue', h('span', { class: 'num' }, fmtInt(p.queue))),
        td('queue_timeout', h('span', { class: 'num' }, `${fmtNum(p.queue_timeout_s, 1)} s`)),
        td('retries', h('span', { class: 'num' }, fmtInt(p.retries))),
        td('default_model', p.default_model ? h('code', { class: 'mono' }, p.default_model) : h('span', { class: 'muted' }, t('prov.not_set'))),
        td('force_model', p.force_model ? badge(t('prov.forced'), 'warn') : h('span', { class: 'muted' }, t('common.none'))),
        h(
          'td',
          { class: 'col-edit' },
          h(
            'button',
            {
              type: 'button',
              class: 'btn btn-sm btn-edit',
              'aria-label': t('prov.edit_title', { name: p.name }),
              onclick: () => edit(p),
            },
            t('prov.edit'),
          ),
        ),
      ),
    );
    fill(body,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table rtable prov-table' },
          h('thead', null, h('tr', null, cols.map((c) => h('th', { scope: 'col', class: `col-${c}` }, t(`prov.col.${c}`))), h('th', { scope: 'col', class: 'col-edit' }, h('span', { class: 'sr-only' }, t('prov.edit'))))),
          h('tbody', null, rowsEl),
        ),
      ),
      hiddenCount
        ? h(
            'p',
            { class: 'table-foot' },
            t('prov.hidden', { n: hiddenCount }),
            ' ',
            h(
              'button',
              {
                type: 'button',
                class: 'link-btn',
                onclick: () => {
                  toggle.checked = true;
                  toggle.dispatchEvent(new Event('change'));
                },
              },
              t('prov.show_them'),
            ),
          )
        : null,
    );
  }

  async function load() {
    try {
      list = await ctx.loadProviders(true);
    } catch (err) {
      if (err.status === 401 || destroyed) return;
      body.replaceChildren(h('p', { class: 'banner banner-error', role: 'alert' }, err.message));
      return;
    }
    if (!destroyed) render();
  }

  async function edit(p) {
    await openDialog((close) => editForm(p, close, () => load()), { className: 'modal-wide' });
  }

  load();
  return {
    destroy() {
      destroyed = true;
    },
  };
}
