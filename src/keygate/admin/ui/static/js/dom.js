// DOM helpers. Everything that comes from the server is inserted as text (textContent / text
// nodes) — never as HTML. h() refuses HTML-ish properties so a mistake fails loudly.

import { t, locale } from './i18n.js';

const PROPS = new Set(['value', 'checked', 'disabled', 'hidden', 'selected', 'open', 'readOnly', 'required']);
const FORBIDDEN = new Set(['innerHTML', 'outerHTML', 'srcdoc', 'style']);

function setProps(el, props) {
  if (!props) return;
  for (const [k, v] of Object.entries(props)) {
    if (v == null || v === false) continue;
    if (FORBIDDEN.has(k)) throw new Error(`h(): ${k} is not allowed`);
    if (k === 'class') el.setAttribute('class', v);
    else if (k === 'text') el.textContent = String(v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k.startsWith('on')) {
      if (typeof v !== 'function') throw new Error(`h(): ${k} must be a function`);
      el.addEventListener(k.slice(2), v);
    } else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

export function append(el, ...children) {
  for (const c of children.flat(Infinity)) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

// Replaces an element's children; null/false children are skipped (replaceChildren would print them).
export function fill(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  return append(el, children);
}

const SVG_NS = 'http://www.w3.org/2000/svg';
export function s(tag, props, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setProps(el, props);
  return append(el, children);
}

export function icon(name) {
  const paths = {
    pencil: 'M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4',
    copy: 'M9 9h10v10H9zM5 15V5h10',
    plus: 'M12 5v14M5 12h14',
    upload: 'M12 16V4M7 9l5-5 5 5M5 20h14',
    bolt: 'M13 3L5 14h6l-1 7 8-11h-6z',
    x: 'M6 6l12 12M18 6L6 18',
    refresh: 'M20 12a8 8 0 1 1-2.3-5.6M20 4v5h-5',
  };
  return s(
    'svg',
    { class: 'icon', viewBox: '0 0 24 24', width: 16, height: 16, 'aria-hidden': 'true', focusable: 'false' },
    s('path', { d: paths[name] || '' }),
  );
}

// ---- formatting ------------------------------------------------------------------------------

export function fmtInt(n) {
  if (n == null || Number.isNaN(Number(n))) return t('common.none');
  return new Intl.NumberFormat(locale()).format(Number(n));
}

export function fmtCompact(n) {
  if (n == null || Number.isNaN(Number(n))) return t('common.none');
  const v = Number(n);
  if (Math.abs(v) < 10000) return fmtInt(v);
  return new Intl.NumberFormat(locale(), { notation: 'compact', maximumFractionDigits: 1 }).format(v);
}

export function fmtNum(n, digits = 2) {
  if (n == null || Number.isNaN(Number(n))) return t('common.none');
  return new Intl.NumberFormat(locale(), { maximumFractionDigits: digits }).format(Number(n));
}

export function fmtPct(part, whole) {
  if (!whole) return new Intl.NumberFormat(locale(), { style: 'percent' }).format(0);
  return new Intl.NumberFormat(locale(), { style: 'percent', maximumFractionDigits: 1 }).format(part / whole);
}

export function fmtMs(ms) {
  if (ms == null || Number.isNaN(Number(ms))) return t('common.none');
  const v = Number(ms);
  if (v >= 10000) return `${fmtNum(v / 1000, 1)} s`;
  if (v >= 1000) return `${fmtNum(v / 1000, 2)} s`;
  return t('time.ms', { n: fmtNum(v, v < 10 ? 1 : 0) });
}

// 75 → "1m 15s", 3725 → "1h 2m", 200000 → "2d 7h"
export function fmtDuration(sec) {
  let v = Math.max(0, Math.round(Number(sec) || 0));
  const zh = locale().startsWith('zh');
  const u = zh ? { d: '天', h: '小时', m: '分', s: '秒' } : { d: 'd', h: 'h', m: 'm', s: 's' };
  const d = Math.floor(v / 86400);
  v -= d * 86400;
  const hh = Math.floor(v / 3600);
  v -= hh * 3600;
  const m = Math.floor(v / 60);
  const ss = v - m * 60;
  const sep = zh ? '' : ' ';
  if (d) return `${d}${u.d}${sep}${hh}${u.h}`;
  if (hh) return `${hh}${u.h}${sep}${m}${u.m}`;
  if (m) return `${m}${u.m}${sep}${String(ss).padStart(2, '0')}${u.s}`;
  return `${ss}${u.s}`;
}

export function fmtTime(epoch, withDate = false) {
  if (!epoch) return t('common.none');
  const d = new Date(epoch * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  const opts = { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false };
  if (withDate || !sameDay) Object.assign(opts, { month: 'short', day: 'numeric' });
  return new Intl.DateTimeFormat(locale(), opts).format(d);
}

export function fmtDateTime(epoch) {
  if (!epoch) return '';
  return new Intl.DateTimeFormat(locale(), { dateStyle: 'medium', timeStyle: 'medium' }).format(new Date(epoch * 1000));
}

export function fmtAgo(epoch) {
  if (!epoch) return t('common.never');
  const diff = epoch - serverNow();
  const abs = Math.abs(diff);
  const rtf = new Intl.RelativeTimeFormat(locale(), { numeric: 'auto' });
  if (abs < 45) return rtf.format(Math.round(diff), 'second');
  if (abs < 2700) return rtf.format(Math.round(diff / 60), 'minute');
  if (abs < 79200) return rtf.format(Math.round(diff / 3600), 'hour');
  return rtf.format(Math.round(diff / 86400), 'day');
}

// ---- server clock ----------------------------------------------------------------------------
// Countdowns compare the server's epoch times with the browser clock; the Date header of API
// answers tells how far apart the two are (to a second, which is all a countdown needs).

let clockOffset = 0;
export function noteServerDate(header) {
  const ms = Date.parse(header || '');
  if (Number.isNaN(ms)) return;
  const off = (ms - Date.now()) / 1000;
  clockOffset = Math.abs(off) > 2 ? off : 0;
}
export function serverNow() {
  return Date.now() / 1000 + clockOffset;
}

// ---- small widgets ---------------------------------------------------------------------------

export function badge(text, kind, extra, title) {
  return h('span', { class: `badge badge-${kind}${extra ? ` ${extra}` : ''}`, title }, text);
}

export function stateBadge(status) {
  return badge(t(`state.${status}`), `state-${status}`);
}

// An error cut to one line by CSS; a click, Enter or Space (it is a real button) shows the whole
// text wrapped, and again cuts it. The text goes in as a text node, never as HTML.
export function errorText(text) {
  const el = h('button', { type: 'button', class: 'last-error err-toggle', 'aria-expanded': 'false', title: t('common.show_whole') }, String(text));
  el.addEventListener('click', () => {
    const open = el.getAttribute('aria-expanded') !== 'true';
    el.setAttribute('aria-expanded', String(open));
    el.title = open ? t('common.show_less') : t('common.show_whole');
  });
  return el;
}

export function emptyState(title, body, ...actions) {
  return h(
    'div',
    { class: 'empty' },
    h('div', { class: 'empty-mark', 'aria-hidden': 'true' }),
    title ? h('p', { class: 'empty-title' }, title) : null,
    body ? h('p', { class: 'empty-body' }, body) : null,
    actions.length ? h('div', { class: 'empty-actions' }, actions) : null,
  );
}

export function toast(message, kind = 'info') {
  const box = document.getElementById('toasts');
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  box.append(el);
  // a popover sits in the top layer: re-showing it puts toasts above an open modal dialog
  if (typeof box.showPopover === 'function') {
    try {
      if (box.matches(':popover-open')) box.hidePopover();
      box.showPopover();
    } catch {
      /* not supported: toasts stay in the page */
    }
  }
  setTimeout(() => el.classList.add('toast-out'), kind === 'error' ? 6000 : 3500);
  setTimeout(() => el.remove(), kind === 'error' ? 6400 : 3900);
}

export async function copyText(text) {
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      toast(t('common.copied'), 'ok');
      return;
    }
  } catch {
    /* fall back below */
  }
  const ta = h('textarea', { class: 'offscreen', readonly: true, 'aria-hidden': 'true' });
  ta.value = text;
  document.body.append(ta);
  ta.select();
  let ok = false;
  try {
    ok = document.execCommand('copy');
  } catch {
    ok = false;
  }
  ta.remove();
  toast(ok ? t('common.copied') : t('common.copy_failed'), ok ? 'ok' : 'error');
}

// ---- dialogs ---------------------------------------------------------------------------------

// Opens a modal <dialog>; build(close) returns its content. Resolves with the value given to
// close(), or null when dismissed (Escape, Cancel).
export function openDialog(build, { className = '' } = {}) {
  return new Promise((resolve) => {
    const dlg = h('dialog', { class: `modal ${className}` });
    let value = null;
    const close = (v = null) => {
      value = v;
      dlg.close();
    };
    dlg.addEventListener('close', () => {
      dlg.remove();
      resolve(value);
    });
    dlg.addEventListener('click', (ev) => {
      if (ev.target === dlg) close(null); // click on the backdrop
    });
    append(dlg, build(close));
    document.body.append(dlg);
    dlg.showModal();
    const first = dlg.querySelector('[autofocus]');
    if (first) first.focus();
  });
}

export function confirmDialog({ title, body, confirm, danger = false }) {
  return openDialog((close) =>
    h(
      'form',
      {
        class: 'modal-body',
        method: 'dialog',
        onsubmit: (ev) => {
          ev.preventDefault();
          close(true);
        },
      },
      h('h2', { class: 'modal-title' }, title),
      h('p', { class: 'modal-text' }, body),
      h(
        'div',
        { class: 'modal-actions' },
        h('button', { type: 'button', class: 'btn', onclick: () => close(false) }, t('common.cancel')),
        h('button', { type: 'submit', class: `btn ${danger ? 'btn-danger' : 'btn-primary'}`, autofocus: true }, confirm),
      ),
    ),
  ).then((v) => v === true);
}

export function promptDialog({ title, label, value = '' }) {
  return openDialog((close) => {
    const input = h('input', { type: 'text', class: 'input', value, autofocus: true, maxlength: 200 });
    return h(
      'form',
      {
        class: 'modal-body',
        onsubmit: (ev) => {
          ev.preventDefault();
          close(input.value);
        },
      },
      h('h2', { class: 'modal-title' }, title),
      h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), input),
      h(
        'div',
        { class: 'modal-actions' },
        h('button', { type: 'button', class: 'btn', onclick: () => close(null) }, t('common.cancel')),
        h('button', { type: 'submit', class: 'btn btn-primary' }, t('common.save')),
      ),
    );
  });
}

// ---- polling ---------------------------------------------------------------------------------

// Calls fn now and every `ms` while the page is visible; never overlaps two calls.
export function poller(fn, ms) {
  let timer = null;
  let running = false;
  let stopped = false;
  const tick = async () => {
    timer = null;
    if (stopped) return;
    if (document.visibilityState === 'visible' && !running) {
      running = true;
      try {
        await fn();
      } catch {
        /* the callback shows its own errors */
      } finally {
        running = false;
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  const onVisible = () => {
    if (document.visibilityState === 'visible' && timer !== null && !running) {
      clearTimeout(timer);
      tick();
    }
  };
  document.addEventListener('visibilitychange', onVisible);
  tick();
  return {
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      document.removeEventListener('visibilitychange', onVisible);
    },
    now() {
      if (timer) clearTimeout(timer);
      if (!running) tick();
    },
  };
}

export function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

export function select(options, value, onchange, props = {}) {
  const el = h(
    'select',
    { class: 'select', onchange: (ev) => onchange(ev.target.value), ...props },
    options.map(([v, label]) => h('option', { value: v, selected: String(v) === String(value) }, label)),
  );
  return el;
}

export function pageHeader(title, subtitle, ...actions) {
  return h(
    'div',
    { class: 'page-head' },
    h('div', { class: 'page-head-text' }, h('h1', { class: 'page-title' }, title), subtitle ? h('p', { class: 'page-sub' }, subtitle) : null),
    actions.length ? h('div', { class: 'page-actions' }, actions) : null,
  );
}
