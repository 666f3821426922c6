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
    // As many time labels as fit (a seconds label is up to ~70 px wide at this size; the
    // end labels are anchored inwards, so a gap needs more than one label width).
    const ticks = Math.max(2, Math.min(6, Math.floor((W - pad.l - pad.r) / 115)));
    const short = x1 - x0 < 10 * 60 * 1000;  // a zoomed axis: minutes alone would repeat
    for (let i = 0; i <= ticks; i++) {
      const t = x0 + ((x1 - x0) * i) / ticks;
      const d = new Date(t);
      const label = d.toLocaleTimeString([], short
        ? { hour: '2-digit', minute: '2-digit', second: '2-digit' } : { hour: '2-digit', minute: '2-digit' });
      // The end labels sit inside the plot: centred on the edge they were cut in half.
      const anchor = i === 0 ? 'start' : i === ticks ? 'end' : 'middle';
      svg.appendChild(el('text', { x: X(t), y: H - 6, 'text-anchor': anchor, 'font-size': 10, fill: '#888', class: 'tick-x' }, label));
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
        // Latency has no value in a step without requests: bridge such gaps (opts.bridge)
        // instead of leaving isolated dots.
        if (v == null) { if (!opts.bridge) pen = false; return; }
        d += `${pen ? 'L' : 'M'}${X(stamps[j]).toFixed(1)},${Y(v).toFixed(1)}`;
        pen = true;
      });
      const path = el('path', { d: d, fill: 'none', stroke: color, 'stroke-width': 1.8 });
      path.appendChild(el('title', {}, name));
      svg.appendChild(path);
      // A point without a neighbour draws no line: mark it.
      const vals = series[name];
      const alone = (j) => (opts.bridge
        ? vals.filter((x) => x != null).length === 1 : vals[j - 1] == null && vals[j + 1] == null);
      vals.forEach((v, j) => {
        if (v != null && alone(j)) {
          svg.appendChild(el('circle', { cx: X(stamps[j]), cy: Y(v), r: 2.5, fill: color }));
        }
      });
      // The newest step is still filling: the legend shows the last complete one, or the
      // filling one while it is the only one with a value (right after start).
      const done = series[name].slice(0, -1);
      let last = [...done].reverse().find((v) => v != null);
      if (last == null) last = vals[vals.length - 1];
      const shown = last == null ? 'no data yet' : fmt(last) + (opts.unit || '');
      legend.insertAdjacentHTML('beforeend',
        `<span><i style="background:${color}"></i>${esc(name)} <b>${esc(shown)}</b></span>`);
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
      ['Unknown items', s.events.unknown_item || 0, 'accepted events naming an item the catalog lacks'],
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

  function stepFor(minutes) {
    return minutes <= 15 ? 15 : minutes <= 60 ? 60 : minutes <= 360 ? 300 : 900;
  }
  // First step with any value (requests or latency), or null.
  function firstData(ser) {
    let first = null;
    for (const group of ['requests', 'p95']) {
      for (const vals of Object.values(ser[group] || {})) {
        const j = vals.findIndex((v) => v != null && v > 0);
        if (j >= 0 && (first == null || j < first)) first = j;
      }
    }
    return first == null ? null : ser.timestamps[first];
  }
  // Right after start the data fills only the last steps of the window (a few dots at the
  // right edge): zoom to the time since the first data, in 5 s steps, until it fills a
  // quarter of the chosen window.
  async function seriesFor(minutes) {
    const step = stepFor(minutes);
    const ser = await getJson(`/v1/stats/series?minutes=${minutes}&step_s=${step}`);
    const first = firstData(ser);
    if (first == null) return [ser, step, null];
    const span = (ser.to_ms - first) / 60000;
    if (span >= minutes / 4) return [ser, step, null];
    const zoom = Math.min(minutes, Math.max(2, Math.ceil(span * 1.25) + 1));
    const zstep = zoom <= 15 ? 5 : 15;
    const zoomed = await getJson(`/v1/stats/series?minutes=${zoom}&step_s=${zstep}`);
    return [fromFirstData(zoomed, 6), zstep, zoom];
  }
  // The series from one step before the first data on (at least `keep` steps): the axis
  // spans the time the server has been running.
  function fromFirstData(ser, keep) {
    const first = firstData(ser);
    const n = ser.timestamps.length;
    if (first == null) return ser;
    const from = Math.max(0, Math.min(ser.timestamps.indexOf(first) - 1, n - keep));
    const out = { ...ser, timestamps: ser.timestamps.slice(from) };
    for (const [k, v] of Object.entries(ser)) {
      if (v && typeof v === 'object' && !Array.isArray(v)) {
        out[k] = Object.fromEntries(Object.entries(v).map(([name, vals]) => [name, vals.slice(from)]));
      }
    }
    return out;
  }

  async function refresh() {
    const minutes = Number($('#window').value);
    try {
      const [s, [ser, step, zoom]] = await Promise.all([
        getJson('/v1/stats?window_s=60'),
        seriesFor(minutes),
      ]);
      document.body.dataset.zoom = zoom == null ? '' : String(zoom);
      tiles(s);
      endpointTable(s);
      const st = ser.timestamps;
      lineChart('#c-requests', '#l-requests', st, perSecond(ser.requests, step), { unit: '/s' });
      lineChart('#c-p95', '#l-p95', st, ser.p95, { unit: ' ms', bridge: true });
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
        `${s.redis_error ? ' (Redis: ' + s.redis_error + ')' : ''} · ${ser.resolution} series, ${step} s steps` +
        `${zoom ? ` · zoomed to the last ${zoom} min (data since start)` : ''}${flush}`;
      document.body.dataset.loaded = '1';
    } catch (e) {
      $('#status').textContent = `update failed: ${e.message}`;
    }
  }

  $('#window').addEventListener('change', refresh);
  refresh();
  setInterval(refresh, REFRESH_MS);
})();
