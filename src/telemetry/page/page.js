// Keeps the server-rendered page current from /events, without ever reloading it.
(function () {
  'use strict';
  var KEEP = 50;
  var body = document.body;
  var rows = document.getElementById('targets').tBodies[0];
  var groupRows = document.getElementById('groups').tBodies[0];
  var groupsWrap = document.getElementById('groups-wrap');
  var log = document.getElementById('events').tBodies[0];
  var conn = document.getElementById('conn');
  var summary = document.getElementById('summary');
  // The server's clock minus ours, so "for how long" does not depend on this machine's clock.
  var skew = Date.parse(body.dataset.generated) - Date.now();
  var last = body.dataset.position;
  var stopping = body.dataset.stopping === 'true';
  var targets = new Map();
  var groups = new Map();
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

  // Puts a row in place of the old one, or in name order among the rows of `map`.
  function place(map, tbody, name, o) {
    var old = map.get(name);
    map.set(name, o);
    if (old) { old.tr.replaceWith(o.tr); return; }
    var next = null;
    map.forEach(function (x, n) { if (n > name && (!next || n < next.n)) next = { n: n, tr: x.tr }; });
    tbody.insertBefore(o.tr, next ? next.tr : null);
  }

  function show(t) {
    place(targets, rows, t.name, { t: t, tr: render(t) });
  }

  function conflictText(claimants) {
    return 'conflict: ' + claimants.join(', ') + ' claim primary';
  }

  // The same cells, in the same order, as the server renders for a group.
  function renderGroup(g) {
    var tr = el('tr');
    tr.dataset.group = g.name;
    var name = el('th', null, g.name);
    name.scope = 'row';
    if (g.required === false) name.append(' ', el('span', 'opt', '(optional)'));
    var active = el('td', 'active');
    if (!g.active) active.append(el('span', 'badge undecided', 'undecided'));
    else if (g.fallback_active) active.append(el('span', 'fallback', g.active), ' (fallback)');
    else active.append(el('span', 'badge up', g.active));
    var members = el('td', 'members');
    g.members.forEach(function (m, i) {
      if (i) members.append(', ');
      members.append(el('span', m === g.active ? 'on' : null, m));
    });
    var conflict = el('td', 'conflict');
    if (g.conflict) conflict.append(el('span', 'conflict', conflictText(g.claimants)));
    tr.append(name, active, el('td', 'for', g.active ? since(g) : ''), members, conflict,
      el('td', 'reason', g.reason || ''), el('td', 'id', g.event_id || ''));
    return tr;
  }

  function showGroup(g) {
    place(groups, groupRows, g.name, { g: g, tr: renderGroup(g) });
    groupsWrap.hidden = false;
  }

  // A reload may have added, changed or removed groups: take their settings from /status,
  // keeping what the stream has told since.
  function syncGroups(doc) {
    var wanted = new Set();
    (doc.groups || []).forEach(function (g) {
      wanted.add(g.name);
      var o = groups.get(g.name);
      showGroup(o ? Object.assign({}, o.g, { members: g.members, fallback: g.fallback, required: g.required }) : g);
    });
    groups.forEach(function (o, name) { if (!wanted.has(name)) { o.tr.remove(); groups.delete(name); } });
    groupsWrap.hidden = groups.size === 0;
  }

  function refresh() {
    return fetch('status', { cache: 'no-store' }).then(function (r) { return r.json(); });
  }

  function tally() {
    var n = { up: 0, down: 0, connecting: 0 };
    var ready = !stopping;
    // A member of a group counts toward readiness only through its group, as /readyz has it.
    var grouped = new Set();
    groups.forEach(function (o) {
      o.g.members.forEach(function (m) { grouped.add(m); });
      if (o.g.required !== false && (!o.g.active || o.g.fallback_active)) ready = false;
    });
    targets.forEach(function (o, name) {
      if (o.t.state === 'up') n.up++; else if (o.t.state === 'connecting') n.connecting++; else n.down++;
      if (o.t.required !== false && !grouped.has(name) && o.t.state !== 'up') ready = false;
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
    groups.clear();
    groupRows.replaceChildren();
    (doc.groups || []).forEach(showGroup);
    groupsWrap.hidden = groups.size === 0;
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
    group: function (d) {
      var o = groups.get(d.group);
      var g = o ? Object.assign({}, o.g) : { name: d.group, members: [], fallback: '', required: true, claimants: [] };
      g.active = d.active;
      g.fallback_active = d.fallback;
      if (d.fallback) g.fallback = d.active;
      g.conflict = d.conflict;
      if (!d.conflict) g.claimants = []; else if (d.claimants.length) g.claimants = d.claimants;
      if (d.event === 'change') { g.since = d.timestamp; g.reason = d.reason; }
      g.event_id = d.event_id;
      showGroup(g);
      var what = d.event === 'conflict' ? conflictText(d.claimants)
        : d.event === 'conflict_resolved' ? 'conflict over'
          : (d.previous_active ? d.previous_active + ' \u2192 ' : '') + d.active + ' (' + d.reason + ')';
      note(d.timestamp, d.group, what, d.event_id);
      // A group a reload added: its members and settings come from /status.
      if (!o) refresh().then(function (doc) { syncGroups(doc); tally(); }).catch(function () {});
    },
    target_added: function (d) {
      show({ name: d.target, address: '', probe: '', required: true, state: 'connecting',
        since: new Date(Date.now() + skew).toISOString(), failures: 0, last_error: null });
      note('', d.target, 'added', '');
      // The event names the target only: its address and probe come from /status.
      refresh().then(function (doc) {
        syncGroups(doc);
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
      refresh().then(function (doc) { syncGroups(doc); tally(); }).catch(function () {});
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
  Array.prototype.forEach.call(groupRows.rows, function (tr) {
    var d = tr.dataset;
    var list = function (v) { return v ? v.split(',') : []; };
    groups.set(d.group, { tr: tr, g: {
      name: d.group, members: list(d.members), fallback: d.fallback, active: d.active || null,
      fallback_active: d.fallbackActive === 'true', since: d.since, conflict: d.conflict === 'true',
      claimants: list(d.claimants), required: d.required !== 'false',
      reason: tr.cells[5].textContent || null, event_id: tr.cells[6].textContent || null
    } });
  });
  tally();
  state('connecting', 'connecting\u2026');
  connect();
  setInterval(function () {
    targets.forEach(function (o) { o.tr.cells[2].textContent = since(o.t); });
    groups.forEach(function (o) { o.tr.cells[2].textContent = o.g.active ? since(o.g) : ''; });
  }, 1000);
})();
