// The 12345 wallboard's script: no framework, no build step.
//
// It reads four snapshots from the API (queues with their figures now,
// agents with their state and since when, the live calls, the KPI report's
// total since local midnight) and follows the event stream (server-sent events read
// with fetch, so the token travels in the Authorization header, never in a
// URL). Any event schedules a fresh snapshot of queues and agents; the
// report, dearer, is fetched again at most every 5 s and only after a call
// event; a dropped stream reconnects
// with ?since= the last event seen, and a 410 (too far behind) resyncs.
// Times in state and the longest wait tick every second between snapshots.
// Everything from the API goes into the page as text, never as HTML.
'use strict';

// GB/T 33358-2016: calls answered within 15 s; 24-hour connection rate >= 95%.
const GOAL = 0.95;
// Within this many points below the goal a figure is amber, further red.
const MARGIN = 0.05;

const STATE_LABEL = {
  'available': '空闲 available',
  'ringing': '振铃 ringing',
  'on-call': '通话 on call',
  'wrap-up': '话后 wrap-up',
  'on-break': '小休 break',
  'logged-out': '签出 logged out',
  'offline': '未注册 offline',
};

const board = {
  token: null,
  queues: [],
  agents: [],
  total: null,
  lastSeq: null,
  // Server clock minus ours (from the Date header), so times in state hold
  // when the wall screen's clock is off.
  skewMs: 0,
  fetchedAt: Date.now(),
  refreshTimer: null,
  // The day's KPIs are computed over every CDR of the day: fetched only
  // after a call event, at most every REPORT_EVERY ms, never per event.
  reportDue: true,
  // Calls alive now (in a flow, waiting, ringing, talking).
  live: [],
  // Calls that ended since the report was last asked for: counted today
  // until the next report has them.
  endedSinceReport: 0,
};
const REPORT_EVERY = 5000;

const $ = (sel) => document.querySelector(sel);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function readToken() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem('yihaotong-token', decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname);
  }
  return sessionStorage.getItem('yihaotong-token');
}

async function api(path) {
  const r = await fetch(path, { headers: { Authorization: 'Bearer ' + board.token } });
  if (r.status === 401 || r.status === 403) {
    const body = await r.json().catch(() => ({}));
    throw Object.assign(new Error(body.error || r.statusText), { auth: true });
  }
  if (!r.ok) throw new Error(path + ': HTTP ' + r.status);
  const date = Date.parse(r.headers.get('Date') || '');
  if (!Number.isNaN(date)) board.skewMs = date - Date.now();
  return r.json();
}

async function refresh() {
  const [queues, agents, live] = await Promise.all([
    api('/api/v1/queues'), api('/api/v1/agents'), api('/api/v1/calls'),
  ]);
  board.queues = queues;
  board.agents = agents;
  board.live = live;
  board.fetchedAt = Date.now();
  render();
}

async function refreshReport() {
  board.reportDue = false;
  board.endedSinceReport = 0;
  const report = await api('/api/v1/report?since=today&by=hotline');
  board.total = report.find((r) => r.key === 'total') || null;
  render();
}

function scheduleRefresh() {
  if (board.refreshTimer) return;
  board.refreshTimer = setTimeout(async () => {
    board.refreshTimer = null;
    try { await refresh(); } catch (e) { setLive(false, e.message); }
  }, 200);
}

function percent(x) {
  return x == null ? '–' : (x * 100).toFixed(1) + '%';
}

function duration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, '0');
  return h > 0 ? h + ':' + String(m).padStart(2, '0') + ':' + sec : m + ':' + sec;
}

function grade(el, value) {
  el.classList.remove('ok', 'warn', 'bad');
  if (value == null) return;
  el.classList.add(value >= GOAL ? 'ok' : value >= GOAL - MARGIN ? 'warn' : 'bad');
}

function cell(row, text, test, cls) {
  const td = document.createElement('td');
  td.textContent = text;
  if (test) td.dataset.test = test;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function render() {
  const t = board.total;
  const set = (name, text) => { $('[data-test="' + name + '"]').textContent = text; };
  // Calls offered today: those ended (the report, and any since it) and
  // those alive now that arrived today (waiting callers count).
  const midnight = new Date(Date.now() + board.skewMs);
  midnight.setHours(0, 0, 0, 0);
  const liveToday = board.live.filter((c) => c.arrived >= midnight.getTime()).length;
  set('calls', (t ? t.calls : 0) + board.endedSinceReport + liveToday);
  set('answered', t ? t.answered : 0);
  set('abandoned', t ? t.abandoned + t.abandoned_short : 0);
  set('asa', t && t.asa != null ? t.asa.toFixed(1) + ' s' : '–');
  const connected = t ? t.connection_rate : null;
  const within = t && t.answered > 0 ? t.in_sl / t.answered : null;
  set('connection-rate', percent(connected));
  // The callers' own ratings after the call (satisfied + fair over rated).
  set('satisfaction', percent(t ? t.satisfaction : null));
  set('rated', '评价 rated ' + (t ? t.rated : 0));
  set('within-15s', percent(within));
  grade($('#kpi-connected'), connected);
  grade($('#kpi-within'), within);
  renderQueues();
  renderAgents();
}

function renderQueues() {
  const body = $('#queues');
  const since = Date.now() - board.fetchedAt;
  body.replaceChildren(...board.queues.map((q) => {
    const tr = document.createElement('tr');
    tr.dataset.queue = q.name;
    const name = cell(tr, q.name, null, 'name');
    if (q.description) {
      const small = document.createElement('small');
      small.textContent = q.description;
      name.appendChild(small);
    }
    cell(tr, q.waiting, 'waiting', q.waiting > 0 && q.free === 0 ? 'alert' : '');
    const longest = q.waiting > 0 ? q.longest_wait_ms + since : 0;
    cell(tr, q.waiting > 0 ? duration(longest) : '–', 'longest-wait', longest > 15000 ? 'alert' : '');
    cell(tr, q.free, 'available');
    cell(tr, q.ringing, 'ringing');
    cell(tr, q.on_call, 'on-call');
    cell(tr, q.wrap_up, 'wrap-up');
    cell(tr, q.on_break, 'on-break');
    return tr;
  }));
}

function renderAgents() {
  const now = Date.now() + board.skewMs;
  $('#agents').replaceChildren(...board.agents.map((a) => {
    const busy = a.state === 'ringing' || a.state === 'on-call' || a.state === 'wrap-up';
    const state = a.registered === false && !busy && a.state !== 'logged-out' ? 'offline' : a.state;
    const div = document.createElement('div');
    div.className = 'agent ' + state;
    div.dataset.agent = a.id;
    div.dataset.state = state;
    const b = document.createElement('b');
    b.textContent = a.name && a.name !== a.id ? a.id + ' ' + a.name : a.id;
    const time = document.createElement('time');
    time.dataset.test = 'in-state';
    time.textContent = a.since ? duration(now - a.since) : '';
    const label = document.createElement('span');
    label.textContent = (STATE_LABEL[state] || state) + (a.reason ? ' · ' + a.reason : '');
    div.append(b, time, label);
    return div;
  }));
}

function setLive(on, why) {
  const el = $('#live');
  el.className = 'live ' + (on ? 'on' : 'off');
  el.textContent = on ? '实时 · live' : '重连中 · reconnecting' + (why ? ' (' + why + ')' : '');
}

function onEventBlock(block) {
  let id = null;
  let kind = null;
  for (const line of block.split('\n')) {
    if (line.startsWith('id:')) id = line.slice(3).trim();
    else if (line.startsWith('event:')) kind = line.slice(6).trim();
  }
  if (id !== null) board.lastSeq = id;
  if (kind === 'cut-off') throw new Error('cut off');
  if (kind && kind.startsWith('call.')) board.reportDue = true;
  if (kind === 'call.ended') board.endedSinceReport += 1;
  if (kind) scheduleRefresh();
}

// Follows /events for as long as the page is open.
async function follow() {
  for (;;) {
    try {
      const since = board.lastSeq !== null ? '?since=' + encodeURIComponent(board.lastSeq) : '';
      const r = await fetch('/events' + since, {
        headers: { Authorization: 'Bearer ' + board.token, Accept: 'text/event-stream' },
      });
      if (r.status === 410) {
        board.lastSeq = null;
        await refresh();
        continue;
      }
      if (!r.ok) throw new Error('events: HTTP ' + r.status);
      setLive(true);
      // What happened while we were away.
      scheduleRefresh();
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf('\n\n')) >= 0) {
          onEventBlock(buffer.slice(0, cut));
          buffer = buffer.slice(cut + 2);
        }
      }
      setLive(false, 'stream ended');
    } catch (e) {
      setLive(false, e.message);
    }
    await sleep(2000);
  }
}

async function start() {
  board.token = readToken();
  if (!board.token) {
    $('#login').hidden = false;
    return;
  }
  try {
    await Promise.all([refresh(), refreshReport()]);
  } catch (e) {
    if (e.auth) {
      sessionStorage.removeItem('yihaotong-token');
      $('#login-error').textContent = e.message;
      $('#login').hidden = false;
      return;
    }
    setLive(false, e.message);
  }
  $('#board').hidden = false;
  setInterval(() => {
    $('#clock').textContent = new Date(Date.now() + board.skewMs).toLocaleTimeString('zh-CN', { hour12: false });
    renderQueues();
    renderAgents();
  }, 1000);
  setInterval(() => {
    if (board.reportDue) refreshReport().catch((e) => setLive(false, e.message));
  }, REPORT_EVERY);
  // A slow safety net: figures that change without an event (a registration lapsing).
  setInterval(scheduleRefresh, 30000);
  follow();
}

$('#login').addEventListener('submit', (ev) => {
  ev.preventDefault();
  sessionStorage.setItem('yihaotong-token', $('#token').value.trim());
  $('#login').hidden = true;
  $('#login-error').textContent = '';
  start();
});

start();
