// The admin API answers errors in English: {"error": {"message", "code", "param"}}. The English
// page shows that text as it is (it is written for people); any other language maps the error
// by its code (and the field it names) to its own words, reading the details it needs (an id, a
// name, a limit) out of the message. Anything it does not know keeps the server's text, behind a
// translated lead-in, so a message is never lost and never left wholly in English.

import { getLang, has, t } from './i18n.js';

// Known problem texts (what follows "field: " in a 400, or a batch import's per-key message).
// Each: [pattern, i18n key, names of the captured groups].
const PROBLEMS = [
  [/^required\b/, 'srv.p.required', []],
  [/^must be a string of at most (\d+) characters$/, 'srv.p.max_chars', ['n']],
  [/^must be 'active' or 'disabled'$/, 'srv.p.active_disabled', []],
  [/^must be one of (.+)$/, 'srv.p.one_of', ['list']],
  [/^must be a whole number(?: ≥ 0)?(?:, got (.+))?$/, 'srv.p.whole', ['got']],
  [/^must be (?:a number|a finite number[^,]*)(?:, got (.+))?$/, 'srv.p.number', ['got']],
  [/^must be ≥ (\S+) and ≤ (\S+)$/, 'srv.p.range', ['lo', 'hi']],
  [/^must be ≥ (\S+?)(?:, got (.+))?$/, 'srv.p.min', ['lo', 'got']],
  [/^must be > 0$/, 'v.positive', []],
  [/^must be true or false/, 'srv.p.bool', []],
  [/^must be an http\(s\) URL/, 'v.url', []],
  [/^must be a string/, 'srv.p.string', []],
  [/^must be text or an array of strings$/, 'srv.p.text_or_list', []],
  [/^must be a status code/, 'srv.p.status_filter', []],
  [/^unknown field\b(?: \((.+)\))?/, 'srv.p.unknown_field', ['list']],
  [/^no provider named '(.+)'$/, 'srv.p.no_provider', ['name']],
  [/^not valid JSON$/, 'srv.p.json', []],
  [/^must be a JSON object$/, 'srv.p.json_object', []],
  [/^larger than (\d+) bytes$/, 'srv.p.too_large', ['n']],
  [/^empty$/, 'srv.p.empty', []],
  [/^shorter than (\d+) characters/, 'srv.p.short', ['n']],
  [/^longer than (\d+) characters/, 'srv.p.long', ['n']],
  [/^contains whitespace or control characters/, 'srv.p.whitespace', []],
  [/^repeated in this input$/, 'srv.p.repeated', []],
  [/^already stored$/, 'srv.p.stored', []],
];

function english() {
  return getLang() === 'en';
}

// One problem text in the page's language, or null when it is not a known one.
function problem(text) {
  const s = String(text || '').trim();
  const invalid = /^the key is not valid: (.+)$/.exec(s);
  if (invalid) {
    const why = problem(invalid[1]);
    return t('srv.p.key_invalid', { why: why ?? invalid[1] });
  }
  for (const [re, key, names] of PROBLEMS) {
    const m = re.exec(s);
    if (!m) continue;
    const vars = {};
    names.forEach((name, i) => {
      vars[name] = m[i + 1] ?? '';
    });
    return t(key, vars);
  }
  return null;
}

// A batch import's per-key message (or any short problem text) for the page.
export function localizeProblem(text) {
  if (!text || english()) return text;
  return problem(text) ?? text;
}

function fieldLabel(name) {
  for (const key of [`srv.f.${name}`, `f.${name}`]) if (has(key)) return t(key);
  return name;
}

// "rps: must be ≥ 0" with param "rps" → "<label>：<problem>"; unknown problems keep their text.
function fieldError(message, param) {
  const m = /^\s*([A-Za-z_][\w.]*):\s*(.*)$/s.exec(message);
  const field = param || (m && m[1]) || '';
  const rest = m && (!param || m[1] === param) ? m[2] : message;
  const known = problem(rest);
  // "key: the key is not valid: …" already names what it is about
  if (!field || (known && /^the key is not valid:/.test(rest))) return known ?? t('srv.invalid', { message });
  return t('srv.field', { field: fieldLabel(field), problem: known ?? t('srv.p.unknown', { message: rest }) });
}

function pick(re, text, i = 1) {
  const m = re.exec(text);
  return m ? m[i] : null;
}

/**
 * The message to show for an admin API error, in the page's language.
 * `retryAfter` is the Retry-After header (seconds) when the gateway sent one.
 */
export function localizeError({ status = 0, code = '', param = '', message = '', retryAfter = '' }) {
  if (english()) return message;
  const msg = String(message || '');
  const secs = Number.parseInt(retryAfter, 10);
  if (status === 429) return Number.isFinite(secs) && secs > 0 ? t('srv.throttled_s', { s: secs }) : t('srv.throttled');
  switch (code) {
    case 'unauthorized':
      return /wrong|invalid/i.test(msg) ? t('login.wrong') : t('srv.unauthorized');
    case 'csrf_required':
      return t('err.csrf');
    case 'duplicate_key': {
      const provider = pick(/^key: (\S+) already has/, msg);
      const key = pick(/already has this key (\S+)/, msg);
      const id = pick(/\(id (\d+)\)/, msg);
      if (!provider || !key) return t('srv.duplicate');
      return id ? t('srv.duplicate_id', { provider, key, id }) : t('srv.duplicate_key', { provider, key });
    }
    case 'not_found': {
      const keyId = pick(/^no key with id (\d+)/, msg);
      if (keyId) return t('srv.no_key', { id: keyId });
      const prov = pick(/^no provider named '(.+)'/, msg);
      if (prov) return t('srv.no_provider', { name: prov });
      const route = pick(/^no such admin API route: (.+)$/, msg);
      if (route) return t('srv.no_route', { path: route });
      return t('srv.not_found', { message: msg });
    }
    case 'unknown_provider': {
      const name = pick(/^provider '(.+)' is not configured here/, msg);
      return name ? t('srv.unknown_provider', { name }) : t('srv.invalid', { message: msg });
    }
    case 'invalid_value':
    case 'invalid_json':
    case 'request_too_large':
      return fieldError(msg, param);
    case 'method_not_allowed':
      return t('srv.method');
    case 'bad_request':
      return t('srv.bad_request');
    case 'client_gone':
      return t('srv.client_gone');
    case 'internal':
      return t('srv.internal');
    default:
      break;
  }
  if (param && msg) return fieldError(msg, param);
  return t('err.server', { status, message: msg });
}
