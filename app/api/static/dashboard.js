// Live dashboard: GET /v1/stats (tiles, endpoint table) and GET /v1/stats/series (charts),
// refreshed every 5 s. Charts are hand-drawn SVG (no library).
'use strict';

(function () {
  const $ = (sel) => document.querySelector(sel);
  const COLORS = ['#d82c20', '#2b59c3', '#1a7f37', '#b25e00', '#7b3fb5', '#0f8b8d', '#c2185b', '#5d6d7e'];
  const SVGNS = 'http://www.w3.org/2000/svg';
  const REFRESH_MS = 5000;

  function esc(s) {
    return String(s == null ? '' : s).replace(/[&<>"']/g, (c) => (
      { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  }
  function fmt(v, digits) {
    if (v == null || Number.isNaN(v)) return '–';
    const a = Math.abs(v);
    if (digits == null && a > 0 && a < 0.1) return Number(v).toPrecision(2);
    const d = digits == null ? (a >= 100 ? 0 : a >= 10 ? 1 : 2) : digits;
    return Number(v).toFixed(d);
  }
  function el(name, attrs, text) {
    const e = document.createElementNS(SVGNS, name);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }

  // One line chart: series = {name: [values or null]} over `stamps` (ms).
  function lineChart(svgId, legendId, stamps, series, opts) {
    const svg = $(svgId);
    const legend = $(legendId);
    const W = svg.clientWidth || 460;
    const H = svg.clientHeight || 200;
    const pad = { l: 46, r: 10, t: 8, b: 22 };
    svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
    svg.innerHTML = '';
    legend.innerHTML = '';
    const names = Object.keys(series).sort((a, b) => sum(series[b]) - sum(series[a])).slice(0, 8);
    let max = 0;
    for (const n of names) for (const v of series[n]) if (v != null && v > max) max = v;
    if (max <= 0) max = 1;
    max = niceMax(max);
    const x0 = stamps[0] || 0;
    const x1 = stamps[stamps.length - 1] || 1;
    const X = (t) => pad.l + (W - pad.l - pad.r) * ((t - x0) / Math.max(1, x1 - x0));
    const Y = (v) => H - pad.b - (H - pad.t - pad.b) * (v / max);
    for (let i = 0; i <= 4; i++) {
      const v = (max * i) / 4;
      svg.appendChild(el('line', { x1: pad.l, x2: W - pad.r, y1: Y(v), y2: Y(v), stroke: '#eee' }));
      svg.appendChild(el('text', { x: pad.l - 6, y: Y(v) + 4, 'text-anchor': 'end', 'font-size': 10, fill: '#888' }, fmt(v)));
    }
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = x0 + ((x1 - x0) * i) / ticks;
      const d = new Date(t);
      const label = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
      svg.appendChild(el('text', { x: X(t), y: H - 6, 'text-anchor': 'middle', 'font-size': 10, fill: '#888' }, label));
    }
    if (!names.length) {
      svg.appendChild(el('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#aaa', 'font-size': 12 }, 'no data in this window yet'));
      return;
    }
    names.forEach((name, i) => {
      const color = COLORS[i % COLORS.length];
      let d = '';
      let pen = false;
      series[name].forEach((v, j) => {
        if (v == null) { pen = false; return; }
        d += `${pen ? 'L' : 'M'}${X(stamps[j]).toFixed(1)},${Y(v).toFixed(1)}`;
        pen = true;
      });
      const path = el('path', { d: d, fill: 'none', stroke: color, 'stroke-width': 1.8 });
      path.appendChild(el('title', {}, name));
      svg.appendChild(path);
      // A point without a neighbour draws no line: mark it.
      const vals = series[name];
      vals.forEach((v, j) => {
        if (v != null && vals[j - 1] == null && vals[j + 1] == null) {
          svg.appendChild(el('circle', { cx: X(stamps[j]), cy: Y(v), r: 2.5, fill: color }));
        }
      });
      // The newest step is still filling: the legend shows the last complete one.
      const done = series[name].slice(0, -1);
      const last = [...done].reverse().find((v) => v != null);
      legend.insertAdjacentHTML('beforeend',
        `<span><i style="background:${color}"></i>${esc(name)} <b>${fmt(last)}</b>${esc(opts.unit || '')}</span>`);
    });
  }
  function sum(a) { return a.reduce((s, v) => s + (v || 0), 0); }
  function niceMax(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }
  function perSecond(rows, stepS) {
    const out = {};
    for (const [k, vals] of Object.entries(rows || {})) out[k] = vals.map((v) => (v == null ? null : v / stepS));
    return out;
  }

  async function getJson(url) {
    const r = await fetch(url);
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
    return body;
  }

  function tiles(s) {
    const recs = s.recommendations || {};
    const ing = s.ingest || {};
    const variants = Object.entries(s.variants || {});
    const conv = variants.map(([v, m]) => `${v}: ${m.purchase || 0}`).join(' · ');
    const purchases = variants.reduce((n, [, m]) => n + (m.purchase || 0), 0);
    const rows = [
      ['Requests', s.requests.total, `${fmt(s.requests.rate_per_s)} /s now`],
      ['HTTP 5xx', s.requests.errors, ''],
      ['Events ingested', s.events.ingested, `${fmt(s.events.per_s)} /s now`],
      ['Rec cache hit rate', recs.cache_hit_rate == null ? '–' : fmt(100 * recs.cache_hit_rate, 1) + ' %',
        `${(recs.served || {}).cache || 0} of ${Object.values(recs.served || {}).reduce((a, b) => a + b, 0)}`],
      ['Rec fallbacks', (recs.served || {}).fallback || 0,
        recs.fallback_rate == null ? '' : fmt(100 * recs.fallback_rate, 1) + ' % of lists'],
      ['Attributed purchases', variants.length ? purchases : '–', conv ? 'by variant: ' + conv : 'no props.variant yet'],
      ['Aggregate freshness p99', ing.freshness_p99_ms == null ? '–' : fmt(ing.freshness_p99_ms) + ' ms',
        (ing.freshness_p50_ms == null ? 'no worker published yet' : `p50 ${fmt(ing.freshness_p50_ms)} ms`) +
        ` · log lag ${ing.log_lag_max == null ? '–' : ing.log_lag_max}` +
        ((ing.alerts || []).length ? ' · ALERT: ' + ing.alerts[0] : '')],
    ];
    $('#tiles').innerHTML = rows.map(([label, value, sub]) =>
      `<div class="tile"><div class="label">${esc(label)}</div><div class="value">${esc(value)}</div>` +
      `<div class="small muted">${esc(sub)}</div></div>`).join('');
  }

  function endpointTable(s) {
    const rows = (s.endpoints || []).slice().sort((a, b) => b.requests - a.requests);
    $('#endpoints').innerHTML = `<tr><th>endpoint</th><th>requests</th><th>/s now</th><th>4xx</th><th>5xx</th>
      <th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>p95 ms (last ${esc(s.window_s)} s)</th></tr>` +
      rows.map((e) => `<tr><td>${esc(e.method)} ${esc(e.route)}</td><td>${e.requests}</td><td>${fmt(e.rate_per_s)}</td>
        <td>${e.client_errors}</td><td>${e.errors}</td><td>${fmt(e.latency_ms.p50)}</td><td>${fmt(e.latency_ms.p95)}</td>
        <td>${fmt(e.latency_ms.p99)}</td><td>${fmt(e.latency_ms_recent.p95)}</td></tr>`).join('');
  }

  async function refresh() {
    const minutes = Number($('#window').value);
    const step = minutes <= 15 ? 15 : minutes <= 60 ? 60 : minutes <= 360 ? 300 : 900;
    try {
      const [s, ser] = await Promise.all([
        getJson('/v1/stats?window_s=60'),
        getJson(`/v1/stats/series?minutes=${minutes}&step_s=${step}`),
      ]);
      tiles(s);
      endpointTable(s);
      const st = ser.timestamps;
      lineChart('#c-requests', '#l-requests', st, perSecond(ser.requests, step), { unit: '/s' });
      lineChart('#c-p95', '#l-p95', st, ser.p95, { unit: ' ms' });
      lineChart('#c-events', '#l-events', st, perSecond(ser.events, step), { unit: '/s' });
      lineChart('#c-recs', '#l-recs', st, perSecond(ser.recs, step), { unit: '/s' });
      const errs = {};
      const perMin = (vals) => vals.map((v) => (v == null ? null : (v * 60) / step));
      for (const [k, v] of Object.entries(ser.errors || {})) errs['5xx ' + k] = perMin(v);
      for (const [k, v] of Object.entries(ser.fallbacks || {})) errs['fallback ' + k] = perMin(v);
      lineChart('#c-errors', '#l-errors', st, errs, { unit: '/min' });
      const conv = {};
      for (const [k, v] of Object.entries(ser.conversions || {})) conv[k] = perMin(v);
      lineChart('#c-conv', '#l-conv', st, conv, { unit: '/min' });
      const flush = s.flusher && s.flusher.last_flush_ms
        ? `, last flush by this worker ${Math.round((Date.now() - s.flusher.last_flush_ms) / 1000)} s ago` : '';
      $('#status').textContent = `updated ${new Date().toLocaleTimeString()} · source ${s.source}` +
        `${s.redis_error ? ' (Redis: ' + s.redis_error + ')' : ''} · ${ser.resolution} series, ${step} s steps${flush}`;
      document.body.dataset.loaded = '1';
    } catch (e) {
      $('#status').textContent = `update failed: ${e.message}`;
    }
  }

  $('#window').addEventListener('change', refresh);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
