// The admin JSON API (docs/admin-api.md). Same origin, session cookie; every non-GET call
// carries the CSRF header. A 401 from any call (but the login itself) ends the session in the UI.

import { t } from './i18n.js';
import { noteServerDate } from './dom.js';
import { localizeError } from './errors.js';

export class ApiError extends Error {
  constructor(status, message, code, param) {
    super(message);
    this.status = status;
    this.code = code || '';
    this.param = param || '';
  }
}

let onUnauthorized = () => {};
export function setUnauthorizedHandler(fn) {
  onUnauthorized = fn;
}

export async function api(method, path, body, { quiet401 = false } = {}) {
  const headers = { accept: 'application/json' };
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store', redirect: 'error' };
  if (method !== 'GET' && method !== 'HEAD') headers['x-keygate-csrf'] = '1';
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError(0, t('err.network'));
  }
  noteServerDate(res.headers.get('date'));
  let data = null;
  const text = await res.text();
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (res.status === 401 && !quiet401) {
    onUnauthorized();
    throw new ApiError(401, t('login.expired'), 'unauthorized');
  }
  if (!res.ok) {
    const err = data && typeof data === 'object' && data.error && typeof data.error === 'object' ? data.error : null;
    const code = err && typeof err.code === 'string' ? err.code : '';
    const param = err && typeof err.param === 'string' ? err.param : '';
    let message = err && typeof err.message === 'string' ? err.message : '';
    if (message || code || res.status === 429) {
      message = localizeError({ status: res.status, code, param, message, retryAfter: res.headers.get('retry-after') || '' });
    }
    if (res.status === 403 && !message) message = t('err.csrf');
    if (!message) message = t('err.server', { status: res.status, message: res.statusText || '' });
    throw new ApiError(res.status, message, code, param);
  }
  return data;
}

export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== '' && v != null) u.set(k, String(v));
  const s = u.toString();
  return s ? `?${s}` : '';
}

export const enc = encodeURIComponent;
