// Models: what the unified endpoint (/v1) serves. Aliases and groups (editable: PUT/DELETE
// /api/models/{name}, applied at once on every instance) and every listed provider's models,
// as /v1/models shows them (the default provider's plain, the others as provider/model).

import { api, enc } from '../api.js';
import { badge, confirmDialog, emptyState, h, openDialog, pageHeader, toast } from '../dom.js';
import { t } from '../i18n.js';

const STRATEGIES = ['alias', 'fallback', 'spread'];

function editForm(entry, close) {
  const editing = Boolean(entry);
  const name = h('input', { type: 'text', class: 'input mono', id: 'mf-name', value: editing ? entry.name : '', maxlength: 200, required: true, readonly: editing, autofocus: !editing });
  const strategy = h(
    'select',
    { class: 'select', id: 'mf-strategy' },
    STRATEGIES.map((s) => h('option', { value: s, selected: (entry ? entry.strategy : 'alias') === s }, t(`models.strategy.${s}`))),
  );
  const written = entry ? (typeof entry.spec === 'string' ? [entry.spec] : entry.spec.targets || []) : [];
  const targets = h('textarea', { class: 'input mono', id: 'mf-targets', rows: 4, placeholder: 'groq/llama-3.1-8b-instant\ncerebras/llama3.1-8b', autofocus: editing }, written.join('\n'));
  const msg = h('p', { class: 'form-msg form-msg-error', role: 'alert', id: 'mf-error', hidden: true });
  const fail = (text) => {
    msg.textContent = text;
    msg.hidden = false;
  };
  return h(
    'form',
    {
      class: 'modal-body',
      onsubmit: async (ev) => {
        ev.preventDefault();
        msg.hidden = true;
        const list = targets.value.split(/[\n,]+/).map((s) => s.trim()).filter(Boolean);
        const n = name.value.trim();
        if (!n) return fail(t('models.need_name'));
        if (!list.length) return fail(t('models.need_target'));
        if (strategy.value === 'alias' && list.length > 1) return fail(t('models.alias_one'));
        const body = strategy.value === 'alias' ? { target: list[0] } : { strategy: strategy.value, targets: list };
        try {
          await api('PUT', `/api/models/${enc(n)}`, body);
        } catch (err) {
          if (err.status === 401) return close(null);
          return fail(err.message);
        }
        close(n);
      },
    },
    h('h2', { class: 'modal-title' }, editing ? t('models.edit', { name: entry.name }) : t('models.new')),
    h('label', { class: 'field' }, h('span', { class: 'field-label' }, t('models.name')), name, h('span', { class: 'field-help' }, t('models.name_help'))),
    h('label', { class: 'field' }, h('span', { class: 'field-label' }, t('models.strategy')), strategy, h('span', { class: 'field-help' }, t('models.strategy_help'))),
    h('label', { class: 'field' }, h('span', { class: 'field-label' }, t('models.targets')), targets, h('span', { class: 'field-help' }, t('models.targets_help'))),
    msg,
    h(
      'div',
      { class: 'modal-actions' },
      h('button', { type: 'button', class: 'btn', onclick: () => close(null) }, t('common.cancel')),
      h('button', { type: 'submit', class: 'btn btn-primary', id: 'mf-save' }, t('common.save')),
    ),
  );
}

export function mount(root, params, ctx) {
  let destroyed = false;
  const addBtn = h('button', { type: 'button', class: 'btn btn-primary', id: 'models-add', onclick: () => edit(null) }, t('models.new'));
  const routes = h('section', { class: 'card table-card', id: 'models-routes' }, h('p', { class: 'loading' }, t('common.loading')));
  const providers = h('section', { class: 'card', id: 'models-providers' });
  root.append(pageHeader(t('models.title'), t('models.subtitle'), addBtn), routes, providers);

  async function edit(entry) {
    const saved = await openDialog((close) => editForm(entry, close), { className: 'modal-wide' });
    if (saved) {
      toast(t('models.saved', { name: saved }), 'ok');
      load();
    }
  }

  async function remove(entry) {
    const yes = await confirmDialog({ title: t('models.delete_title', { name: entry.name }), body: entry.source === 'config' ? t('models.delete_config') : t('models.delete_body'), confirm: t('common.delete'), danger: true });
    if (!yes) return;
    try {
      await api('DELETE', `/api/models/${enc(entry.name)}`);
      toast(t('models.deleted', { name: entry.name }), 'ok');
    } catch (err) {
      if (err.status !== 401) toast(err.message, 'error');
    }
    load();
  }

  function renderRoutes(data) {
    const list = Object.values(data.routes || {});
    if (!list.length) {
      routes.replaceChildren(h('h2', { class: 'card-title' }, t('models.routes')), emptyState(t('models.empty_title'), t('models.empty')));
      return;
    }
    const td = (col, ...kids) => h('td', { class: `col-${col}`, dataset: { label: t(`models.col.${col}`) } }, kids);
    routes.replaceChildren(
      h('h2', { class: 'card-title' }, t('models.routes')),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table rtable models-table' },
          h('thead', null, h('tr', null, ['name', 'strategy', 'targets', 'source', 'actions'].map((c) => h('th', { scope: 'col', class: `col-${c}` }, t(`models.col.${c}`))))),
          h(
            'tbody',
            null,
            list.map((r) =>
              h(
                'tr',
                { dataset: { model: r.name } },
                td('name', h('code', { class: 'mono' }, r.name)),
                td('strategy', badge(t(`models.strategy.${r.strategy}`), r.strategy === 'alias' ? 'info' : 'ok')),
                td('targets', h('ol', { class: 'target-list' }, r.targets.map((x) => h('li', null, h('code', { class: 'mono' }, x))))),
                td('source', t(`models.source.${r.source}`)),
                td(
                  'actions',
                  h('button', { type: 'button', class: 'btn btn-sm', onclick: () => edit(r), 'aria-label': `${t('common.edit')}: ${r.name}` }, t('common.edit')),
                  h('button', { type: 'button', class: 'btn btn-sm btn-danger', onclick: () => remove(r), 'aria-label': `${t('common.delete')}: ${r.name}` }, t('common.delete')),
                ),
              ),
            ),
          ),
        ),
      ),
    );
  }

  function renderProviders(data) {
    const entries = Object.entries(data.providers || {});
    providers.replaceChildren(
      h('h2', { class: 'card-title' }, t('models.by_provider')),
      h('p', { class: 'muted' }, t('models.by_provider_hint', { name: data.default_provider })),
      ...entries.map(([name, p]) =>
        h(
          'div',
          { class: 'provider-models', dataset: { provider: name } },
          h('h3', { class: 'snippet-title' }, name, p.default ? badge(t('models.default'), 'info') : null),
          p.models.length
            ? h('div', { class: 'chips' }, p.models.map((m) => h('code', { class: 'mono chip' }, p.default ? m : `${name}/${m}`)))
            : h('p', { class: 'muted' }, !p.keys ? t('models.no_keys') : p.fetched ? t('models.none') : t('models.not_fetched')),
          p.error ? h('p', { class: 'muted field-error' }, t('models.fetch_error', { error: p.error })) : null,
        ),
      ),
    );
  }

  async function load() {
    try {
      const data = await api('GET', '/api/models');
      if (destroyed) return;
      renderRoutes(data);
      renderProviders(data);
    } catch (err) {
      if (err.status === 401 || destroyed) return;
      routes.replaceChildren(h('p', { class: 'banner banner-error', role: 'alert' }, err.message));
    }
  }
  load();

  return {
    destroy() {
      destroyed = true;
    },
  };
}
