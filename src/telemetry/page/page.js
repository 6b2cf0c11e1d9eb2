// Keeps the server-rendered page current from /events, without ever reloading it.
(function () {
  'use strict';
  var KEEP = 50;
  var body = document.body;
  var rows = document.getElementById('targets').tBodies[0];
  var log = document.getElementById('events').tBodies[0];
  var conn = document.getElementById('conn');
  var summary = document.getElementById('summary');
  // The server's clock minus ours, so "for how long" does not depend on this machine's clock.
  var skew = Date.parse(body.dataset.generated) - Date.now();
  var last = body.dataset.position;
  var stopping = body.dataset.stopping === 'true';
  var targets = new Map();
  var source = null;
  var delay = 1000;
  // About an hour of attempts at the longest delay; then the page says so and stops.
  var tries = 240;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function duration(ms) {
    var s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return s + ' s';
    if (s < 3600) return Math.floor(s / 60) + ' min ' + (s % 60) + ' s';
    if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min';
    return Math.floor(s / 86400) + ' d ' + Math.floor(s % 86400 / 3600) + ' h';
  }

  function since(t) {
    var at = Date.parse(t.since);
    return isNaN(at) ? '' : duration(Date.now() + skew - at);
  }

  // The same cells, in the same order, as the server renders.
  function render(t) {
    var tr = el('tr');
    tr.dataset.target = t.name;
    tr.dataset.state = t.state;
    var name = el('th', null, t.name);
    name.scope = 'row';
    if (t.required === false) name.append(' ', el('span', 'opt', '(optional)'));
    var state = el('td', 'state');
    state.append(el('span', 'badge ' + t.state, t.state));
    tr.append(name, state, el('td', 'for', since(t)), el('td', 'failures', t.failures),
      el('td', 'error', t.last_error || ''), el('td', 'address', t.address), el('td', 'probe', t.probe));
    return tr;
  }

  function show(t) {
    var tr = render(t);
    var old = targets.get(t.name);
    targets.set(t.name, { t: t, tr: tr });
    if (old) { old.tr.replaceWith(tr); return; }
    var next = null;
    targets.forEach(function (o, name) { if (name > t.name && (!next || name < next.t.name)) next = o; });
    rows.insertBefore(tr, next ? next.tr : null);
  }

  function tally() {
    var n = { up: 0, down: 0, connecting: 0 };
    var ready = !stopping;
    targets.forEach(function (o) {
      if (o.t.state === 'up') n.up++; else if (o.t.state === 'connecting') n.connecting++; else n.down++;
      if (o.t.required !== false && o.t.state !== 'up') ready = false;
    });
    summary.textContent = n.up + ' up / ' + n.down + ' down' + (n.connecting ? ' / ' + n.connecting + ' connecting' : '') +
      ' \u00b7 ' + (stopping ? 'stopping' : ready ? 'ready' : 'not ready') +
      ' \u00b7 instance ' + body.dataset.instance + ' \u00b7 tether ' + body.dataset.version;
  }

  function snapshot(doc) {
    skew = Date.parse(doc.generated_at) - Date.now();
    stopping = doc.stopping;
    body.dataset.instance = doc.instance;
    body.dataset.version = doc.version;
    targets.clear();
    rows.replaceChildren();
    doc.targets.forEach(show);
  }

  function note(time, target, what, id) {
    var tr = el('tr');
    var cell = el('td', 'time');
    if (time) {
      var t = el('time', null, time.slice(11, 19));
      t.dateTime = time;
      t.title = time;
      cell.append(t);
    }
    var who = el('th', null, target);
    who.scope = 'row';
    tr.append(cell, who, el('td', 'what', what), el('td', 'id', id));
    log.insertBefore(tr, log.firstChild);
    while (log.rows.length > KEEP) log.deleteRow(-1);
  }

  var on = {
    snapshot: function (d) { snapshot(d.status); },
    transition: function (d) {
      var o = targets.get(d.target);
      var t = o ? Object.assign({}, o.t) : { name: d.target, probe: '', required: true, state: d.previous_state };
      if (t.state !== d.state || !t.since) { t.state = d.state; t.since = d.timestamp; }
      t.address = d.address;
      t.failures = d.failures;
      if (d.last_error !== null && d.last_error !== undefined) t.last_error = d.last_error;
      show(t);
      note(d.timestamp, d.target, (d.previous_state === d.state ? '' : d.previous_state + ' \u2192 ') +
        d.state + ' (' + d.event + ')', d.event_id);
    },
    target_added: function (d) {
      show({ name: d.target, address: '', probe: '', required: true, state: 'connecting',
        since: new Date(Date.now() + skew).toISOString(), failures: 0, last_error: null });
      note('', d.target, 'added', '');
      // The event names the target only: its address and probe come from /status.
      fetch('status', { cache: 'no-store' }).then(function (r) { return r.json(); }).then(function (doc) {
        doc.targets.forEach(function (t) {
          var o = targets.get(t.name);
          if (t.name !== d.target || !o) return;
          // The stream may already have moved its state on: keep that, take the settings.
          show(Object.assign({}, o.t, { address: t.address, probe: t.probe, required: t.required }));
        });
        tally();
      }).catch(function () {});
    },
    target_removed: function (d) {
      var o = targets.get(d.target);
      if (o) { o.tr.remove(); targets.delete(d.target); }
      note('', d.target, 'removed', '');
    },
    reset: function () { state('resynchronising', 'resynchronising\u2026'); }
  };

  function state(name, text) {
    conn.dataset.state = name;
    conn.textContent = text;
  }

  function connect() {
    var es = new EventSource('events?since=' + encodeURIComponent(last));
    source = es;
    es.onopen = function () { delay = 1000; tries = 240; state('live', '\u25cf live'); };
    es.onerror = function () {
      es.close();
      if (source !== es) return;
      if (--tries < 0) { state('offline', 'disconnected; reload the page to retry'); return; }
      state('reconnecting', 'reconnecting\u2026');
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 15000);
    };
    Object.keys(on).forEach(function (kind) {
      es.addEventListener(kind, function (e) {
        if (e.lastEventId) last = e.lastEventId;
        on[kind](JSON.parse(e.data));
        if (kind === 'snapshot') state('live', '\u25cf live');
        tally();
      });
    });
  }

  // Take over the rows the server rendered, with the fields they carry.
  Array.prototype.forEach.call(rows.rows, function (tr) {
    var c = tr.cells;
    targets.set(tr.dataset.target, { tr: tr, t: {
      name: tr.dataset.target, state: tr.dataset.state, since: tr.dataset.since,
      required: tr.dataset.required !== 'false', failures: Number(c[3].textContent),
      last_error: c[4].textContent || null, address: c[5].textContent, probe: c[6].textContent
    } });
  });
  tally();
  state('connecting', 'connecting\u2026');
  connect();
  setInterval(function () {
    targets.forEach(function (o) { o.tr.cells[2].textContent = since(o.t); });
  }, 1000);
})();
