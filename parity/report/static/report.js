/* parity report viewer. No dependencies, no network. User data only ever reaches the DOM through
   textContent / setAttribute (never innerHTML), and image URLs are relative paths checked for a scheme. */
(function () {
  'use strict';
  var DATA = JSON.parse(document.getElementById('parity-data').textContent);
  var ITEMS = DATA.items;
  var TIERS = DATA.tiers.map(function (t) { return t.name; });  // best to worst (parity/tier.py)
  var MODES = ['side', 'slider', 'blend', 'blink', 'diff'];
  var MODE_LABEL = { side: 'side by side', slider: 'slider', blend: 'blend', blink: 'blink', diff: 'difference' };
  var PAGE = 30;
  var SVGNS = 'http://www.w3.org/2000/svg';

  var state = {
    tiers: new Set(TIERS), kase: '', step: '', knob: '', text: '', sort: 'worst',
    mode: 'side', order: [], pos: {}, shown: 0, current: -1,
    zoom: { z: 1, x: 0, y: 0 }, heat: 'heatmap_diff', slider: 50, blend: 50, gain: 4, blinkTimer: null,
    openErrors: new Set()  // error texts whose repeated ERROR items are shown one by one
  };

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs) {
    var e = document.createElement(tag);
    if (attrs) {
      Object.keys(attrs).forEach(function (k) {
        var v = attrs[k];
        if (v === null || v === undefined || v === false) return;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = String(v);
        else if (k.slice(0, 2) === 'on') e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      });
    }
    for (var i = 2; i < arguments.length; i++) {
      var kid = arguments[i];
      if (kid === null || kid === undefined) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }
  function safeUrl(u) {
    if (typeof u !== 'string' || !u) return null;
    if (/^[a-z][a-z0-9+.-]*:/i.test(u) || u.slice(0, 2) === '//') return null; // relative paths only
    return u;
  }
  function fmt(v) {
    if (v === null || v === undefined) return '–';
    if (typeof v === 'number') {
      if (Number.isInteger(v)) return String(v);
      var a = Math.abs(v);
      return (a !== 0 && (a < 1e-3 || a >= 1e5)) ? v.toExponential(3) : String(+v.toFixed(5));
    }
    if (typeof v === 'object') return JSON.stringify(v);
    return String(v);
  }
  // Every word shown of an item (its verdict, knob values) comes formatted in its page data (`texts`,
  // parity/report/texts.py): this script formats numbers of metrics and plots only.
  function texts(it) { return it.texts || {}; }
  function score(it) { return typeof it.score === 'number' ? it.score : null; }
  function tierRank(t) { return TIERS.indexOf(t); }
  function badge(t) { return el('span', { class: 'badge t-' + t, text: t }); }
  function itemHash(it) { return '#item=' + encodeURIComponent(it.id); }

  var byId = {};
  var groups = {};
  var errGroups = {};  // error text -> indices of the ERROR items that share it
  // an item with an error is one that could not be compared (tier ERROR): grouped by its error text
  ITEMS.forEach(function (it, i) { if (it.error) (errGroups[it.error] = errGroups[it.error] || []).push(i); });
  function errorGroup(it) { return it.error ? errGroups[it.error] || [] : []; }
  ITEMS.forEach(function (it, i) {
    byId[it.id] = i;
    it._text = [it.id, it.case || '', it.prompt || '', it.error || '', (it.mismatches || []).join(' ')]
      .join('\n').toLowerCase();
    var key = (it.case || '') + '\u0000' + (it.index === undefined ? '' : it.index) + '\u0000' + (it.prompt || '');
    (groups[key] = groups[key] || []).push(i);
    it._group = key;
    it._knobs = new Set((it.mismatches || []).concat((it.causes || []).map(function (c) { return String(c.knob); }),
      it.irreducible || []));
  });
  Object.keys(groups).forEach(function (k) {
    groups[k].sort(function (a, b) { return (ITEMS[a].step || 0) - (ITEMS[b].step || 0); });
  });
  var worstRank = {};
  (DATA.worst || []).forEach(function (id, r) { worstRank[id] = r; });

  // ------------------------------------------------------------------ filtering and sorting
  function matches(it) {
    if (!state.tiers.has(it.tier)) return false;
    if (state.kase !== '' && (it.case || '') !== state.kase) return false;
    if (state.step !== '' && String(it.step) !== state.step) return false;
    if (state.knob !== '' && !it._knobs.has(state.knob)) return false;
    if (state.text && it._text.indexOf(state.text) < 0) return false;
    return true;
  }
  function cmp(a, b) {
    var A = ITEMS[a], B = ITEMS[b], sa = score(A), sb = score(B);
    switch (state.sort) {
      case 'score': return (sa === null ? -1 : sa) - (sb === null ? -1 : sb) || (A.id < B.id ? -1 : 1);
      case 'score-desc': return (sb === null ? -1 : sb) - (sa === null ? -1 : sa) || (A.id < B.id ? -1 : 1);
      case 'step': return (A.step || 0) - (B.step || 0) || ((A.case || '') < (B.case || '') ? -1 : (A.case || '') > (B.case || '') ? 1 : 0) ||
        (A.index || 0) - (B.index || 0);
      case 'name': return A.id < B.id ? -1 : A.id > B.id ? 1 : 0;
      default: return worstRank[A.id] - worstRank[B.id];
    }
  }
  function applyFilters(keepCurrent) {
    var cur = state.current;
    state.order = [];
    for (var i = 0; i < ITEMS.length; i++) if (matches(ITEMS[i])) state.order.push(i);
    state.order.sort(cmp);
    // Repeated ERROR items (the same error text) show as one card with a "+ N more" chip until opened.
    var seenErr = {};
    state.order = state.order.filter(function (j) {
      var it = ITEMS[j];
      if (errorGroup(it).length < 2 || state.openErrors.has(it.error)) return true;
      if (seenErr[it.error]) return false;
      seenErr[it.error] = true;
      return true;
    });
    state.pos = {};
    state.order.forEach(function (i, p) { state.pos[i] = p; });
    stopBlink();
    cards.textContent = '';
    state.shown = 0;
    state.current = -1;
    document.getElementById('count').textContent = 'showing ' + state.order.length + ' of ' + ITEMS.length;
    if (!state.order.length) cards.append(el('p', { class: 'muted empty', text: 'No item matches the filters.' }));
    renderMore();
    if (keepCurrent && cur >= 0 && state.pos[cur] !== undefined) select(cur, false);
    writeHash();
  }

  // ------------------------------------------------------------------ the URL hash keeps the view
  // #item=ID&tier=DRIFT,ERROR&case=C&step=S&knob=K&q=TEXT&sort=S: a reload or a shared link shows the same view.
  function stateHash() {
    var p = [], enc = encodeURIComponent;
    if (state.current >= 0) p.push('item=' + enc(ITEMS[state.current].id));
    if (state.tiers.size !== TIERS.length) p.push('tier=' + TIERS.filter(function (t) { return state.tiers.has(t); }).join(','));
    [['case', state.kase], ['step', state.step], ['knob', state.knob], ['q', state.text]].forEach(function (kv) {
      if (kv[1] !== '') p.push(kv[0] + '=' + enc(kv[1]));
    });
    if (state.sort !== 'worst') p.push('sort=' + enc(state.sort));
    return p.length ? '#' + p.join('&') : '';
  }
  function writeHash() {
    var h = stateHash();
    if (location.hash !== h) history.replaceState(null, '', location.pathname + location.search + h);
  }
  function parseHash() {
    var out = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (part) {
      var k = part.indexOf('=');
      if (k <= 0) return;
      try { out[part.slice(0, k)] = decodeURIComponent(part.slice(k + 1)); } catch (e) { /* a broken part is ignored */ }
    });
    return out;
  }
  function filtersFromHash(h) {
    if (!['tier', 'case', 'step', 'knob', 'q', 'sort'].some(function (k) { return k in h; })) return false;
    resetFilters();
    if ('tier' in h) {
      state.tiers = new Set(h.tier.split(',').filter(function (t) { return TIERS.indexOf(t) >= 0; }));
      document.querySelectorAll('input[name=tier]').forEach(function (b) { b.checked = state.tiers.has(b.value); });
    }
    [['case', 'kase', 'f-case'], ['step', 'step', 'f-step'], ['knob', 'knob', 'f-knob'], ['q', 'text', 'f-text']].forEach(function (m) {
      if (m[0] in h) { state[m[1]] = h[m[0]]; document.getElementById(m[2]).value = h[m[0]]; }
    });
    if ('sort' in h) { state.sort = h.sort; document.getElementById('f-sort').value = h.sort; }
    return true;
  }

  // ------------------------------------------------------------------ cards
  var cards = document.getElementById('cards');
  var sentinel = document.getElementById('sentinel');

  function thumbFigure(it, key, label) {
    var src = safeUrl((it.t || {})[key]) || safeUrl((it.u || {})[key]);
    var d = (it.dims || {})[key];
    var fig = el('figure', { class: 'thumb' });
    if (src) {
      var w = 176, h = 176;
      if (d && d[0] && d[1]) { if (d[0] >= d[1]) h = Math.round(176 * d[1] / d[0]); else w = Math.round(176 * d[0] / d[1]); }
      fig.append(el('img', { src: src, loading: 'lazy', decoding: 'async', width: w, height: h, alt: label }));
    } else {
      fig.append(el('div', { class: 'missing', text: (it.u || {})[key] ? 'unreadable' : 'missing' }));
    }
    fig.append(el('figcaption', { text: label }));
    return fig;
  }
  function heatKey(it) {
    var u = it.u || {};
    if (state.heat === 'heatmap_ssim' && u.heatmap_ssim) return 'heatmap_ssim';
    return u.heatmap_diff ? 'heatmap_diff' : 'heatmap_ssim';
  }
  function card(i) {
    var it = ITEMS[i];
    var sc = score(it);
    var head = el('header', { class: 'card-head' },
      badge(it.tier),
      el('button', { type: 'button', class: 'card-title', text: it.id, title: 'open (Enter)' }),
      el('span', { class: 'gate ' + (it.passed ? 'pass' : 'fail') + (it.expected ? ' expected' : ''), text: (texts(it).verdict || {}).mark,
        title: (texts(it).verdict || {}).line + (it.expected ? ' · ' + it.expected : '') }),
      el('span', { class: 'num', text: sc === null ? 'no score' : sc.toFixed(4), title: DATA.metric }),
      el('span', { class: 'meta', text: [it.case, it.step !== undefined ? 'step ' + it.step : null,
        it.index !== undefined ? 'prompt ' + it.index : null].filter(function (x) { return x !== null && x !== undefined && x !== ''; }).join(' · ') }),
      el('a', { class: 'permalink', href: itemHash(it), title: 'permalink', text: '#' }));
    var c = el('article', { class: 'card t-' + it.tier, 'data-i': i, 'data-tier': it.tier }, head);
    c.dataset.id = it.id;
    if (it.prompt) c.append(el('p', { class: 'prompt', text: it.prompt }));
    var hk = heatKey(it);
    var ext = isExternal(it);
    var thumbs = el('div', { class: 'thumbs' }, thumbFigure(it, 'preview', 'preview'),
      thumbFigure(it, 'render', ext ? 'your render' : 'render'));
    if (ext && (it.u || {}).reproduction) thumbs.append(thumbFigure(it, 'reproduction', 'reproduction'));
    thumbs.append(thumbFigure(it, hk, !(it.u || {})[hk] ? 'heatmap' : hk === 'heatmap_ssim' ? 'SSIM map' : 'difference'));
    c.append(thumbs);
    if (ext) c.append(el('p', { class: 'source', text: sourceText(it.source) }));
    if (it.explanation && it.explanation.verdict) c.append(el('p', { class: 'explain', text: it.explanation.verdict }));
    var chips = el('div', { class: 'chips' });
    (it.mismatches || []).forEach(function (k) { chips.append(el('span', { class: 'chip mis', text: k, title: 'mismatched knob' })); });
    (it.irreducible || []).forEach(function (k) { chips.append(el('span', { class: 'chip irr', text: k, title: 'irreducible difference' })); });
    if (it.noise_floor && it.noise_floor.applied) chips.append(el('span', { class: 'chip irr', text: 'within noise floor', title: it.noise_floor.reason || '' }));
    if (it.causes && it.causes.length) {
      var c0 = texts(it).causes[0];
      chips.append(el('span', { class: 'cause', text: 'top cause: ' + it.causes[0].knob + ' ' + c0[0] + ' → ' + c0[1] }));
    }
    if (it.size_mismatch) chips.append(el('span', { class: 'chip mis', text: 'size mismatch' + (texts(it).size_mismatch ? ': ' + texts(it).size_mismatch : '') }));
    var same = errorGroup(it);
    if (same.length > 1 && !state.openErrors.has(it.error)) {
      chips.append(el('button', { type: 'button', class: 'chip errgroup', text: '+ ' + (same.length - 1) + ' more item(s) with this error',
        title: 'show them', onclick: function (ev) { ev.stopPropagation(); state.openErrors.add(it.error); applyFilters(true); } }));
    }
    if (chips.childNodes.length) c.append(chips);
    if (it.error) c.append(el('pre', { class: 'error', text: it.error }));
    c.addEventListener('click', function (ev) {
      if (ev.target.closest('.detail') || ev.target.closest('a')) return;
      if (state.current === i) collapse(); else select(i, false);
    });
    return c;
  }
  function renderMore() {
    var end = Math.min(state.order.length, state.shown + PAGE);
    var frag = document.createDocumentFragment();
    for (var p = state.shown; p < end; p++) frag.append(card(state.order[p]));
    cards.append(frag);
    state.shown = end;
  }
  function renderUntil(p) { while (state.shown <= p && state.shown < state.order.length) renderMore(); }
  function cardEl(i) { return cards.querySelector('article[data-i="' + i + '"]'); }

  new IntersectionObserver(function (entries) {
    if (entries.some(function (e) { return e.isIntersecting; }) && state.shown < state.order.length) {
      renderMore();
      // Still visible (short cards)? keep filling on the next frame.
      requestAnimationFrame(function () {
        var r = sentinel.getBoundingClientRect();
        if (r.top < innerHeight + 600 && state.shown < state.order.length) renderMore();
      });
    }
  }, { rootMargin: '800px' }).observe(sentinel);

  // ------------------------------------------------------------------ selection
  function select(i, scroll) {
    if (state.pos[i] === undefined) return;
    collapse();
    renderUntil(state.pos[i]);
    var c = cardEl(i);
    if (!c) return;
    state.current = i;
    state.zoom = { z: 1, x: 0, y: 0 };
    c.classList.add('open');
    c.append(detail(ITEMS[i]));
    writeHash();
    if (scroll !== false) c.scrollIntoView({ block: 'start' });
  }
  function selectById(id, scroll) {
    var i = byId[id];
    if (i === undefined) return false;
    if (!matches(ITEMS[i])) { resetFilters(); applyFilters(false); }
    if (state.pos[i] === undefined && ITEMS[i].error) { state.openErrors.add(ITEMS[i].error); applyFilters(false); }
    select(i, scroll);
    return true;
  }
  function collapse() {
    stopBlink();
    if (state.current < 0) return;
    var c = cardEl(state.current);
    if (c) { c.classList.remove('open'); var d = c.querySelector('.detail'); if (d) d.remove(); }
    state.current = -1;
  }
  function move(delta) {
    if (!state.order.length) return;
    var p = state.current >= 0 ? state.pos[state.current] + delta : (delta > 0 ? 0 : state.order.length - 1);
    p = Math.max(0, Math.min(state.order.length - 1, p));
    select(state.order[p], true);
  }

  // ------------------------------------------------------------------ detail view
  function detail(it) {
    var d = el('div', { class: 'detail' });
    var bar = el('div', { class: 'toolbar' });
    MODES.forEach(function (m, k) {
      bar.append(el('button', { type: 'button', class: 'mode' + (state.mode === m ? ' on' : ''), 'data-mode': m,
        text: MODE_LABEL[m], title: 'key ' + (k + 1), onclick: function () { setMode(m); } }));
    });
    var ctl = el('span', { class: 'modectl' });
    bar.append(ctl);
    if ((it.u || {}).heatmap_diff && (it.u || {}).heatmap_ssim) {
      var hs = el('select', { class: 'heatsel', 'aria-label': 'heatmap' },
        el('option', { value: 'heatmap_diff', text: 'difference heatmap' }), el('option', { value: 'heatmap_ssim', text: 'SSIM map' }));
      hs.value = heatKey(it);
      hs.addEventListener('change', function () { state.heat = hs.value; buildViewer(it, d); });
      bar.append(hs);
    }
    bar.append(el('span', { class: 'zoomctl' },
      el('button', { type: 'button', text: '−', title: 'zoom out (-)', onclick: function () { zoomBy(1 / 1.5); } }),
      el('span', { class: 'zoomlabel', text: '1×' }),
      el('button', { type: 'button', text: '+', title: 'zoom in (+)', onclick: function () { zoomBy(1.5); } }),
      el('button', { type: 'button', text: 'fit', title: 'fit (0)', onclick: function () { state.zoom = { z: 1, x: 0, y: 0 }; applyZoom(); } })));
    var links = el('span', { class: 'links' });
    [['preview', 'preview'], ['render', 'render'], ['heatmap_diff', 'diff map'], ['heatmap_ssim', 'SSIM map']].forEach(function (p) {
      var u = safeUrl((it.u || {})[p[0]]);
      if (u) links.append(el('a', { href: u, target: '_blank', rel: 'noopener', text: p[1] }));
    });
    ((it.u || {}).refs || []).forEach(function (r, i) {
      var u = safeUrl(r);
      if (u) links.append(el('a', { href: u, target: '_blank', rel: 'noopener', class: 'ref', text: 'reference ' + (i + 1) }));
    });
    bar.append(links);
    d.append(bar);
    d.append(el('div', { class: 'viewer' }));
    if (it.size_mismatch) d.append(el('p', { class: 'warn', text: 'size mismatch: ' + (texts(it).size_mismatch || fmt(it.size_mismatch)) }));
    buildViewer(it, d);

    var info = el('div', { class: 'info' });
    var xs = externalSection(it); if (xs) info.append(xs);
    info.append(paramsSection(it));
    var irr = irreducibleSection(it); if (irr) info.append(irr);
    var nf = noiseFloorSection(it); if (nf) info.append(nf);
    info.append(causesSection(it));
    var rs = recoverySection(it); if (rs) info.append(rs);
    info.append(metricsSection(it));
    var sch = scheduleSection(it); if (sch) info.append(sch);
    d.append(info);
    var tl = timelineSection(it); if (tl) d.append(tl);
    return d;
  }

  // The heatmap's scale, drawn beside it (the PNG itself has the render's exact size, so panes line up).
  function heatLegend(hk) {
    var lg = (DATA.legends || {})[hk];
    if (!lg) return null;
    var bar = el('div', { class: 'hbar' });
    bar.style.background = DATA.legends.gradient;
    var ticks = el('div', { class: 'hticks' });
    lg.ticks.forEach(function (t) {
      var s = el('span', { text: t[1] });
      s.style.left = (t[0] * 100) + '%';
      ticks.append(s);
    });
    return el('div', { class: 'hlegend' }, bar, ticks, el('div', { class: 'htitle', text: lg.title }));
  }

  function layer(it, key, cls) {
    var u = safeUrl((it.u || {})[key]);
    if (!u) return el('div', { class: 'layer missing ' + (cls || ''), text: key + ' missing' });
    return el('img', { class: 'layer ' + (cls || ''), src: u, alt: key, draggable: 'false' });
  }
  function pane(label, kids, extraClass) {
    var stage = el('div', { class: 'stage' });
    kids.forEach(function (k) { stage.append(k); });
    var p = el('div', { class: 'pane ' + (extraClass || '') }, stage, el('div', { class: 'plabel', text: label }));
    attachZoom(p);
    return p;
  }
  function aspect(it) {
    var d = (it.dims || {}).preview || (it.dims || {}).render;
    return d && d[0] && d[1] ? d[0] + ' / ' + d[1] : '1 / 1';
  }
  function buildViewer(it, d) {
    stopBlink();
    var v = d.querySelector('.viewer');
    v.textContent = '';
    v.className = 'viewer mode-' + state.mode;
    v.style.setProperty('--ar', aspect(it));
    if (!((it.dims || {}).preview || (it.dims || {}).render)) {
      // no recorded size (no thumbnail yet): take the aspect ratio from the first image that loads
      v.addEventListener('load', function (ev) {
        var im = ev.target;
        if (im.naturalWidth) v.style.setProperty('--ar', im.naturalWidth + ' / ' + im.naturalHeight);
      }, { capture: true, once: true });
    }
    var ctl = d.querySelector('.modectl');
    ctl.textContent = '';
    var hk = heatKey(it), hl = hk === 'heatmap_ssim' ? 'SSIM map' : 'difference heatmap';
    if (state.mode === 'side') {
      var hp = pane(hl, [layer(it, hk)]), lg = heatLegend(hk);
      v.append(pane('preview', [layer(it, 'preview')]), pane(isExternal(it) ? 'your render' : 'render', [layer(it, 'render')]),
        lg ? el('div', { class: 'panecol' }, hp, lg) : hp);
    } else {
      var top = layer(it, 'render', 'over');
      var cmpPane = pane('', [layer(it, 'preview'), top], 'compare');
      var lab = cmpPane.querySelector('.plabel');
      if (state.mode === 'slider') {
        // The clip goes on a wrapper, so the image keeps one box in every mode.
        var clipper = el('div', { class: 'clipper' });
        top.replaceWith(clipper);
        clipper.append(top);
        var line = el('div', { class: 'split' });
        cmpPane.querySelector('.stage').append(line);
        var setS = function (x) {
          state.slider = Math.max(0, Math.min(100, x));
          clipper.style.clipPath = 'inset(0 0 0 ' + state.slider + '%)';
          line.style.left = state.slider + '%';
          rng.value = state.slider;
        };
        var rng = el('input', { type: 'range', min: 0, max: 100, step: 0.5, value: state.slider, 'aria-label': 'slider position', class: 'slider-range' });
        rng.addEventListener('input', function () { setS(+rng.value); });
        cmpPane._slide = function (fx) { setS(fx * 100); };
        ctl.append(el('label', null, 'preview ◀ ', rng, ' ▶ render'));
        lab.textContent = 'preview | render';
        setS(state.slider);
      } else if (state.mode === 'blend') {
        var b = el('input', { type: 'range', min: 0, max: 100, value: state.blend, 'aria-label': 'render opacity', class: 'blend-range' });
        var setB = function () { state.blend = +b.value; top.style.opacity = state.blend / 100; lab.textContent = 'render at ' + state.blend + '% over preview'; };
        b.addEventListener('input', setB);
        ctl.append(el('label', null, 'preview ', b, ' render'));
        setB();
      } else if (state.mode === 'blink') {
        var show = function (which) {
          top.style.visibility = which === 'render' ? 'visible' : 'hidden';
          cmpPane.dataset.showing = which;
          lab.textContent = 'blink: ' + which;
        };
        show('render');
        state.blinkTimer = setInterval(function () { show(cmpPane.dataset.showing === 'render' ? 'preview' : 'render'); }, 600);
        ctl.append(el('span', { class: 'muted', text: 'alternating every 0.6 s' }));
      } else if (state.mode === 'diff') {
        top.classList.add('difference');
        var g = el('input', { type: 'range', min: 1, max: 16, step: 1, value: state.gain, 'aria-label': 'difference gain', class: 'gain-range' });
        var setG = function () { state.gain = +g.value; cmpPane.querySelector('.stage').style.filter = 'brightness(' + state.gain + ')'; lab.textContent = '|preview − render| × ' + state.gain; };
        g.addEventListener('input', setG);
        ctl.append(el('label', null, 'gain ', g));
        setG();
      }
      v.append(cmpPane, pane(hl, [layer(it, hk)]));
    }
    applyZoom();
  }
  function setMode(m) {
    state.mode = m;
    document.querySelectorAll('#modes button, .detail .mode').forEach(function (b) { b.classList.toggle('on', b.dataset.mode === m); });
    if (state.current >= 0) {
      var c = cardEl(state.current);
      if (c && c.querySelector('.detail')) buildViewer(ITEMS[state.current], c.querySelector('.detail'));
    }
  }
  function stopBlink() { if (state.blinkTimer) { clearInterval(state.blinkTimer); state.blinkTimer = null; } }

  // ------------------------------------------------------------------ linked zoom (fractions of the pane, so
  // panes of different sizes stay in step)
  function clampZoom() {
    var z = state.zoom;
    z.z = Math.max(1, Math.min(32, z.z));
    z.x = Math.max(1 - z.z, Math.min(0, z.x));
    z.y = Math.max(1 - z.z, Math.min(0, z.y));
  }
  function applyZoom() {
    clampZoom();
    var z = state.zoom;
    var t = 'translate(' + (z.x * 100) + '%,' + (z.y * 100) + '%) scale(' + z.z + ')';
    document.querySelectorAll('.detail .stage').forEach(function (s) { s.style.transform = t; s.classList.toggle('pixel', z.z >= 2); });
    document.querySelectorAll('.detail .zoomlabel').forEach(function (l) { l.textContent = (+z.z.toFixed(2)) + '×'; });
  }
  function zoomAt(f, fx, fy) {
    var z = state.zoom, nz = Math.max(1, Math.min(32, z.z * f));
    z.x = fx - (fx - z.x) * nz / z.z;
    z.y = fy - (fy - z.y) * nz / z.z;
    z.z = nz;
    applyZoom();
  }
  function zoomBy(f) { zoomAt(f, 0.5, 0.5); }
  function attachZoom(p) {
    p.addEventListener('wheel', function (ev) {
      ev.preventDefault();
      var r = p.getBoundingClientRect();
      zoomAt(ev.deltaY < 0 ? 1.25 : 0.8, (ev.clientX - r.left) / r.width, (ev.clientY - r.top) / r.height);
    }, { passive: false });
    p.addEventListener('pointerdown', function (ev) {
      var r = p.getBoundingClientRect();
      var slide = p._slide && !ev.shiftKey;
      var sx = ev.clientX, sy = ev.clientY, ox = state.zoom.x, oy = state.zoom.y;
      p.setPointerCapture(ev.pointerId);
      function mv(e) {
        if (slide) {
          var z = state.zoom;
          p._slide(((e.clientX - r.left) / r.width - z.x) / z.z);
        } else {
          state.zoom.x = ox + (e.clientX - sx) / r.width;
          state.zoom.y = oy + (e.clientY - sy) / r.height;
          applyZoom();
        }
      }
      if (slide) mv(ev);
      function up() { p.removeEventListener('pointermove', mv); p.removeEventListener('pointerup', up); p.removeEventListener('pointercancel', up); }
      p.addEventListener('pointermove', mv);
      p.addEventListener('pointerup', up);
      p.addEventListener('pointercancel', up);
    });
  }

  // ------------------------------------------------------------------ info sections
  function section(title, cls) { return el('section', { class: 'sec ' + (cls || '') }, el('h3', { text: title })); }
  function valueCell(it, side, knob) {
    var e = ((it.params || {})[side] || {})[knob];
    if (e === undefined) return el('td', { class: 'muted', text: 'not recorded' });
    var src = (e && typeof e === 'object') ? e.source : null;
    return el('td', null, el('span', { class: 'val', text: texts(it).params[side][knob] }), src ? el('span', { class: 'src', text: src }) : null);
  }
  function paramsSection(it) {
    var s = section(isExternal(it) ? 'Parameters: preview vs what your stack was asked to render' : 'Parameters: preview vs inference', 'params');
    var pv = (it.params || {}).preview || {}, inf = (it.params || {}).inference || {};
    var irr = new Set(DATA.irreducible.concat(it.irreducible || []));
    var mis = new Set(it.mismatches || []);
    var keys = Object.keys(pv).concat(Object.keys(inf)).filter(function (k, i, a) { return a.indexOf(k) === i && !irr.has(k); });
    var order = DATA.knobs;
    keys.sort(function (a, b) {
      var ia = order.indexOf(a), ib = order.indexOf(b);
      return (ia < 0 ? 99 : ia) - (ib < 0 ? 99 : ib) || (a < b ? -1 : 1);
    });
    keys.sort(function (a, b) { return (mis.has(b) ? 1 : 0) - (mis.has(a) ? 1 : 0); });
    if (!keys.length) { s.append(el('p', { class: 'muted', text: 'no parameters recorded' })); return s; }
    var tb = el('tbody');
    keys.forEach(function (k) {
      tb.append(el('tr', { class: mis.has(k) ? 'mismatch' : '' }, el('th', { text: k }), valueCell(it, 'preview', k), valueCell(it, 'inference', k),
        el('td', { class: 'flag', text: mis.has(k) ? '≠' : '' })));
    });
    s.append(el('table', { class: 'kv' }, el('thead', null, el('tr', null, el('th', { text: 'knob' }),
      el('th', { text: 'preview (source)' }), el('th', { text: 'inference (source)' }), el('th'))), tb));
    return s;
  }
  function irreducibleSection(it) {
    var list = it.irreducible || [];
    if (!list.length) return null;
    var s = section('Irreducible differences', 'irreducible');
    s.append(el('p', { class: 'muted', text: 'A re-render cannot remove these; they are not counted as mismatches.' }));
    var det = {};  // knob -> {preview, inference, note}: the runner's words for each side
    (it.irreducible_details || []).forEach(function (d) { if (d && d.knob) det[d.knob] = d; });
    var words = texts(it).irreducible || {};
    var tb = el('tbody');
    list.forEach(function (k) {
      var d = det[k];
      tb.append(d ? el('tr', { title: d.note || '' }, el('th', { text: k }), el('td', { text: words[k][0] }), el('td', { text: words[k][1] }))
        : el('tr', null, el('th', { text: k }), valueCell(it, 'preview', k), valueCell(it, 'inference', k)));
    });
    s.append(el('table', { class: 'kv' }, tb));
    return s;
  }
  function noiseFloorSection(it) {
    var nf = it.noise_floor;
    if (!nf) return null;
    var s = section('Noise floor', 'noisefloor');
    var verdict = nf.error ? 'not measured: ' + nf.error
      : !nf.metrics ? 'not measured: ' + (nf.reason || '')
      : (nf.applied ? 'Judged against the measured noise floor: ' + nf.tier_before + ' → ' + nf.tier + '. '
                    : 'Measured, and the difference is above it: the tier stays ' + nf.tier + '. ') + (nf.reason || '');
    s.append(el('p', { text: verdict }));
    var tb = el('tbody');
    (nf.twin || []).forEach(function (t) { tb.append(el('tr', null, el('th', { text: t.knob }), el('td', { text: t.how }))); });
    (nf.unmeasured || []).forEach(function (t) { tb.append(el('tr', null, el('th', { text: t.knob }), el('td', { class: 'muted', text: 'not sampled: ' + t.why }))); });
    if (nf.metrics) tb.append(el('tr', null, el('th', { text: 'render vs twin' }),
      el('td', { class: 'num', text: 'SSIM-Y ' + Number(nf.metrics.ssim_y).toFixed(5) + ', worst window ' + Number(nf.metrics.window_density).toFixed(3) + ', ratio allowed ' + nf.ratio })));
    s.append(el('table', { class: 'kv' }, tb));
    return s;
  }
  // ------------------------------------------------------------------ renders from the user's own stack
  function isExternal(it) { return !!(it.source && it.source.kind && it.source.kind !== 'engine'); }
  function sourceText(src) {
    var kind = { folder: 'folder', manifest: 'manifest', endpoint: 'inference server' }[src.kind] || src.kind;
    var t = 'rendered by your stack: ' + kind + ' ' + (src.location || '');
    if (src.file) t += ' · file ' + src.file;
    if (src.request_id) t += ' · request ' + src.request_id;
    return t;
  }
  function externalSection(it) {
    if (!isExternal(it)) return null;
    var s = section('Your stack', 'external');
    s.append(el('p', { class: 'muted', text: sourceText(it.source) }));
    var trio = el('div', { class: 'trio' });
    [['external', 'your render'], ['preview', 'preview'], ['reproduction', 'parity\'s best reproduction']].forEach(function (p) {
      var key = p[0] === 'external' && !(it.u || {}).external ? 'render' : p[0];
      var u = safeUrl((it.u || {})[key]);
      var fig = el('figure', { class: 'trio-img', 'data-key': p[0] });
      fig.append(u ? el('img', { src: u, alt: p[1] }) : el('div', { class: 'missing', text: 'none' }));
      fig.append(el('figcaption', { text: p[1] }));
      trio.append(fig);
    });
    s.append(trio);
    var ex = it.explanation;
    if (!ex) { s.append(el('p', { class: 'muted', text: 'not explained (the render meets its gate, or explaining is off)' })); return s; }
    if (ex.error) { s.append(el('pre', { class: 'error', text: 'explaining failed: ' + ex.error })); return s; }
    s.append(el('p', { class: 'explain', text: ex.verdict || '' }));
    var keys = Object.keys(ex.settings || {});
    if (keys.length) {
      var tb = el('tbody');
      keys.forEach(function (k) {
        tb.append(el('tr', { 'data-knob': k }, el('th', { text: k.replace(/_/g, ' ') }),
          el('td', { text: texts(it).settings[k][0] }), el('td', { text: texts(it).settings[k][1] })));
      });
      s.append(el('table', { class: 'kv recovered' },
        el('thead', null, el('tr', null, el('th', { text: 'setting' }), el('th', { text: 'your stack (recovered)' }), el('th', { text: 'previews' }))), tb));
    }
    if (typeof ex.score === 'number') s.append(el('p', { class: 'muted', text: 'reproduction vs your render: SSIM ' + ex.score.toFixed(4) + (ex.tier ? ' (' + ex.tier + ')' : '') }));
    return s;
  }

  function causesSection(it) {
    var s = section('Ranked causes', 'causes');
    var cs = it.causes || [];
    if (!cs.length) { s.append(el('p', { class: 'muted', text: it.passed ? 'none needed' : 'no cause found' })); return s; }
    var base = score(it);
    var ol = el('ol');
    cs.forEach(function (c, n) {
      var a = typeof c.ssim_aligned === 'number' ? c.ssim_aligned : null;
      var words = texts(it).causes[n];
      var li = el('li', null, el('b', { text: String(c.knob) }), ' ', words[0], ' → ', words[1]);
      if (a !== null) {
        li.append(el('span', { class: 'num', text: '  score if aligned ' + a.toFixed(4) + (base !== null ? ' (' + (a - base >= 0 ? '+' : '') + (a - base).toFixed(4) + ')' : '') }));
        var bar = el('span', { class: 'bar' }, el('span', { style: 'width:' + Math.max(0, Math.min(100, a * 100)).toFixed(1) + '%' }));
        li.append(bar);
      }
      ol.append(li);
    });
    s.append(ol);
    return s;
  }
  function metricsSection(it) {
    var s = section('Metrics', 'metrics');
    var tb = el('tbody');
    var vars = it.metric_variants || {};
    Object.keys(it.metrics || {}).forEach(function (k) {
      tb.append(el('tr', null, el('th', { text: k }), el('td', { class: 'num', text: fmt(it.metrics[k]) }), el('td', { class: 'muted', text: vars[k] ? fmt(vars[k]) : '' })));
    });
    (texts(it).facts || []).forEach(function (r) {
      tb.append(el('tr', null, el('th', { text: r[0] }), el('td', { colspan: 2, text: r[1] })));
    });
    s.append(el('table', { class: 'kv' }, tb));
    return s;
  }
  function scheduleSection(it) {
    var sc = it.schedule;
    if (!sc || !Array.isArray(sc.preview) || !Array.isArray(sc.inference)) return null;
    var a = sc.preview, b = sc.inference, n = Math.max(a.length, b.length), differs = a.length !== b.length;
    for (var i = 0; i < n && !differs; i++) if (Math.abs(a[i] - b[i]) > 1e-6) differs = true;
    var s = section('Schedule', 'schedule');
    var words = texts(it).schedule || {};
    var said = function (side, len) { return words[side] + ', ' + (len - 1) + ' steps'; };
    var line = 'preview ' + said('preview', a.length) + (differs ? ' · inference ' + said('inference', b.length) : ' · inference identical');
    s.append(el('p', { text: line }));
    if (!differs) return s;
    var tb = el('tbody');
    for (var j = 0; j < n; j++) {
      var x = a[j], y = b[j], dd = (typeof x === 'number' && typeof y === 'number') ? y - x : null;
      tb.append(el('tr', { class: dd === null || Math.abs(dd) > 1e-6 ? 'mismatch' : '' }, el('td', { text: j }),
        el('td', { text: fmt(x) }), el('td', { text: fmt(y) }), el('td', { text: dd === null ? 'n/a' : fmt(dd) })));
    }
    s.append(el('details', null, el('summary', { text: 'sigma table (' + a.length + ' vs ' + b.length + ' sigmas)' }),
      el('div', { class: 'scroll' }, el('table', { class: 'kv sigma' }, el('thead', null, el('tr', null,
      el('th', { text: 'i' }), el('th', { text: 'preview σ' }), el('th', { text: 'inference σ' }), el('th', { text: 'Δ' }))), tb))));
    return s;
  }
  // Parameter recovery (suspects): the verdict, then per searched knob its curve: score against value, the
  // recorded value (grey dashed) and the recovered one (green) marked; an ambiguous answer's value is a candidate.
  function recoverySection(it) {
    var sp = it.suspects;
    if (!sp || typeof sp !== 'object') return null;
    var s = section('Recovered settings', 'recovery');
    s.append(el('p', { text: sp.verdict || '' }));
    var words = texts(it).recovery || { searches: [], recovered: {} };
    var found = {}, candidate = {};
    (sp.best || []).forEach(function (b) { found[b.knob] = b.value; });
    // two answers that explain the preview equally: each knob's curve marks its candidate, none says "recovered"
    (sp.ambiguous || []).forEach(function (a) {
      Object.keys(a.changes || {}).forEach(function (k) { if (!(k in found)) found[k] = a.changes[k]; candidate[k] = true; });
    });
    var unit = sp.metric === 'psnr' ? 'PSNR dB' : 'score';
    var byKnob = {};
    // per knob the trace with the most renders: its coarse scan and basin (later screens are two renders)
    (sp.searches || []).forEach(function (t, n) {
      var probes = t.probes || [];
      if (!byKnob[t.knob] || probes.length > byKnob[t.knob].probes.length) byKnob[t.knob] = { knob: t.knob, recorded: t.recorded, probes: probes, words: words.searches[n] };
    });
    Object.keys(byKnob).forEach(function (k) {
      var pl = knobPlot(byKnob[k], found[k], (sp.recorded || {})[k], unit, words.recovered[k], candidate[k]);
      if (pl) s.append(pl);
    });
    var meta = [];
    if (typeof sp.extra_renders === 'number') meta.push(sp.extra_renders + ' extra renders for this item');
    if (typeof sp.case_renders === 'number') meta.push(sp.case_renders + ' for its case so far');
    if (sp.confirmed_from) meta.push('values found on ' + sp.confirmed_from + ', confirmed here');
    var cost = sp.cost;
    if (cost && typeof cost.renders === 'number') meta.push(cost.renders + ' of ' + cost.budget + ' budgeted renders for the case; wall time on the real model ' +
      (typeof cost.estimate_s === 'number' ? 'about ' + Math.round(cost.estimate_s) + ' s (' + cost.estimate_basis + ')' : (cost.estimate_basis || 'unknown')));
    if (meta.length) s.append(el('p', { class: 'muted', text: meta.join(' · ') }));
    return s;
  }
  function numOf(v) {
    if (typeof v === 'number') return v;
    if (typeof v === 'string' && v.indexOf('static:') === 0) return parseFloat(v.slice(7));
    return null;
  }
  function knobPlot(trace, recovered, recorded, unit, recoveredText, isCandidate) {
    var pts = trace.probes.map(function (p, n) { return [numOf(p.value), p.score, p.tier, trace.words.probes[n]]; })
      .filter(function (p) { return p[0] !== null && typeof p[1] === 'number'; })
      .sort(function (a, b) { return a[0] - b[0]; });
    if (pts.length < 2) return null;
    var finite = pts.map(function (p) { return p[1]; }).filter(function (v) { return v < 999; });
    var ylo = Math.min.apply(null, finite.length ? finite : [0]), yhi = Math.max.apply(null, finite.length ? finite : [1]);
    yhi += (yhi - ylo) * 0.15 + 1e-6;   // room for identical renders (infinite PSNR) drawn at the top
    var xlo = pts[0][0], xhi = pts[pts.length - 1][0];
    var rv = numOf(recorded === undefined ? trace.recorded : recorded), fv = numOf(recovered);
    [rv, fv].forEach(function (v) { if (v !== null) { xlo = Math.min(xlo, v); xhi = Math.max(xhi, v); } });
    if (xhi - xlo < 1e-9) xhi = xlo + 1;
    var W = 320, H = 110, L = 34, R = 8, T = 8, B = 20;
    function X(v) { return L + (v - xlo) / (xhi - xlo) * (W - L - R); }
    function Y(v) { return T + (1 - (Math.min(v, yhi) - ylo) / (yhi - ylo)) * (H - T - B); }
    function node(tag, attrs) {
      var n = document.createElementNS(SVGNS, tag);
      Object.keys(attrs).forEach(function (a) { n.setAttribute(a, attrs[a]); });
      return n;
    }
    var svg = node('svg', { viewBox: '0 0 ' + W + ' ' + H, class: 'curve', role: 'img',
      'aria-label': trace.knob + ': ' + unit + ' against value' });
    svg.append(node('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, class: 'axis' }));
    if (rv !== null) svg.append(node('line', { x1: X(rv), y1: T, x2: X(rv), y2: H - B, class: 'mark-recorded' }));
    if (fv !== null) svg.append(node('line', { x1: X(fv), y1: T, x2: X(fv), y2: H - B, class: 'mark-recovered' }));
    svg.append(node('path', { class: 'spark-line', d: pts.map(function (p, i) {
      return (i ? 'L' : 'M') + X(p[0]).toFixed(1) + ' ' + Y(p[1]).toFixed(1); }).join('') }));
    pts.forEach(function (p) {
      var c = node('circle', { cx: X(p[0]).toFixed(1), cy: Y(p[1]).toFixed(1), r: 3, class: p[2] ? 'dot t-' + p[2] : 'dot' });
      var tip = node('title', {}); tip.textContent = p[3] + ': ' + (p[1] >= 999 ? 'identical' : p[1].toFixed(3));
      c.append(tip); svg.append(c);
    });
    [[xlo, 'start'], [xhi, 'end']].forEach(function (xe) {
      var t = node('text', { x: X(xe[0]), y: H - 5, class: 'tick', 'text-anchor': xe[1] }); t.textContent = String(+xe[0].toPrecision(4)); svg.append(t);
    });
    var yl = node('text', { x: 2, y: T + 8, class: 'tick' }); yl.textContent = unit; svg.append(yl);
    var cap = el('figcaption', null, el('b', { text: trace.knob }), ' recorded ' + trace.words.recorded +
      (recovered === undefined ? ' · not changed' : (isCandidate ? ' · candidate ' + recoveredText + ' (ambiguous)' : ' · recovered ' + recoveredText)) +
      ' · ' + trace.probes.length + ' renders');
    return el('figure', { class: 'knobplot' }, svg, cap);
  }
  function timelineSection(it) {
    var g = groups[it._group] || [];
    if (g.length < 2) return null;
    var s = section('Step timeline: the same prompt across training steps', 'timeline');
    var pts = g.map(function (i) { return score(ITEMS[i]); });
    var vals = pts.filter(function (v) { return v !== null; });
    if (vals.length > 1) {
      var lo = Math.min.apply(null, vals), hi = Math.max.apply(null, vals);
      if (hi - lo < 1e-6) { lo -= 0.01; hi += 0.01; }
      // a fixed drawing width scaled to the page (CSS width 100%): 100 steps must not widen the page
      var W = Math.min(640, Math.max(160, g.length * 60)), H = 46, dx = (W - 60) / Math.max(1, g.length - 1);
      var svg = document.createElementNS(SVGNS, 'svg');
      svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
      svg.setAttribute('class', 'spark');
      var dstr = '';
      g.forEach(function (i, k) {
        var v = pts[k]; if (v === null) return;
        var x = 30 + k * dx, y = 6 + (1 - (v - lo) / (hi - lo)) * (H - 12);
        dstr += (dstr ? 'L' : 'M') + x.toFixed(1) + ' ' + y.toFixed(1);
        var c = document.createElementNS(SVGNS, 'circle');
        c.setAttribute('cx', x); c.setAttribute('cy', y.toFixed(1)); c.setAttribute('r', i === state.current ? 4 : 2.5);
        c.setAttribute('class', 'dot t-' + ITEMS[i].tier);
        svg.append(c);
      });
      var path = document.createElementNS(SVGNS, 'path');
      path.setAttribute('d', dstr); path.setAttribute('class', 'spark-line');
      svg.prepend(path);
      s.append(svg);
    }
    var strip = el('div', { class: 'strip' });
    g.forEach(function (i) {
      var o = ITEMS[i];
      var src = safeUrl((o.t || {}).render) || safeUrl((o.u || {}).render);
      var b = el('button', { type: 'button', class: 'tl t-' + o.tier + (i === state.current ? ' cur' : ''), title: o.id },
        src ? el('img', { src: src, loading: 'lazy', alt: 'step ' + o.step, width: 56, height: 56 }) : el('span', { class: 'missing', text: '?' }),
        el('span', { text: 'step ' + fmt(o.step) }), el('span', { class: 'num', text: score(o) === null ? o.tier : score(o).toFixed(3) }));
      b.addEventListener('click', function (ev) { ev.stopPropagation(); selectById(o.id, true); });
      strip.append(b);
    });
    s.append(strip);
    return s;
  }

  // ------------------------------------------------------------------ controls
  function resetFilters() {
    state.tiers = new Set(TIERS); state.kase = ''; state.step = ''; state.knob = ''; state.text = '';
    document.querySelectorAll('input[name=tier]').forEach(function (b) { b.checked = true; });
    document.getElementById('f-case').value = '';
    document.getElementById('f-step').value = '';
    document.getElementById('f-knob').value = '';
    document.getElementById('f-text').value = '';
  }
  var stepSel = document.getElementById('f-step');
  ITEMS.map(function (it) { return it.step; }).filter(function (s, i, a) { return s !== undefined && a.indexOf(s) === i; })
    .sort(function (a, b) { return a - b; })
    .forEach(function (st) { stepSel.append(el('option', { value: String(st), text: 'step ' + st })); });
  document.querySelectorAll('input[name=tier]').forEach(function (b) {
    b.addEventListener('change', function () {
      if (b.checked) state.tiers.add(b.value); else state.tiers.delete(b.value);
      applyFilters(true);
    });
  });
  document.getElementById('f-case').addEventListener('change', function (e) { state.kase = e.target.value; applyFilters(true); });
  stepSel.addEventListener('change', function (e) { state.step = e.target.value; applyFilters(true); });
  document.getElementById('f-knob').addEventListener('change', function (e) { state.knob = e.target.value; applyFilters(true); });
  var tt = null;
  document.getElementById('f-text').addEventListener('input', function (e) {
    clearTimeout(tt);
    tt = setTimeout(function () { state.text = e.target.value.trim().toLowerCase(); applyFilters(true); }, 120);
  });
  document.getElementById('f-sort').addEventListener('change', function (e) { state.sort = e.target.value; applyFilters(true); });
  var modes = document.getElementById('modes');
  MODES.forEach(function (m, k) {
    modes.append(el('button', { type: 'button', class: 'mode' + (m === state.mode ? ' on' : ''), 'data-mode': m,
      text: MODE_LABEL[m], title: 'view mode (key ' + (k + 1) + ', m cycles)', onclick: function () { setMode(m); } }));
  });
  document.querySelectorAll('.tierchip').forEach(function (b) {
    b.addEventListener('click', function () {
      state.tiers = new Set([b.dataset.tier]);
      document.querySelectorAll('input[name=tier]').forEach(function (x) { x.checked = x.value === b.dataset.tier; });
      applyFilters(false);
      document.getElementById('controls').scrollIntoView();
    });
  });
  document.querySelectorAll('tr.pick').forEach(function (tr) {
    tr.addEventListener('click', function () {
      if (tr.dataset.case !== undefined) { state.kase = tr.dataset.case; document.getElementById('f-case').value = tr.dataset.case; }
      if (tr.dataset.knob !== undefined) { state.knob = tr.dataset.knob; document.getElementById('f-knob').value = tr.dataset.knob; }
      applyFilters(false);
      document.getElementById('controls').scrollIntoView();
    });
  });
  var plotItems = document.querySelector('#plot-items svg');
  if (plotItems) {
    plotItems.addEventListener('click', function (ev) {
      var r = plotItems.getBoundingClientRect(), vb = plotItems.viewBox.baseVal;
      var x = (ev.clientX - r.left) / r.width * vb.width;
      var n = DATA.worst.length, k = Math.round((x - 40) / (vb.width - 50) * Math.max(1, n - 1));
      k = Math.max(0, Math.min(n - 1, k));
      location.hash = '#item=' + encodeURIComponent(DATA.worst[k]);
    });
  }
  var help = document.getElementById('help');
  document.getElementById('help-btn').addEventListener('click', function () { help.hidden = !help.hidden; });

  document.addEventListener('keydown', function (ev) {
    var t = ev.target;
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (t && (t.tagName === 'INPUT' || t.tagName === 'SELECT' || t.tagName === 'TEXTAREA')) {
      if (ev.key === 'Escape') t.blur();
      return;
    }
    var k = ev.key;
    if (k === 'j' || k === 'ArrowDown' || k === 'ArrowRight') move(1);
    else if (k === 'k' || k === 'ArrowUp' || k === 'ArrowLeft') move(-1);
    else if (k === 'm') setMode(MODES[(MODES.indexOf(state.mode) + 1) % MODES.length]);
    else if (k >= '1' && k <= '5') setMode(MODES[+k - 1]);
    else if (k === '+' || k === '=') zoomBy(1.5);
    else if (k === '-') zoomBy(1 / 1.5);
    else if (k === '0') { state.zoom = { z: 1, x: 0, y: 0 }; applyZoom(); }
    else if (k === '/') document.getElementById('f-text').focus();
    else if (k === 'Escape') { collapse(); writeHash(); }
    else if (k === '?') help.hidden = !help.hidden;
    else return;
    ev.preventDefault();
  });

  function fromHash() {
    var h = parseHash();
    if (filtersFromHash(h)) applyFilters(false);
    return 'item' in h ? selectById(h.item, true) : false;
  }
  window.addEventListener('hashchange', fromHash);

  var h0 = parseHash();  // read before the first applyFilters rewrites the hash
  filtersFromHash(h0);
  applyFilters(false);
  if ('item' in h0) selectById(h0.item, true);
  document.body.dataset.readyMs = String(Math.round(performance.now()));
  document.body.dataset.ready = '1';
})();
