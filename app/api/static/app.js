// Storefront demo: plain JS, no build step. Talks only to the public API, like a real
// storefront: GET /v1/browse|search|items|recommendations, POST /v1/track (Segment format) with the PUBLIC
// write key from GET /v1/demo/config (the admin key never reaches this page).
'use strict';

(function () {
  const $ = (sel, root = document) => root.querySelector(sel);
  const state = {
    config: null,
    shopper: null, // {id, anon, label}
    sessionId: null,
    cart: [],
    why: false,
    variant: null, // the shopper's experiment variant (from the last recommendations)
    attribution: {}, // item_id -> {rec_id, variant, surface}: set when a recommendation is clicked
    recs: { version: 0, ids: [] },
    recsSeq: 0,
    lastAction: 'opened the page',
    view: null,
  };

  // -- small helpers -------------------------------------------------------------------------
  function randId(prefix) {
    if (window.crypto && crypto.getRandomValues) {
      const b = new Uint8Array(8);
      crypto.getRandomValues(b);
      return prefix + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    }
    return prefix + Math.random().toString(16).slice(2) + Date.now().toString(16);
  }
  function save(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); } catch (e) { /* private mode */ }
  }
  function load(key, dflt) {
    try {
      const v = localStorage.getItem(key);
      return v === null ? dflt : JSON.parse(v);
    } catch (e) { return dflt; }
  }
  function esc(s) {
    return String(s == null ? '' : s).replace(/[&<>"']/g, (c) => (
      { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  }
  function money(p) { return p == null ? '' : '£' + Number(p).toFixed(2); }
  function catLabel(c) { return (c || 'other').replace(/[_-]/g, ' '); }
  function hue(text) {
    let h = 0;
    for (const ch of String(text)) h = (h * 31 + ch.charCodeAt(0)) % 360;
    return h;
  }
  function thumb(item) {
    const h = hue(item.category || 'other');
    const words = String(item.title || item.item_id || '?').split(/\s+/).filter(Boolean);
    const initials = words.slice(0, 2).map((w) => w[0]).join('');
    return `<div class="thumb" style="background:linear-gradient(135deg,hsl(${h},55%,52%),` +
      `hsl(${(h + 40) % 360},60%,40%))">${esc(initials)}</div>`;
  }
  function titleCase(t) {
    return String(t || '').toLowerCase().replace(/\b[a-z]/g, (c) => c.toUpperCase());
  }

  async function api(path, opts) {
    const t0 = performance.now();
    let resp;
    let body = null;
    try {
      resp = await fetch(path, opts || {});
      const text = await resp.text();
      try { body = text ? JSON.parse(text) : null; } catch (e) {
        body = { error: 'bad_json', detail: text.slice(0, 200) };
      }
    } catch (e) {
      return { ok: false, status: 0, body: { error: 'network', detail: String(e) }, ms: performance.now() - t0 };
    }
    return { ok: resp.ok, status: resp.status, body: body || {}, ms: performance.now() - t0 };
  }

  // -- identity, cart, events ---------------------------------------------------------------
  // A known shopper's data needs a shopper token. A retailer's backend mints it for its
  // logged-in shopper; here the demo server plays that backend (/v1/demo/token). Anonymous
  // visitors need none: their random id is their proof.
  async function shopperToken() {
    if (!state.shopper || state.shopper.anon) return null;
    const now = Date.now() / 1000;
    const t = state.token;
    if (t && t.user === state.shopper.id && t.expires - 60 > now) return t.token;
    const r = await api('/v1/demo/token', {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ user_id: state.shopper.id }),
    });
    if (!r.ok) return null;
    state.token = { user: state.shopper.id, token: r.body.token, expires: r.body.expires_at };
    return r.body.token;
  }
  async function authed(path, opts) {
    const token = await shopperToken();
    const o = Object.assign({}, opts || {});
    o.headers = Object.assign({}, o.headers || {});
    if (token) o.headers['x-shopper-token'] = token;
    return api(path, o);
  }
  function recUser() { return state.shopper.anon ? 'anon:' + state.shopper.id : state.shopper.id; }
  function cartKey() { return 'retail-demo:cart:' + recUser(); }
  function saveCart() { save(cartKey(), state.cart); renderCartCount(); }
  function renderCartCount() {
    $('#cart-count').textContent = String(state.cart.reduce((n, l) => n + l.qty, 0));
  }

  function propsFor(item, surface) {
    const props = { surface: surface };
    if (item && item.category) props.category = item.category;
    if (item && item.price != null) props.price = Number(item.price);
    const attr = item && state.attribution[item.item_id];
    if (attr) { props.rec_id = attr.rec_id; props.variant = attr.variant; }
    else if (state.variant) props.variant = state.variant;
    return props;
  }

  // Events leave the page as Segment / RudderStack track calls (the analytics.js payload:
  // e-commerce spec v2 names, messageId, anonymousId/userId, ISO timestamps, HTTP Basic with the
  // write key), so the page shows the integration a real storefront would use.
  const TRACK_NAMES = {
    view: 'Product Viewed', click: 'Product Clicked', add_to_cart: 'Product Added',
    remove_from_cart: 'Product Removed', purchase: 'Order Completed', search: 'Products Searched',
  };

  function trackProperties(type, fields) {
    const props = Object.assign({}, fields.props || {});
    if (fields.item_id) props.product_id = fields.item_id;
    if (fields.qty) props.quantity = fields.qty;
    if (fields.items) {
      props.products = fields.items.map((l) => ({
        product_id: l.item_id, quantity: l.qty, price: l.price, category: l.category,
      }));
      props.revenue = Math.round(fields.items.reduce((s, l) => s + l.qty * (l.price || 0), 0) * 100) / 100;
      props.currency = 'GBP';
    }
    return props;
  }

  async function sendEvent(type, fields) {
    const now = new Date().toISOString();
    const msg = Object.assign({
      type: 'track', event: TRACK_NAMES[type], messageId: randId('web-'),
      properties: trackProperties(type, fields), timestamp: now, sentAt: now,
      context: { sessionId: state.sessionId, library: { name: 'retail-demo', version: '1' } },
    }, state.shopper.anon ? { anonymousId: state.shopper.id } : { userId: state.shopper.id });
    // A known shopper's events carry the token the shop's backend (here: the demo server) gave.
    const token = await shopperToken();
    if (token) msg.context.shopper_token = token;
    const r = await authed('/v1/track', {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: 'Basic ' + btoa((state.config.write_key || '') + ':'),
      },
      body: JSON.stringify(msg),
    });
    const status = r.ok ? (r.body.status || 'ok') : (r.body.code || r.body.error || 'error');
    logEvent(Object.assign({ type: type }, fields), status, r);
    return r;
  }

  function logEvent(ev, status, r) {
    const what = ev.item_id || (ev.items ? ev.items.map((l) => `${l.item_id}×${l.qty}`).join(' ')
      : (ev.props && ev.props.query ? `"${ev.props.query}"` : ''));
    const li = document.createElement('li');
    li.dataset.type = ev.type;
    li.dataset.status = status;
    const detail = r.ok ? '' : ` — ${esc((r.body && (r.body.message || r.body.detail || r.body.field)) || '')}`;
    li.innerHTML = `${new Date().toLocaleTimeString()} <b>${esc(ev.type)}</b> ${esc(what)} ` +
      `<span class="muted">${esc(recUser())}</span> → <span class="st-${esc(status)}">${esc(status)}</span>` +
      ` <span class="muted">${r.ms.toFixed(1)} ms, HTTP ${r.status}</span>${detail}`;
    $('#event-log').prepend(li);
  }

  // -- filters & routing --------------------------------------------------------------------
  function filterParams() {
    const p = new URLSearchParams();
    const cat = $('#f-category').value;
    if (cat) p.set('category', cat);
    if ($('#f-min').value) p.set('min_price', $('#f-min').value);
    if ($('#f-max').value) p.set('max_price', $('#f-max').value);
    p.set('in_stock', $('#f-stock').checked ? 'true' : 'any');
    return p;
  }

  function parseHash() {
    const h = location.hash.replace(/^#/, '') || '/';
    const [path, query] = h.split('?');
    return { path: path, params: new URLSearchParams(query || '') };
  }

  async function route() {
    const { path, params } = parseHash();
    const view = $('#view');
    // The action that led here (set before navigating), else the page that was opened.
    const pending = state.lastAction;
    state.lastAction = null;
    view.innerHTML = '<div class="spinner">Loading…</div>';
    if (path.startsWith('/item/')) {
      state.view = { name: 'product', item: decodeURIComponent(path.slice(6)) };
      await showProduct(state.view.item);
    } else if (path === '/cart') {
      state.view = { name: 'cart' };
      showCart();
    } else if (path === '/thanks') {
      state.view = { name: 'thanks' };
      showThanks();
    } else if (path === '/search' && params.get('q')) {
      state.view = { name: 'search', q: params.get('q') };
      $('#q').value = params.get('q');
      await showSearch(params.get('q'));
    } else {
      state.view = { name: 'home' };
      await showHome();
    }
    const opened = { product: 'opened a product', cart: 'opened the cart', thanks: 'ordered',
      search: 'searched', home: 'opened the catalog' }[state.view.name];
    await refreshRecs(state.lastAction || pending || opened);
    state.lastAction = null;
  }

  // -- views ----------------------------------------------------------------------------------
  function cardHtml(hit, extra) {
    const stock = hit.in_stock === false ? '<span class="badge out">out of stock</span>' : '';
    return `<div class="card" data-item="${esc(hit.item_id)}" tabindex="0">${thumb(hit)}
      <div class="body"><div class="title">${esc(titleCase(hit.title || hit.item_id))}</div>
      <div class="meta"><span class="price">${money(hit.price)}</span>
      <span class="badge">${esc(catLabel(hit.category))}</span></div>${stock}${extra || ''}</div></div>`;
  }

  function bindCards(root) {
    root.querySelectorAll('.card[data-item]').forEach((el) => {
      el.addEventListener('click', () => { location.hash = '#/item/' + encodeURIComponent(el.dataset.item); });
    });
  }

  async function showHome() {
    const view = $('#view');
    const apis = state.config.apis;
    const p = filterParams();
    p.set('sort', $('#f-sort').value);
    p.set('k', '24');
    const cat = $('#f-category').value;
    const heading = cat ? `Browse: ${esc(catLabel(cat))}` : 'Browse the catalog';
    if (!apis.browse) {
      view.innerHTML = `<h1>${heading}</h1><div class="notice">The catalog API is not mounted on this server.</div>`;
      return;
    }
    const r = await api('/v1/browse?' + p.toString());
    if (!r.ok) {
      view.innerHTML = `<h1>${heading}</h1><div class="notice">Catalog unavailable: ${esc(r.body.detail || r.status)}</div>`;
      return;
    }
    const hits = r.body.hits || [];
    view.innerHTML = `<h1>${heading}</h1>
      <div class="subtitle">${hits.length} products · sorted by ${esc($('#f-sort').selectedOptions[0].text.toLowerCase())}
      · ${r.body.took_ms} ms in Redis</div>
      <div class="grid" id="results">${hits.map((h) => cardHtml(h)).join('')}</div>
      ${hits.length ? '' : '<p class="muted">No product matches these filters.</p>'}`;
    bindCards(view);
  }

  async function showSearch(q) {
    const view = $('#view');
    if (!state.config.apis.search) {
      view.innerHTML = '<div class="notice">The search API is not mounted on this server.</div>';
      return;
    }
    const p = filterParams();
    p.set('q', q);
    p.set('k', '24');
    p.set('user', recUser());
    const r = await authed('/v1/search?' + p.toString());
    if (!r.ok) {
      view.innerHTML = `<div class="notice">Search failed: ${esc(r.body.field || '')} ${esc(r.body.detail || r.status)}</div>`;
      return;
    }
    const hits = r.body.hits || [];
    const note = r.body.fallback ? ' · no product has these words: nearest products by meaning' : '';
    view.innerHTML = `<h1>Results for “${esc(q)}”</h1>
      <div class="subtitle">${hits.length} products · hybrid (BM25 + vector)${r.body.personalized ? ', re-ranked for this shopper (' + esc((r.body.personal_signals || []).join(', ')) + ')' : ''}
      ${note} · ${r.body.took_ms} ms in Redis</div>
      <div class="grid" id="results">${hits.map((h) => cardHtml(h,
        state.why ? `<div class="small muted">score ${Number(h.score).toFixed(3)}</div>` : '')).join('')}</div>
      ${hits.length ? '' : '<p class="muted">Nothing found.</p>'}`;
    bindCards(view);
  }

  async function showProduct(itemId) {
    const view = $('#view');
    if (!state.config.apis.items) {
      view.innerHTML = '<div class="notice">The items API is not mounted on this server.</div>';
      return;
    }
    const r = await api('/v1/items/' + encodeURIComponent(itemId));
    if (!r.ok) {
      view.innerHTML = `<div class="notice">No product ${esc(itemId)} (${esc(r.body.detail || r.status)})</div>`;
      return;
    }
    const item = r.body.item;
    state.current = item;
    const stock = item.in_stock === false ? '<span class="badge out">out of stock</span>'
      : `<span class="badge ok">in stock${item.stock != null ? ' (' + esc(item.stock) + ')' : ''}</span>`;
    view.innerHTML = `<div class="product" id="product" data-item="${esc(item.item_id)}">${thumb(item)}
      <div><h1>${esc(titleCase(item.title))}</h1>
        <div class="subtitle">${esc(item.item_id)} · <span class="badge">${esc(catLabel(item.category))}</span>
        ${item.category_source === 'derived' ? '<span class="small muted">(category derived from the title)</span>' : ''}</div>
        <div class="price" style="font-size:22px">${money(item.price)}</div>
        <div class="actions">
          <button class="primary" id="add-to-cart" ${item.in_stock === false ? 'disabled' : ''}>Add to cart</button>
          <button id="buy-now" ${item.in_stock === false ? 'disabled' : ''}>Buy now</button>
        </div>
        ${stock}
        ${item.description ? `<p>${esc(item.description)}</p>` : ''}
      </div></div>
      <h2 class="section">Similar items</h2><div class="grid" id="similar"><div class="spinner">Loading…</div></div>`;
    $('#add-to-cart').addEventListener('click', () => addToCart(item));
    $('#buy-now').addEventListener('click', () => buyNow(item));
    const surface = state.attribution[item.item_id] ? state.attribution[item.item_id].surface : 'product';
    state.lastAction = `viewed ${item.item_id}`;
    await sendEvent('view', { item_id: item.item_id, props: propsFor(item, surface) });
    loadSimilar(item.item_id);
  }

  async function loadSimilar(itemId) {
    const box = $('#similar');
    if (!state.config.apis.similar) { box.innerHTML = '<p class="muted">Similar items API not mounted.</p>'; return; }
    const r = await api(`/v1/items/${encodeURIComponent(itemId)}/similar?k=6`);
    if (!box.isConnected) return;
    if (!r.ok) { box.innerHTML = `<p class="muted">${esc(r.body.detail || 'unavailable')}</p>`; return; }
    const hits = r.body.hits || [];
    box.innerHTML = hits.map((h) => cardHtml(h)).join('') || '<p class="muted">None.</p>';
    bindCards(box);
  }

  function lineOf(item) {
    return { item_id: item.item_id, title: item.title, price: Number(item.price || 0),
      category: item.category || '', qty: 1 };
  }

  async function addToCart(item) {
    const line = state.cart.find((l) => l.item_id === item.item_id);
    if (line) line.qty += 1; else state.cart.push(lineOf(item));
    saveCart();
    await sendEvent('add_to_cart', { item_id: item.item_id, qty: 1, props: propsFor(item, 'product') });
    await refreshRecs(`added ${item.item_id} to the cart`);
  }

  async function purchase(lines) {
    const props = { surface: state.view && state.view.name === 'cart' ? 'cart' : 'product' };
    const attributed = lines.map((l) => state.attribution[l.item_id]).find(Boolean);
    if (attributed) { props.rec_id = attributed.rec_id; props.variant = attributed.variant; }
    else if (state.variant) props.variant = state.variant;
    const r = await sendEvent('purchase', {
      items: lines.map((l) => ({ item_id: l.item_id, qty: l.qty, price: l.price, category: l.category })),
      props: props,
    });
    if (r.ok) {
      save('retail-demo:last-order:' + recUser(), lines);
      state.lastAction = `bought ${lines.map((l) => l.item_id).join(', ')}`;
      location.hash = '#/thanks';
    }
    return r;
  }

  async function buyNow(item) {
    const r = await purchase([lineOf(item)]);
    if (r.ok && state.cart.some((l) => l.item_id === item.item_id)) {
      state.cart = state.cart.filter((l) => l.item_id !== item.item_id);
      saveCart();
    }
  }

  function showCart() {
    const view = $('#view');
    const total = state.cart.reduce((s, l) => s + l.qty * l.price, 0);
    view.innerHTML = `<h1>Your cart</h1>
      ${state.cart.length ? `<table class="cart"><tr><th>Item</th><th class="num">Qty</th><th class="num">Price</th><th></th></tr>
      ${state.cart.map((l) => `<tr data-item="${esc(l.item_id)}"><td><a href="#/item/${encodeURIComponent(l.item_id)}">${esc(titleCase(l.title))}</a>
        <span class="muted small">${esc(l.item_id)}</span></td><td class="num">${l.qty}</td>
        <td class="num">${money(l.qty * l.price)}</td><td class="num"><button data-remove="${esc(l.item_id)}">Remove</button></td></tr>`).join('')}
      <tr><td><b>Total</b></td><td></td><td class="num"><b>${money(total)}</b></td><td></td></tr></table>
      <div class="actions" style="margin-top:12px"><button class="primary" id="checkout">Buy ${state.cart.length} item(s)</button></div>`
        : '<p class="muted">Your cart is empty. <a href="#/">Browse the catalog</a>.</p>'}`;
    view.querySelectorAll('button[data-remove]').forEach((b) => b.addEventListener('click', async () => {
      const id = b.dataset.remove;
      const line = state.cart.find((l) => l.item_id === id);
      state.cart = state.cart.filter((l) => l.item_id !== id);
      saveCart();
      await sendEvent('remove_from_cart', { item_id: id, qty: line ? line.qty : 1, props: { surface: 'cart' } });
      showCart();
      await refreshRecs(`removed ${id} from the cart`);
    }));
    const checkout = $('#checkout');
    if (checkout) checkout.addEventListener('click', async () => {
      const lines = state.cart.slice();
      const r = await purchase(lines);
      if (r.ok) { state.cart = []; saveCart(); }
    });
  }

  function showThanks() {
    const lines = load('retail-demo:last-order:' + recUser(), []);
    const total = lines.reduce((s, l) => s + l.qty * l.price, 0);
    $('#view').innerHTML = `<h1>Thank you for your order</h1>
      <div class="subtitle" id="order" data-items="${esc(lines.map((l) => l.item_id).join(','))}">
      ${lines.length} item(s), ${money(total)}. The purchase event is in Redis already: the
      recommendations on the right no longer offer what was just bought.</div>
      <div class="grid">${lines.map((l) => cardHtml(l)).join('')}</div>
      <p><a href="#/">Continue shopping</a></p>`;
    bindCards($('#view'));
  }

  // -- recommendations panel ----------------------------------------------------------------
  function recsContext() {
    const v = state.view || { name: 'home' };
    if (v.name === 'product') return { surface: 'product', item: v.item };
    if (v.name === 'cart' && state.cart.length) return { surface: 'cart' };
    return { surface: 'home' };
  }

  async function refreshRecs(action) {
    const seq = ++state.recsSeq;
    const panel = $('#recs');
    if (!state.config.apis.recommendations) {
      $('#recs-meta').textContent = 'The recommendations API is not mounted on this server.';
      return;
    }
    const ctx = recsContext();
    const qs = new URLSearchParams({ surface: ctx.surface, k: '8' });
    if (ctx.item) qs.set('item', ctx.item);
    const r = await authed(`/v1/recommendations/${encodeURIComponent(recUser())}?${qs}`);
    if (seq !== state.recsSeq) return; // a newer refresh is on its way
    if (!r.ok) {
      $('#recs-meta').innerHTML = `<span class="badge warn">${esc(r.body.error || r.status)}</span> ${esc(r.body.detail || '')}`;
      return;
    }
    const body = r.body;
    if (body.variant) state.variant = body.variant;
    const items = body.items || [];
    const before = new Set(state.recs.ids);
    const ids = items.map((it) => it.item_id);
    const added = ids.filter((id) => !before.has(id));
    const gone = state.recs.ids.filter((id) => !ids.includes(id));
    state.recs = { version: state.recs.version + 1, ids: ids, body: body, roundTrip: r.ms };
    panel.dataset.version = String(state.recs.version);
    panel.dataset.items = ids.join(',');
    panel.dataset.surface = ctx.surface;
    renderRecsMeta();
    const list = $('#rec-list');
    list.innerHTML = items.map((it) => `<li data-item="${esc(it.item_id)}" class="${state.recs.version > 1 && added.includes(it.item_id) ? 'new' : ''}">
      ${thumb(it)}<div><div class="title">${esc(titleCase(it.title || it.item_id))}</div>
      <div class="small"><span class="price">${money(it.price)}</span> <span class="muted">${esc(catLabel(it.category))}</span></div>
      <div class="reason ${state.why ? '' : 'hidden'}">${esc(it.reason || '')}</div>
      <div class="why ${state.why ? '' : 'hidden'}">score ${Number(it.score).toFixed(3)} · ${esc(it.reason_code || '')}${it.anchor ? ' · anchor ' + esc(it.anchor) : ''}</div>
      </div></li>`).join('') || '<li class="muted">No recommendations yet.</li>';
    list.querySelectorAll('li[data-item]').forEach((li) => li.addEventListener('click', async () => {
      const id = li.dataset.item;
      const it = items.find((x) => x.item_id === id) || { item_id: id };
      state.attribution[id] = { rec_id: body.rec_id, variant: body.variant, surface: ctx.surface };
      state.lastAction = `clicked recommendation ${id}`;
      await sendEvent('click', { item_id: id, props: propsFor(it, ctx.surface) });
      location.hash = '#/item/' + encodeURIComponent(id);
    }));
    setTimeout(() => list.querySelectorAll('li.new').forEach((li) => li.classList.remove('new')), 2500);
    const note = state.recs.version === 1 ? '' : (added.length || gone.length
      ? `Changed after “${action}”: ${added.length} new, ${gone.length} gone.`
      : `Unchanged after “${action}”.`);
    $('#recs-changed').textContent = note;
  }

  function renderRecsMeta() {
    const b = state.recs.body;
    if (!b) return;
    const meta = $('#recs-meta');
    if (!state.why) {
      meta.innerHTML = `<span class="muted">${esc(b.surface)} surface · ${(b.items || []).length} items</span>`;
      return;
    }
    const src = b.source === 'fallback'
      ? `<span class="badge warn">fallback: ${esc(b.fallback)} (${esc(b.fallback_reason)})</span>`
      : `<span class="badge ok">${esc(b.source)}</span>`;
    meta.innerHTML = `<span class="badge">tier ${esc(b.tier || 'n/a')}</span>
      <span class="badge">variant ${esc(b.variant || 'n/a')}</span>${src}
      <div>${esc(b.surface)} surface · age ${esc(b.age_ms)} ms · server ${esc(b.took_ms)} ms · round trip ${state.recs.roundTrip.toFixed(1)} ms</div>`;
  }

  function applyWhy() {
    document.querySelectorAll('#rec-list .reason, #rec-list .why').forEach((el) => el.classList.toggle('hidden', !state.why));
    renderRecsMeta();
  }

  // -- shopper --------------------------------------------------------------------------------
  function setShopper(value) {
    if (value === 'anon') {
      let anon = load('retail-demo:anon-id', null);
      if (!anon) { anon = randId('web-'); save('retail-demo:anon-id', anon); }
      state.shopper = { id: anon, anon: true, label: 'Anonymous visitor' };
    } else {
      const s = state.config.shoppers.find((x) => x.user_id === value) || { user_id: value, label: '' };
      state.shopper = { id: s.user_id, anon: false, label: s.label };
    }
    save('retail-demo:shopper', value);
    const sk = 'retail-demo:session:' + recUser();
    state.sessionId = sessionStorage.getItem(sk) || randId('s-');
    sessionStorage.setItem(sk, state.sessionId);
    state.cart = load(cartKey(), []);
    state.variant = null;
    state.attribution = {};
    state.recs = { version: state.recs.version, ids: [] };
    renderCartCount();
  }

  async function init() {
    const r = await api('/v1/demo/config');
    if (!r.ok) {
      $('#view').innerHTML = `<div class="notice">Demo config unavailable: ${esc(r.body.detail || r.status)}</div>`;
      return;
    }
    state.config = r.body;
    const sel = $('#shopper');
    sel.innerHTML = '<option value="anon">Anonymous visitor</option>' + state.config.shoppers.map(
      (s) => `<option value="${esc(s.user_id)}">${esc(s.user_id)}${s.label ? ' · ' + esc(s.label) : ''}</option>`).join('');
    const wanted = new URLSearchParams(location.search).get('shopper') || load('retail-demo:shopper', 'anon');
    sel.value = [...sel.options].some((o) => o.value === wanted) ? wanted : 'anon';
    setShopper(sel.value);
    if (!state.config.write_key) {
      document.body.insertAdjacentHTML('afterbegin',
        '<div class="notice">Event ingestion is off on this server (RETAIL_WRITE_KEYS is not set): actions are not recorded.</div>');
    }
    $('#f-category').innerHTML += state.config.categories.map(
      (c) => `<option value="${esc(c)}">${esc(catLabel(c))}</option>`).join('');
    state.why = load('retail-demo:why', false) || new URLSearchParams(location.search).get('why') === '1';
    $('#why').checked = state.why;

    sel.addEventListener('change', () => {
      setShopper(sel.value);
      state.lastAction = `switched to ${sel.selectedOptions[0].text}`;
      route();
    });
    $('#why').addEventListener('change', () => { state.why = $('#why').checked; save('retail-demo:why', state.why); applyWhy(); });
    $('#search-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const q = $('#q').value.trim();
      if (!q) { location.hash = '#/'; return; }
      state.lastAction = `searched "${q}"`;
      sendEvent('search', { props: { query: q, surface: 'search' } });
      const target = '#/search?q=' + encodeURIComponent(q);
      if (location.hash === target) route(); else location.hash = target;
    });
    $('#f-apply').addEventListener('click', () => {
      state.lastAction = 'changed the filters';
      const v = state.view && state.view.name;
      if (v === 'search' || v === 'home') route(); else location.hash = '#/';
    });
    window.addEventListener('hashchange', route);
    await route();
  }

  init();
})();
