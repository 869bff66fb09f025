// Quota gauges (SPEC §12): one small meter per window that has a limit, "used / limit" and
// when it resets. The keys view shows a key's own windows; the dashboard's provider cards the
// sum over the provider's keys.

import { fmtDuration, fmtInt, h, serverNow } from './dom.js';
import { t } from './i18n.js';

export const WINDOWS = ['rpm', 'rph', 'rpd', 'tpm', 'tph', 'tpd'];

function gauge(win, row, compact) {
  const used = Number(row.used || 0);
  const limit = Number(row.limit || 0);
  const frac = limit > 0 ? Math.min(1, used / limit) : 0;
  const fill = h('div', { class: 'meter-fill' });
  fill.style.width = `${(frac * 100).toFixed(1)}%`;
  if (frac >= 0.9) fill.classList.add('is-high');
  else if (frac >= 0.6) fill.classList.add('is-mid');
  const reset = Number(row.reset_at || 0);
  const left = reset > 0 ? Math.max(0, reset - serverNow()) : 0;
  const resets = reset > 0 ? t('quota.resets_in', { t: fmtDuration(left) }) : '';
  const label = t(`quota.${win}`);
  return h(
    'div',
    { class: `meter quota-meter${compact ? ' is-compact' : ''}`, dataset: { window: win }, title: resets },
    h(
      'div',
      { class: 'meter-head' },
      h('span', { class: 'meter-label' }, compact ? win : label),
      h('span', { class: 'meter-value' }, `${fmtInt(used)} / ${fmtInt(limit)}`),
    ),
    h('div', { class: 'meter-track', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': limit, 'aria-valuenow': used, 'aria-label': label }, fill),
    compact ? null : h('div', { class: 'meter-sub' }, resets),
  );
}

// The meters of every window with a limit; null when none has one.
export function quotaMeters(quota, compact = false) {
  if (!quota) return null;
  const rows = WINDOWS.filter((w) => quota[w] && quota[w].limit);
  if (!rows.length) return null;
  return h('div', { class: `quota-meters${compact ? ' is-compact' : ''}` }, rows.map((w) => gauge(w, quota[w], compact)));
}
