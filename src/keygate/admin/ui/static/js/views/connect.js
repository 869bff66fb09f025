// Connect: the gateway's endpoints and copy-paste client snippets, all built from the address
// this page was loaded from (location.origin), so they work behind any host name or proxy.

import { h, icon, copyText, pageHeader, select } from '../dom.js';
import { t } from '../i18n.js';

function codeBlock(title, text, id) {
  return h(
    'div',
    { class: 'snippet' },
    h(
      'div',
      { class: 'snippet-head' },
      h('h3', { class: 'snippet-title' }, title),
      h('button', { type: 'button', class: 'btn btn-sm', onclick: () => copyText(text), 'aria-label': `${t('common.copy')}: ${title}` }, icon('copy'), t('common.copy')),
    ),
    h('pre', { class: 'code', id }, h('code', null, text)),
  );
}

function copyRow(label, value, id) {
  return h(
    'div',
    { class: 'copy-row' },
    h('span', { class: 'copy-label' }, label),
    h('code', { class: 'mono copy-value', id }, value),
    h('button', { type: 'button', class: 'icon-btn', title: t('common.copy'), 'aria-label': `${t('common.copy')}: ${label}`, onclick: () => copyText(value) }, icon('copy')),
  );
}

export function mount(root, params, ctx) {
  const origin = location.origin;
  let destroyed = false;
  const unified = h('section', { class: 'card', id: 'conn-unified' }, h('p', { class: 'loading' }, t('common.loading')));
  const endpoints = h('section', { class: 'card' });
  const snippets = h('section', { class: 'card' });
  root.append(pageHeader(t('conn.title'), t('conn.subtitle', { origin })), unified, endpoints, snippets);

  (async () => {
    let config = null;
    let providers = [];
    try {
      [config, providers] = await Promise.all([ctx.loadConfig(), ctx.loadProviders()]);
    } catch (err) {
      if (err.status === 401 || destroyed) return;
      unified.replaceChildren(h('p', { class: 'banner banner-error', role: 'alert' }, err.message));
      return;
    }
    if (destroyed) return;
    const def = (config && config.default_provider) || 'cerebras';
    const adminPath = (config && config.admin_path) || location.pathname;
    const proxyAuth = config ? Boolean(config.proxy_auth) && config.proxy_auth !== 'off' : true;
    const byName = new Map(providers.map((p) => [p.name, p]));
    const isAnthropic = (name) => (byName.get(name) || {}).key_style === 'x-api-key';
    const isGemini = (name) => (byName.get(name) || {}).key_style === 'gemini';
    const chatPath = (name) => (isAnthropic(name) ? '/v1/messages' : '/v1/chat/completions');
    const withKeys = providers.filter((p) => p.keys && p.keys.total > 0).map((p) => p.name);
    const listed = withKeys.length ? withKeys : [def];

    // the one-endpoint setup first: /v1 routes by the model name (SPEC §10)
    const key0 = proxyAuth ? t('conn.password') : 'any';
    const other = withKeys.find((n) => n !== def && !isAnthropic(n));
    const sample = other ? `${other}/${(byName.get(other) || {}).default_model || t('conn.model_ph')}` : (byName.get(def) || {}).default_model || t('conn.model_ph');
    unified.replaceChildren(
      h('h2', { class: 'card-title' }, t('conn.unified')),
      h('p', { class: 'muted' }, t('conn.unified_hint', { base: `${origin}/v1`, name: def })),
      h(
        'div',
        { class: 'copy-rows' },
        copyRow(t('conn.unified_base'), `${origin}/v1`, 'unified-base'),
        copyRow(t('conn.unified_models'), `${origin}/v1/models`, 'unified-models'),
        copyRow(t('conn.unified_messages'), `${origin}/v1/messages`, 'unified-messages'),
      ),
      codeBlock(
        t('conn.unified_python'),
        `from openai import OpenAI\n\nclient = OpenAI(base_url="${origin}/v1", api_key="${key0}")\nprint([m.id for m in client.models.list()])\nresp = client.chat.completions.create(\n    model="${sample}",\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(resp.choices[0].message.content)`,
        'snippet-unified',
      ),
    );

    const rows = [
      [t('conn.default', { name: def }), `${origin}${chatPath(def)}`],
      ...listed.flatMap((name) => [
        [isAnthropic(name) ? t('conn.messages', { name }) : t('conn.chat', { name }), `${origin}/${name}${chatPath(name)}`],
        [t('conn.models', { name }), `${origin}/${name}/v1/models`],
      ]),
      [t('conn.admin'), `${origin}${adminPath}`],
      [t('conn.health'), `${origin}/healthz`],
      [t('conn.openapi'), `${origin}/api/openapi.json`],
    ];
    endpoints.replaceChildren(
      h('h2', { class: 'card-title' }, t('conn.prefix_title')),
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'table rtable endpoints-table' },
          h('thead', null, h('tr', null, h('th', { scope: 'col' }, t('conn.what')), h('th', { scope: 'col' }, t('conn.url')), h('th', { scope: 'col' }, h('span', { class: 'sr-only' }, t('common.copy'))))),
          h(
            'tbody',
            null,
            rows.map(([what, url]) =>
              h(
                'tr',
                null,
                h('td', { class: 'col-what', dataset: { label: t('conn.what') } }, what),
                h('td', { class: 'col-url', dataset: { label: t('conn.url') } }, h('code', { class: 'mono url' }, url)),
                h('td', { class: 'col-copy' }, h('button', { type: 'button', class: 'icon-btn', title: t('common.copy'), 'aria-label': `${t('common.copy')}: ${url}`, onclick: () => copyText(url) }, icon('copy'))),
              ),
            ),
          ),
        ),
      ),
      h('p', { class: `banner ${proxyAuth ? 'banner-info' : 'banner-warn'}` }, proxyAuth ? t('conn.auth_on') : t('conn.auth_off')),
    );

    let chosen = byName.has(params.provider) ? params.provider : withKeys.includes(def) || !withKeys.length ? def : withKeys[0];
    const body = h('div', { class: 'snippets' });
    const names = providers.map((p) => p.name);
    if (!names.includes(chosen)) names.unshift(chosen);
    const picker = select(
      names.map((n) => [n, n]),
      chosen,
      (v) => {
        chosen = v;
        ctx.setParams({ provider: v });
        renderSnippets();
      },
      { id: 'conn-provider' },
    );
    snippets.replaceChildren(
      h('div', { class: 'card-head' }, h('h2', { class: 'card-title' }, t('conn.snippets')), h('label', { class: 'field field-inline' }, h('span', { class: 'field-label' }, t('conn.provider')), picker)),
      body,
    );

    function renderSnippets() {
      const name = chosen;
      const p = byName.get(name) || {};
      const model = p.default_model || t('conn.model_ph');
      const key = proxyAuth ? t('conn.password') : 'any';
      const base = `${origin}/${name}`;
      const blocks = [];
      if (isAnthropic(name)) {
        blocks.push(
          codeBlock(
            t('conn.anthropic'),
            `from anthropic import Anthropic\n\nclient = Anthropic(base_url="${base}", api_key="${key}")\nmsg = client.messages.create(\n    model="${model}",\n    max_tokens=256,\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(msg.content[0].text)`,
            'snippet-python',
          ),
          codeBlock(
            t('conn.curl'),
            `curl ${base}/v1/messages \\\n  -H "x-api-key: ${key}" \\\n  -H "anthropic-version: 2023-06-01" \\\n  -H "content-type: application/json" \\\n  -d '{"model": "${model}", "max_tokens": 256, "messages": [{"role": "user", "content": "Hello"}]}'`,
            'snippet-curl',
          ),
        );
      } else {
        if (isGemini(name)) {
          // google-genai speaks Gemini's native API (models/…:generateContent) to the base URL
          blocks.push(
            codeBlock(
              t('conn.genai'),
              `from google import genai\n\nclient = genai.Client(\n    api_key="${key}",\n    http_options={"base_url": "${base}"},\n)\nresp = client.models.generate_content(\n    model="${model}",\n    contents="Hello",\n)\nprint(resp.text)`,
              'snippet-genai',
            ),
            h('p', { class: 'muted snippet-note' }, t('conn.genai_hint')),
          );
        }
        blocks.push(
          codeBlock(
            t('conn.python'),
            `from openai import OpenAI\n\nclient = OpenAI(base_url="${base}/v1", api_key="${key}")\nresp = client.chat.completions.create(\n    model="${model}",\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(resp.choices[0].message.content)`,
            'snippet-python',
          ),
          codeBlock(
            t('conn.curl'),
            `curl ${base}/v1/chat/completions \\\n  -H "Authorization: Bearer ${key}" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello"}]}'`,
            'snippet-curl',
          ),
          codeBlock(t('conn.env'), `export OPENAI_BASE_URL="${base}/v1"\nexport OPENAI_API_KEY="${key}"`, 'snippet-env'),
          h('h3', { class: 'snippet-title snippet-title-plain' }, t('conn.immersive')),
          h('p', { class: 'muted' }, t('conn.immersive_hint')),
          h(
            'div',
            { class: 'copy-rows' },
            copyRow(t('conn.immersive_url'), `${base}/v1/chat/completions`, 'immersive-url'),
            copyRow(t('conn.immersive_key'), key, 'immersive-key'),
            copyRow(t('conn.immersive_model'), model, 'immersive-model'),
          ),
        );
      }
      body.replaceChildren(...blocks);
    }
    renderSnippets();
  })();

  return {
    destroy() {
      destroyed = true;
    },
  };
}
