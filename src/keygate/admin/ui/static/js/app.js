// keygate admin page: login, the shell (navigation, language, sign-out) and a hash router that
// mounts one view at a time. Views live in ./views/ and own their polling timers.

import { api, setUnauthorizedHandler } from './api.js';
import { h, toast } from './dom.js';
import { applyStatic, getLang, onLangChange, setLang, t } from './i18n.js';
import * as clients from './views/clients.js';
import * as connect from './views/connect.js';
import * as dashboard from './views/dashboard.js';
import * as keys from './views/keys.js';
import * as models from './views/models.js';
import * as providers from './views/providers.js';
import * as requests from './views/requests.js';

const VIEWS = { dashboard, keys, providers, models, clients, requests, connect };
const $ = (id) => document.getElementById(id);

let current = null; // { name, instance }
let signedIn = false;

// ---- shared state for views ------------------------------------------------------------------

const ctx = {
  config: null,
  providers: null,
  async loadConfig() {
    if (!this.config) this.config = await api('GET', '/api/config');
    return this.config;
  },
  async loadProviders(force = false) {
    if (force || !this.providers) {
      const data = await api('GET', '/api/providers');
      this.providers = (data && data.providers) || [];
    }
    return this.providers;
  },
  navigate(view, params = {}) {
    const q = new URLSearchParams(params).toString();
    const hash = `#/${view}${q ? `?${q}` : ''}`;
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  // Records a view's state in the address (so a reload keeps it) without re-mounting.
  setParams(params) {
    const clean = {};
    for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) clean[k] = v;
    const q = new URLSearchParams(clean).toString();
    const name = current ? current.name : 'dashboard';
    history.replaceState(null, '', `#/${name}${q ? `?${q}` : ''}`);
  },
};

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const [name, query] = raw.split('?');
  const params = Object.fromEntries(new URLSearchParams(query || ''));
  return { name: VIEWS[name] ? name : 'dashboard', params };
}

function unmount() {
  if (current && current.instance && current.instance.destroy) current.instance.destroy();
  current = null;
}

function route() {
  if (!signedIn) return;
  const { name, params } = parseHash();
  unmount();
  const root = $('view');
  root.replaceChildren();
  for (const a of document.querySelectorAll('.nav-link')) {
    const on = a.dataset.view === name;
    a.classList.toggle('is-active', on);
    if (on) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  current = { name, instance: VIEWS[name].mount(root, params, ctx) };
  root.focus({ preventScroll: true });
  window.scrollTo(0, 0);
}

// ---- sign-in / sign-out ----------------------------------------------------------------------

function showLogin(message = '', kind = 'error') {
  signedIn = false;
  unmount();
  ctx.config = null;
  ctx.providers = null;
  $('view').replaceChildren();
  $('shell').hidden = true;
  $('boot').hidden = true;
  $('login').hidden = false;
  const msg = $('login-message');
  msg.textContent = message;
  msg.className = `form-msg form-msg-${kind}`;
  msg.hidden = !message;
  const pw = $('login-password');
  pw.value = '';
  pw.focus();
}

function showApp() {
  signedIn = true;
  $('boot').hidden = true;
  $('login').hidden = true;
  $('shell').hidden = false;
  route();
}

function showBootError(err) {
  $('login').hidden = true;
  $('shell').hidden = true;
  const box = $('boot');
  box.hidden = false;
  box.replaceChildren(
    h(
      'div',
      { class: 'boot-card card' },
      h('p', { class: 'boot-error' }, err.status ? t('boot.unavailable', { status: err.status }) : err.message),
      h('button', { class: 'btn btn-primary', type: 'button', onclick: () => start() }, t('boot.retry')),
    ),
  );
}

async function onLogin(ev) {
  ev.preventDefault();
  const btn = $('login-submit');
  const pw = $('login-password');
  const msg = $('login-message');
  if (!pw.value) {
    pw.focus();
    return;
  }
  btn.disabled = true;
  btn.textContent = t('login.signing');
  msg.hidden = true;
  try {
    await api('POST', '/api/session', { password: pw.value }, { quiet401: true });
    pw.value = '';
    showApp();
  } catch (err) {
    msg.textContent = err.status === 401 ? t('login.wrong') : err.message;
    msg.className = 'form-msg form-msg-error';
    msg.hidden = false;
    pw.select();
  } finally {
    btn.disabled = false;
    btn.textContent = t('login.submit');
  }
}

async function onLogout() {
  try {
    await api('DELETE', '/api/session', undefined, { quiet401: true });
  } catch (err) {
    if (err.status !== 401) toast(err.message, 'error');
  }
  showLogin(t('login.signed_out'), 'info');
}

async function start() {
  $('boot').hidden = false;
  $('boot').replaceChildren(h('p', { class: 'boot-loading' }, t('boot.loading')));
  try {
    await api('GET', '/api/session', undefined, { quiet401: true });
    showApp();
  } catch (err) {
    if (err.status === 401) showLogin();
    else showBootError(err);
  }
}

// ---- wiring ----------------------------------------------------------------------------------

function init() {
  applyStatic(document);
  setUnauthorizedHandler(() => {
    if (signedIn) showLogin(t('login.expired'));
  });
  $('login-form').addEventListener('submit', onLogin);
  $('logout').addEventListener('click', onLogout);
  for (const btn of document.querySelectorAll('[data-lang]')) {
    btn.addEventListener('click', () => setLang(btn.dataset.lang));
  }
  onLangChange(() => {
    if (signedIn) route();
  });
  window.addEventListener('hashchange', route);
  document.documentElement.dataset.lang = getLang();
  start();
}

init();
