// PyChat in the browser: the line protocol (docs/PROTOCOL.md) over the WebSocket door (/ws),
// one text frame per line. Vanilla ES2020, no build step, no dependencies.
//
// The same three layers as the Python clients (clients/session.py, clients/state.py,
// clients/gui.py), in one file:
// - parseLine: a server line to an event (wire/replies.py's parse_server_line)
// - Session: the WebSocket, capabilities, login and resume token, END pairing, keepalive,
//   reconnect with backoff restoring name (or login) and room, lines typed while away
// - ChatState: what is shown (uid, name, room, members and names, history de-duplication);
//   apply(event) returns the log line to show
// - the page: the DOM, built with createElement and textContent only. Text from the network
//   is never parsed as HTML; links are <a> elements whose href is checked to be http(s).
// - files (PROTOCOL Part 5): /upload, then the bytes by HTTP PUT to the UPLOAD: URL (on the
//   page's own origin), with progress; FILE: lines as links, images with a preview.
'use strict';

(() => {
  const LOBBY = '#lobby';
  const HISTORY_LINES = 20;
  const LOG_LIMIT = 1000;            // lines kept in the log
  const KEEPALIVE_MS = 20000;        // a /ping after this much silence; no answer in half: gone
  const KEEPALIVE_TOKEN = 'pychat-keepalive';
  const BACKOFF_FIRST_MS = 200;
  const BACKOFF_MAX_MS = 5000;
  const RETRY_EVERY_MS = 500;        // a restored name still held by the dead connection
  const RESTORE_FOR_MS = 15000;
  const ROOMS_POLL_MS = 5000;
  const MAX_LINE_BYTES = 4096;
  const DEDUP_MAX = 2000;
  const STORE_KEY = 'pychat.session'; // sessionStorage: name, room, account, token (never a password)

  const NAME_RE = /^[A-Za-z0-9_-]{1,24}$/;
  const ROOM_RE = /^#[A-Za-z0-9_-]{1,32}$/;
  const ALIASES = { w: 'msg', exit: 'quit' };
  // the codes of an /upload's refusal (an ERROR: with another code answers something else)
  const UPLOAD_REFUSALS = new Set(['too-large', 'quota', 'rate', 'store-full', 'no-such-user',
    'uploads-off', 'bad-size', 'storage', 'usage', 'not-sent']);

  // ---- rules the server applies too (wire/commands.py), checked before sending ---------------

  function nameProblem(name) {
    if (!name || /\s/.test(name)) return 'a name is one word of 1-24 letters, digits, _ or -';
    if (!NAME_RE.test(name)) return `invalid name ${name}: 1-24 letters, digits, _ or -`;
    if (/^\d{6}$/.test(name)) return `invalid name ${name}: six digits would read as a user ID`;
    if (/^[uU]\d{6}$/.test(name)) {
      return `invalid name ${name}: u and six digits would read as a user ID`;
    }
    return '';
  }

  function passwordProblem(password) {
    const length = [...password].length; // characters, as the server counts them
    if (length < 8 || length > 256 || /[\s\x00-\x1f\x7f-\x9f]/.test(password)) {
      return 'a password is 8-256 characters, with no spaces or control characters';
    }
    return '';
  }

  /** The word a server with /cap end closes this line's reply with (END <word>); "" for none. */
  function endWord(line) {
    if (!line || line[0] !== '/' || line.startsWith('//')) return '';
    const word = line.slice(1).split(/[ \t]/, 1)[0].toLowerCase();
    return ALIASES[word] || word;
  }

  // ---- server lines to events (wire/replies.py) --------------------------------------------------

  const PARTY = '([A-Za-z0-9_-]{1,24})';
  const PRIV_TO = new RegExp(`^\\[Private\\] To ${PARTY}: ([\\s\\S]*)$`);
  const PRIV_FROM = new RegExp(`^\\[Private\\] ${PARTY}: ([\\s\\S]*)$`);
  const PUBLIC = /^(\d{6}): ([\s\S]*)$/;
  const ROOM_HEAD = /^#[A-Za-z0-9_-]{1,32}$/;
  const FILE_BODY = /^(\d{6}) (\d{1,18}) (\S+) (.+)$/; // FILE:<uid> <bytes> <url> <name>

  const isCount = (text) => /^\d{1,18}$/.test(text);
  const list = (body) => (body ? body.split(',') : []);

  function pairs(body) {
    return list(body).map((item) => {
      const i = item.lastIndexOf('=');
      return i < 0 ? ['', item] : [item.slice(0, i), item.slice(i + 1)];
    });
  }

  function parseLine(line) {
    const tags = {};
    let body = line;
    if (line.startsWith('@')) {
      const m = /^@(\S+) /.exec(line);
      if (m) {
        body = line.slice(m[0].length);
        for (const item of m[1].split(';')) {
          const i = item.indexOf('=');
          tags[i < 0 ? item : item.slice(0, i)] = i < 0 ? '' : item.slice(i + 1);
        }
      }
    }
    const time = tags.time || null;
    let m;
    if ((m = PRIV_TO.exec(body))) {
      return { type: 'chat', raw: line, time, uid: m[1], text: m[2], priv: true, to: m[1] };
    }
    if ((m = PRIV_FROM.exec(body))) {
      return { type: 'chat', raw: line, time, uid: m[1], text: m[2], priv: true, to: null };
    }
    if ((m = PUBLIC.exec(body))) {
      return { type: 'chat', raw: line, time, uid: m[1], text: m[2], priv: false, to: null };
    }
    const colon = body.indexOf(':');
    if (colon >= 0) {
      const head = body.slice(0, colon);
      const rest = body.slice(colon + 1);
      switch (head) {
        case 'ID': return { type: 'id', raw: line, uid: rest };
        case 'USERS': return { type: 'users', raw: line, uids: list(rest) };
        case 'NAMES': return { type: 'names', raw: line, names: pairs(rest) };
        case 'JOINED': return { type: 'joined', raw: line, uids: list(rest) };
        case 'LEFT': return { type: 'left', raw: line, uids: list(rest) };
        case 'NAMED': return { type: 'named', raw: line, names: pairs(rest) };
        case 'ROOM': return { type: 'room', raw: line, room: rest };
        case 'ROOMS':
          return {
            type: 'rooms', raw: line,
            rooms: pairs(rest).filter(([, n]) => isCount(n)).map(([r, n]) => [r, Number(n)]),
          };
        case 'ERROR': return { type: 'error', raw: line, message: rest.trim(), code: tags.code || null };
        default: break;
      }
      if (head === 'HISTORY' && isCount(rest)) return { type: 'history', raw: line, count: Number(rest) };
      if (head === 'DELAYED' && isCount(rest)) return { type: 'delayed', raw: line, count: Number(rest) };
      if (head === 'TOPIC' || head === 'KICKED') {
        const sp = rest.indexOf(' ');
        const room = sp < 0 ? rest : rest.slice(0, sp);
        const text = sp < 0 ? '' : rest.slice(sp + 1);
        if (ROOM_HEAD.test(room)) return { type: head.toLowerCase(), raw: line, room, text };
      }
      if (head === 'UPLOAD' && rest && !/\s/.test(rest)) return { type: 'uploadUrl', raw: line, url: rest };
      if (head === 'FILE') {
        const f = FILE_BODY.exec(rest);
        if (f) {
          return { type: 'file', raw: line, time, uid: f[1], size: Number(f[2]), url: f[3], name: f[4] };
        }
      }
      if (head === 'TOKEN' && rest.startsWith(' ')) {
        const fields = rest.trim().split(/\s+/);
        if (fields.length === 3) {
          return { type: 'token', raw: line, name: fields[0], token: fields[1], expires: fields[2] };
        }
      }
    }
    if (body === 'Welcome to PyChat Server!') return { type: 'welcome', raw: line };
    if (body === 'BYE' || body.startsWith('BYE ')) return { type: 'bye', raw: line, reason: body.slice(4) };
    if (body === 'PONG' || body.startsWith('PONG ')) return { type: 'pong', raw: line, token: body.slice(5) };
    if (body.startsWith('OK ')) return { type: 'ok', raw: line, what: body.slice(3) };
    if (body.startsWith('END ') && !body.slice(4).includes(' ')) return { type: 'end', raw: line, word: body.slice(4) };
    return { type: 'info', raw: line };
  }

  // ---- the session: one WebSocket at a time (clients/session.py) --------------------------------

  function wsUrl() {
    return (location.protocol === 'https:' ? 'wss:' : 'ws:') + '//' + location.host + '/ws';
  }

  class Session {
    constructor(onEvent, { name = '', room = LOBBY, account = '', token = '', login = null, restore = false } = {}) {
      this.onEvent = onEvent;
      this.uid = '';
      this.name = account ? account : '';
      this.room = room || LOBBY;
      this.account = account;
      this.token = token;
      this.wantedName = login || account ? '' : name;
      this.loginCred = login; // {name, password, register}: held only until answered
      this.state = 'connecting';
      this.attempt = 0;
      this.reconnects = restore ? 1 : 0; // after a reload: the old page's name may still be held
      this.delay = BACKOFF_FIRST_MS;
      this.out = []; // {line, show, typed, upload}: lines to send once connected and restored
      this.closing = false;
      this.stopWhy = '';
      this.c = null;
      this.timer = setInterval(() => this.tick(), 250);
    }

    // -- the page's side

    start() { this.connect(); return this; }

    send(line, show = false, typed = true, upload = null) {
      this.out.push({ line, show, typed, upload });
      if (this.state === 'closed' && !this.closing) {
        this.stopWhy = '';
        this.connect();
      }
      this.pump();
    }

    /** A name chosen in the login form (not typed): a refusal is the form's to show. */
    setName(name) { this.send(`/nick ${name}`, false, false); }

    login(name, password, register) {
      this.loginCred = { name, password, register };
      if (this.state === 'closed') {
        this.stopWhy = '';
        this.closing = false;
        this.connect();
      }
      this.pump();
    }

    quit() {
      this.closing = true;
      const c = this.c;
      if (c && c.ws.readyState === WebSocket.OPEN) {
        c.quitting = true;
        this.write('/quit');
      } else {
        this.closed('you left');
      }
    }

    // -- internals

    emit(ev) {
      try { this.onEvent(ev); } catch (e) { console.error('pychat: event failed', ev.type, e); }
    }

    status(state, text, log = true) {
      this.state = state;
      this.emit({ type: 'status', state, text, attempt: this.attempt, log });
    }

    connect() {
      if (this.c && !this.c.dead) return;
      const where = location.host;
      this.status('connecting', `connecting to ${where}` + (this.attempt ? ` (attempt ${this.attempt})` : ''), false);
      let ws;
      try {
        ws = new WebSocket(wsUrl());
      } catch (e) {
        this.lost(String(e && e.message ? e.message : e));
        return;
      }
      const c = {
        ws, dead: false, ready: false, restoring: false, pendingNicks: [], retryNameAt: 0,
        restoreDeadline: 0, wantRoom: '', quitting: false, lastRx: Date.now(), pingSent: 0,
        ends: false, asked: [], auths: [], writtenLogin: null, registerAfter: null,
        tokensAsked: 0, named: '', retryAuthAt: 0, authRetries: 0,
        uploads: [], // the /upload lines written, oldest first: each answered by UPLOAD: or ERROR:
      };
      this.c = c;
      ws.onopen = () => {
        if (c.dead) return;
        this.attempt = 0;
        this.delay = BACKOFF_FIRST_MS;
      };
      ws.onmessage = (e) => {
        if (c.dead || typeof e.data !== 'string') return;
        c.lastRx = Date.now();
        c.pingSent = 0;
        if (this.line(e.data)) this.drop(c, null);
      };
      ws.onclose = (e) => {
        if (c.dead) return;
        this.drop(c, c.quitting ? null : `the connection closed${e.code && e.code !== 1000 ? ` (${e.code})` : ''}`);
      };
      ws.onerror = () => {}; // onclose follows and says it
    }

    /** The connection ``c`` is over: why (null: we, or the server, said goodbye). */
    drop(c, why) {
      if (c.dead) return;
      c.dead = true;
      c.ws.onopen = c.ws.onmessage = c.ws.onclose = c.ws.onerror = null;
      // /upload lines the server had not answered: asked again on the next connection
      this.out.unshift(...c.uploads.map((u) => ({ line: u.line, show: false, typed: false, upload: u })));
      c.uploads = [];
      try { c.ws.close(); } catch (e) { /* closing already */ }
      if (why === null || this.stopWhy || this.closing) {
        this.closed(this.stopWhy ? `disconnected: ${this.stopWhy}` : 'disconnected');
        return;
      }
      this.lost(why);
    }

    closed(text) {
      this.closing = false;
      this.status('closed', text);
    }

    lost(why) {
      this.attempt += 1;
      const wait = Math.min(this.delay, BACKOFF_MAX_MS) * (0.8 + 0.4 * Math.random());
      this.delay = Math.min(this.delay * 2, BACKOFF_MAX_MS);
      this.status('reconnecting', `disconnected (${why}); reconnecting in `
        + `${(wait / 1000).toFixed(1)} s (attempt ${this.attempt})`);
      setTimeout(() => {
        if (this.state === 'reconnecting') this.connect();
      }, wait);
    }

    write(line, show = false) {
      const c = this.c;
      if (!c || c.dead || c.ws.readyState !== WebSocket.OPEN) return;
      c.ws.send(line);
      const word = c.ends ? endWord(line) : '';
      if (word) c.asked.push([word, show]);
    }

    tick() {
      const c = this.c;
      if (!c || c.dead || c.ws.readyState !== WebSocket.OPEN) return;
      const now = Date.now();
      if (c.retryNameAt && now >= c.retryNameAt) {
        c.retryNameAt = 0;
        this.nick(this.name || this.wantedName, true);
      }
      if (c.retryAuthAt && now >= c.retryAuthAt) {
        c.retryAuthAt = 0;
        this.retryAuth();
      }
      if (c.pingSent) {
        if (now - c.pingSent > KEEPALIVE_MS / 2) this.drop(c, 'no answer to keepalive');
      } else if (now - c.lastRx >= KEEPALIVE_MS) {
        this.write(`/ping ${KEEPALIVE_TOKEN}`);
        c.pingSent = now;
      }
    }

    pump() {
      const c = this.c;
      if (!c || c.dead || !c.ready) return;
      this.takeLogin();
      while (this.out.length && !c.dead) {
        const { line, show, typed, upload } = this.out.shift();
        const word = endWord(line);
        const args = line.split(/[ \t]+/).slice(1);
        if (word === 'nick' && args.length === 1 && !nameProblem(args[0])) {
          c.pendingNicks.push({ name: args[0], restore: false, typed });
        } else if (word === 'quit') {
          c.quitting = true;
          this.closing = true;
        } else if (word === 'login' && args.length === 2) {
          c.auths.push({ word: 'login', name: args[0] });
        } else if (word === 'register' && args.length === 1) {
          c.auths.push({ word: 'register', name: this.name });
        } else if (word === 'resume' && args.length === 2) {
          c.auths.push({ word: 'resume', name: args[0], token: args[1] });
        }
        if (upload) c.uploads.push(upload);
        this.write(line, show);
        if (word === 'join') this.askHistory();
      }
    }

    askHistory() { this.write(`/history ${HISTORY_LINES}`); }

    nick(name, restore, typed = false) {
      this.c.pendingNicks.push({ name, restore, typed });
      this.write(`/nick ${name}`);
    }

    // -- logging in

    takeLogin() {
      const c = this.c;
      const cred = this.loginCred;
      if (!cred || cred === c.writtenLogin || c.retryAuthAt) return;
      this.writeLogin(cred, false);
    }

    writeLogin(cred, restore) {
      const c = this.c;
      c.writtenLogin = cred;
      if (cred.register && c.named !== cred.name) {
        c.registerAfter = cred; // /register makes the session's current name an account
        this.nick(cred.name, false);
      } else if (cred.register) {
        c.auths.push({ word: 'register', name: cred.name, cred, restore });
        this.write(`/register ${cred.password}`);
      } else {
        c.auths.push({ word: 'login', name: cred.name, cred, restore });
        this.write(`/login ${cred.name} ${cred.password}`);
      }
    }

    resume() {
      this.c.auths.push({ word: 'resume', name: this.account, token: this.token, restore: true });
      this.write(`/resume ${this.account} ${this.token}`);
    }

    retryAuth() {
      if (this.loginCred) this.writeLogin(this.loginCred, this.c.restoring);
      else if (this.account && this.token) this.resume();
    }

    forget(cred) {
      if (!cred) return;
      const c = this.c;
      if (this.loginCred === cred) this.loginCred = null; // the password is gone
      if (c.writtenLogin === cred) c.writtenLogin = null;
      if (c.registerAfter === cred) c.registerAfter = null;
    }

    loggedIn(word, name) {
      const c = this.c;
      c.authRetries = 0;
      const heads = word === 'register' ? ['register'] : ['login', 'resume'];
      const auth = c.auths.length && heads.includes(c.auths[0].word) ? c.auths.shift() : null;
      this.account = this.name = name;
      if (auth && auth.word === 'resume') {
        this.token = auth.token;
        this.emit({ type: 'loggedIn', name, registered: false, restored: !!auth.restore });
        if (auth.restore) this.restored();
        return;
      }
      const restore = !!(auth && auth.restore);
      if (auth) this.forget(auth.cred);
      this.token = '';
      this.askToken();
      this.emit({ type: 'loggedIn', name, registered: word === 'register', restored: restore });
      if (restore) this.restored();
    }

    askToken() {
      this.c.tokensAsked += 1;
      this.write('/token');
    }

    tokenLine(ev) {
      const c = this.c;
      if (ev.name.toLowerCase() === this.account.toLowerCase()) {
        this.token = ev.token;
        this.emit({ type: 'tokenKept' });
      }
      if (!c.tokensAsked) return false; // the user typed /token: shown
      c.tokensAsked -= 1;
      return true;
    }

    authRefused(ev) {
      const c = this.c;
      const head = c.asked.length ? c.asked[0][0] : '';
      if (head === 'token' && c.tokensAsked) {
        c.tokensAsked -= 1;
        return false;
      }
      if (!c.auths.length || head !== c.auths[0].word) return false;
      const auth = c.auths.shift();
      if (!auth.cred && !auth.restore) return false; // typed: shown as the error it is
      if ((ev.code === 'not-sent' || ev.code === 'busy') && c.authRetries * RETRY_EVERY_MS < RESTORE_FOR_MS) {
        c.authRetries += 1;
        c.retryAuthAt = Date.now() + RETRY_EVERY_MS;
        return false;
      }
      c.authRetries = 0;
      this.forget(auth.cred);
      if (auth.word === 'resume') this.account = this.token = this.name = '';
      if (ev.code === 'banned') this.stopWhy = ev.message;
      this.emit({
        type: 'loginRefused', name: auth.name, reason: ev.message, code: ev.code,
        restored: !!auth.restore, final: ev.code === 'banned', register: auth.word === 'register',
      });
      if (auth.restore) this.restored();
      return true;
    }

    welcomeLogin(name, again) {
      const cred = this.loginCred;
      if (cred) {
        this.writeLogin(cred, again);
      } else if (this.account && this.token) {
        this.resume();
      } else if (this.account) {
        const account = this.account;
        this.account = this.name = '';
        this.emit({
          type: 'loginRefused', name: account, code: null, restored: true, final: false,
          reason: 'the connection dropped before the login was complete: log in again',
        });
      } else if (name) {
        this.nick(name, again);
      }
    }

    // -- the handshake and the restore

    onWelcome() {
      const c = this.c;
      this.write('/cap time');
      this.write('/cap codes');
      this.write('/cap deltas');
      c.ends = true;
      this.write('/cap end');
      const name = this.name || this.wantedName;
      c.wantRoom = this.room !== LOBBY ? this.room : '';
      const again = this.reconnects > 0;
      c.restoring = !!(again && (name || c.wantRoom || this.account || this.loginCred));
      c.restoreDeadline = Date.now() + RESTORE_FOR_MS;
      this.welcomeLogin(name, again);
      if (c.wantRoom) this.write(`/join ${c.wantRoom}`);
      else this.room = LOBBY;
      this.askHistory();
      this.reconnects += 1;
      c.ready = true;
      this.status('connected', `connected to ${location.host} as ${this.uid}`, !c.restoring);
      this.pump();
    }

    restored() {
      const c = this.c;
      if (c.restoring && !c.wantRoom && !c.pendingNicks.some((p) => p.restore) && !c.retryNameAt
          && !c.retryAuthAt && !c.auths.some((a) => a.restore)) {
        c.restoring = false;
        this.status('connected', `reconnected as ${this.name || this.uid} in ${this.room}`);
      }
    }

    // -- server lines

    /** One server line; true when the server said goodbye (to our /quit, or for good). */
    line(raw) {
      const c = this.c;
      const ev = parseLine(raw);
      switch (ev.type) {
        case 'id':
          this.uid = ev.uid;
          break;
        case 'users':
          if (!c.ready && ev.uids.includes(this.uid)) {
            this.emit(ev);
            this.onWelcome();
            return false;
          }
          break;
        case 'pong':
          if (ev.token === KEEPALIVE_TOKEN) return false;
          break;
        case 'ok':
          if (ev.what.startsWith('nick ')) {
            this.nickOk(ev);
            return false;
          }
          if (ev.what.startsWith('login ') || ev.what.startsWith('register ')) {
            const sp = ev.what.indexOf(' ');
            this.loggedIn(ev.what.slice(0, sp), ev.what.slice(sp + 1));
            return false;
          }
          if (ev.what === 'logout') {
            this.account = this.token = this.name = '';
          } else if (ev.what === 'password') {
            this.token = '';
            this.askToken();
          }
          break;
        case 'token':
          if (this.tokenLine(ev)) return false;
          break;
        case 'room':
          this.room = ev.room;
          this.emit(ev);
          if (c.wantRoom && ev.room === c.wantRoom) {
            c.wantRoom = '';
            this.restored();
          }
          return false;
        case 'uploadUrl':
          if (c.uploads.length) {
            this.emit({ type: 'uploadUrl', raw: ev.raw, url: ev.url, upload: c.uploads.shift() });
            return false;
          }
          break;
        case 'error':
          if (this.uploadRefused(ev) || this.nickRefused(ev) || this.authRefused(ev)) return false;
          if (c.wantRoom && c.asked.length && c.asked[0][0] === 'join') {
            c.wantRoom = ''; // the room to restore refused us: the lobby
            this.emit(ev);
            this.restored();
            return false;
          }
          if (ev.code === 'unknown-capability' && c.ends && c.asked.length && c.asked[0][0] === 'cap') {
            c.ends = false; // a server without END lines
            c.asked = [];
          }
          break;
        case 'end':
          this.ended(ev.word);
          return false;
        case 'bye':
          if (ev.reason) this.stopWhy = ev.reason;
          this.emit(ev);
          return c.quitting || !!ev.reason;
        default:
          break;
      }
      this.emit(ev);
      return false;
    }

    nickOk(ev) {
      const c = this.c;
      this.name = c.named = ev.what.slice(5);
      if (c.pendingNicks.length) c.pendingNicks.shift();
      this.emit(ev);
      const cred = c.registerAfter;
      if (cred && cred.name === this.name) {
        c.registerAfter = null;
        c.auths.push({ word: 'register', name: cred.name, cred, restore: c.restoring });
        this.write(`/register ${cred.password}`);
      }
      this.restored();
    }

    ended(word) {
      const c = this.c;
      while (c.asked.length) {
        const [asked, show] = c.asked.shift();
        if (asked === word) {
          if (show) this.emit({ type: 'answered', word });
          return;
        }
      }
    }

    /** An ERROR: that answers the oldest /upload (a refusal); a PUT's later failure is not one. */
    uploadRefused(ev) {
      const c = this.c;
      if (!c.uploads.length || /^upload of .* failed: /.test(ev.message)) return false;
      if (ev.code ? !UPLOAD_REFUSALS.has(ev.code) : !c.ends) return false;
      if (ev.code === 'not-sent' && !ev.message.includes('/upload')) return false; // a text line's
      if (c.ends && !(c.asked.length && c.asked[0][0] === 'upload')) return false;
      this.emit({ type: 'uploadRefused', upload: c.uploads.shift(), reason: ev.message, code: ev.code });
      return true;
    }

    nickRefused(ev) {
      const c = this.c;
      if (!c.pendingNicks.length) return false;
      const { name, restore, typed } = c.pendingNicks[0];
      const taken = ev.code === 'name-taken';
      const registered = ev.code === 'name-registered';
      if (ev.code === 'logged-in') {
        c.pendingNicks.shift();
        return false;
      }
      if (!taken && !registered && ev.code !== 'invalid-name' && ev.code !== 'usage') return false;
      c.pendingNicks.shift();
      const cred = c.registerAfter;
      if (cred && cred.name === name) {
        this.forget(cred);
        this.emit({
          type: 'loginRefused', name, reason: taken ? `name ${name} is taken` : ev.message,
          code: ev.code, restored: restore, final: false, register: true,
        });
        return true;
      }
      if (restore && taken && Date.now() < c.restoreDeadline) {
        c.retryNameAt = Date.now() + RETRY_EVERY_MS;
        this.status(this.state, `name ${name} is still held by the old connection; retrying`, false);
        return true;
      }
      if (restore) this.name = '';
      if (name === this.wantedName) this.wantedName = '';
      const reason = taken ? `name ${name} is taken: choose another`
        : registered ? `name ${name} is registered: log in to use it` : ev.message;
      this.emit({ type: 'nameRefused', name, reason, registered, typed: !!typed });
      this.restored();
      return true;
    }
  }

  // ---- what is shown (clients/state.py) ----------------------------------------------------------

  const pad2 = (n) => String(n).padStart(2, '0');

  /** A server stamp (UTC) as local HH:MM:SS; now when there is none. */
  function clockOf(stamp) {
    let d = stamp ? new Date(stamp) : new Date();
    if (Number.isNaN(d.getTime())) d = new Date();
    return `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  }

  /** 1234567 as "1.2 MB" (as the IRC door says it). */
  function humanSize(n) {
    if (n < 1000) return `${n} byte${n === 1 ? '' : 's'}`;
    const units = ['KB', 'MB', 'GB', 'TB'];
    let v = n / 1000;
    let i = 0;
    while (v >= 1000 && i < units.length - 1) {
      v /= 1000;
      i += 1;
    }
    return `${v.toFixed(1)} ${units[i]}`;
  }

  const escapeRe = (s) => s.replace(/[.*+?^${}()|[\]\\-]/g, '\\$&');

  class ChatState {
    constructor() {
      this.uid = '';
      this.name = '';
      this.room = LOBBY;
      this.users = [];
      this.names = new Map();
      this.known = new Map();
      this.rooms = [];
      this.status = 'starting';
      this.account = '';
      this.topic = '';
      this.historyLeft = 0;
      this.baseline = true;
      this.namesBaseline = false;
      this.seen = new Set();
      this.mention = null;
    }

    display(uid) { return this.names.get(uid) || this.known.get(uid) || uid; }

    setName(name) {
      this.name = name;
      this.mention = name ? new RegExp(`(?<![\\w-])${escapeRe(name)}(?![\\w-])`, 'i') : null;
    }

    line(kind, text, extra = {}) {
      return { clock: clockOf(extra.stamp || null), kind, who: '', text, mention: false, history: false, ...extra };
    }

    system(text) { return this.line('system', text); }

    apply(ev) {
      switch (ev.type) {
        case 'chat': return this.chat(ev);
        case 'file': return this.file(ev);
        case 'uploadUrl': return ev.upload ? null : this.system(`upload URL: ${ev.url}`); // not ours
        case 'id':
          this.uid = ev.uid;
          this.users = [];
          this.names = new Map();
          this.historyLeft = 0;
          this.topic = '';
          this.baseline = true;
          return null;
        case 'users': return this.setUsers(ev.uids);
        case 'names': return this.setNames(new Map(ev.names.filter(([, n]) => n)));
        case 'joined': case 'left': case 'named': {
          let uids = this.users.slice();
          const names = new Map(this.names);
          if (ev.type === 'left') {
            const gone = new Set(ev.uids);
            uids = uids.filter((u) => !gone.has(u));
            for (const u of gone) names.delete(u);
          } else if (ev.type === 'joined') {
            const moved = new Set(ev.uids);
            uids = uids.filter((u) => !moved.has(u)).concat(ev.uids);
          } else {
            for (const [u, n] of ev.names) {
              if (n) names.set(u, n); else names.delete(u);
            }
            return this.setNames(names);
          }
          const line = this.setUsers(uids);
          this.names = names;
          return line;
        }
        case 'room': {
          const changed = ev.room !== this.room;
          this.room = ev.room;
          this.topic = '';
          this.baseline = true;
          if (changed) this.seen.clear();
          return changed ? this.system(`you are in ${ev.room}`) : null;
        }
        case 'rooms': this.rooms = ev.rooms; return null;
        case 'history': this.historyLeft = ev.count; return null;
        case 'ok':
          if (ev.what.startsWith('nick ')) {
            this.setName(ev.what.slice(5));
            return this.system(`you are now ${this.name}`);
          }
          if (ev.what === 'logout') {
            this.account = '';
            this.setName('');
            return this.system('you are logged out: a guest, with no name');
          }
          if (ev.what === 'password') return this.system('password changed');
          return null;
        case 'loggedIn':
          this.account = ev.name;
          this.setName(ev.name);
          if (ev.restored) return null;
          return this.system(ev.registered ? `account ${ev.name} made: you are logged in as ${ev.name}`
            : `you are logged in as ${ev.name}`);
        case 'loginRefused':
          if (ev.restored) {
            this.account = '';
            this.setName('');
            return this.line('error', `could not log in again as ${ev.name} (${ev.reason}): `
              + 'you are a guest; log in again');
          }
          return this.line('error', ev.reason);
        case 'topic': {
          if (ev.room !== this.room) return null;
          const had = this.topic;
          this.topic = ev.text;
          if (ev.text) return this.system(`topic of ${ev.room}: ${ev.text}`);
          return had ? this.system(`the topic of ${ev.room} was cleared`) : null;
        }
        case 'kicked':
          return this.line('error', `you were kicked from ${ev.room}${ev.text ? `: ${ev.text}` : ''}`);
        case 'delayed':
          return this.system(`${ev.count} private message${ev.count !== 1 ? 's' : ''} came while you were away:`);
        case 'token':
          return this.system(`token for ${ev.name}, valid until ${ev.expires}: ${ev.token}`);
        case 'error': return this.line('error', ev.message);
        case 'info': return this.system(ev.raw.startsWith('HELP: ') ? ev.raw.slice(6) : ev.raw);
        case 'pong': return this.system(`pong ${ev.token}`.trim());
        case 'answered':
          if (ev.word === 'users') {
            return this.system(`in ${this.room}: ` + this.userRows().map((r) => r.label).join(', '));
          }
          if (ev.word === 'rooms') {
            const listed = this.rooms.map(([r, n]) => `${r} (${n})`).join(', ');
            return this.system(`rooms: ${listed || 'none'}`);
          }
          return null;
        case 'bye':
          if (ev.reason) return this.line('error', `the server closed the connection: ${ev.reason}`);
          return this.system('the server said goodbye');
        case 'status':
          this.status = ev.text;
          return ev.log ? this.system(ev.text) : null;
        case 'nameRefused': return this.line('error', ev.reason);
        default: return null;
      }
    }

    userRows() {
      return this.users.map((uid) => {
        const name = this.names.get(uid) || '';
        const me = uid === this.uid;
        return { uid, name, me, label: (name ? `${name} (${uid})` : uid) + (me ? ' (you)' : '') };
      });
    }

    setUsers(uids) {
      const old = this.users;
      this.users = uids;
      const rooms = this.rooms.filter(([r]) => r !== this.room);
      if (uids.length) rooms.push([this.room, uids.length]);
      rooms.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
      this.rooms = rooms;
      if (this.baseline) {
        this.baseline = false;
        this.namesBaseline = true;
        return null;
      }
      this.namesBaseline = false;
      const before = new Set(old);
      const now = new Set(uids);
      const came = uids.filter((u) => !before.has(u));
      const left = old.filter((u) => !now.has(u));
      const parts = [];
      if (came.length) parts.push(`${came.map((u) => this.display(u)).join(', ')} joined`);
      if (left.length) parts.push(`${left.map((u) => this.display(u)).join(', ')} left`);
      return parts.length ? this.system(parts.join('; ')) : null;
    }

    setNames(names) {
      let renamed = [];
      for (const [uid, name] of names) {
        if (uid !== this.uid && this.names.get(uid) !== name) {
          renamed.push(this.names.has(uid) ? `${this.names.get(uid)} is now ${name}` : `${uid} is ${name}`);
        }
      }
      if (this.namesBaseline) {
        this.namesBaseline = false;
        renamed = [];
      }
      this.names = names;
      for (const [uid, name] of names) this.known.set(uid, name);
      return renamed.length ? this.system(renamed.join('; ')) : null;
    }

    /** A chat line's place: in the history asked for, and whether it was shown already. */
    arrived(time, key) {
      const inHistory = this.historyLeft > 0;
      if (inHistory) this.historyLeft -= 1;
      if (time) {
        if (this.seen.has(key)) return null;
        this.seen.add(key);
        if (this.seen.size > DEDUP_MAX) this.seen.delete(this.seen.values().next().value);
      }
      return { inHistory };
    }

    file(ev) {
      const at = this.arrived(ev.time, [ev.time, ev.uid, 'FILE', ev.url].join('\u0000'));
      if (!at) return null;
      return {
        clock: clockOf(ev.time), stamp: ev.time, kind: 'file', who: this.display(ev.uid), uid: ev.uid,
        own: ev.uid === this.uid, text: `${ev.name} (${humanSize(ev.size)})`, mention: false,
        history: at.inHistory, file: { url: ev.url, name: ev.name, size: ev.size },
      };
    }

    chat(ev) {
      const at = this.arrived(ev.time, [ev.time, ev.uid, ev.text, ev.priv, ev.to].join('\u0000'));
      if (!at) return null;
      const inHistory = at.inHistory;
      const mention = !!(this.mention && ev.uid !== this.uid && this.mention.test(ev.text));
      const base = { clock: clockOf(ev.time), stamp: ev.time, text: ev.text, mention, history: inHistory };
      if (ev.priv) {
        const who = ev.to !== null ? `to ${this.display(ev.to)}` : `from ${this.display(ev.uid)}`;
        return { ...base, kind: 'private', who, uid: ev.to !== null ? ev.to : ev.uid };
      }
      return { ...base, kind: ev.uid === this.uid ? 'own' : 'public', who: this.display(ev.uid), uid: ev.uid };
    }
  }

  // ---- the page ----------------------------------------------------------------------------------

  const $ = (id) => document.getElementById(id);
  // the events that may change the user or room list
  const ROSTER_EVENTS = new Set(['id', 'users', 'names', 'joined', 'left', 'named', 'room', 'rooms']);

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  const URL_RE = /\bhttps?:\/\/[^\s<>"']+/gi;

  /** Text as nodes: plain text, and http(s) links as <a> elements (never HTML). */
  function textNodes(parent, text) {
    let at = 0;
    for (const m of text.matchAll(URL_RE)) {
      const href = m[0].replace(/[.,;:!?)\]}]+$/, '');
      const start = m.index;
      let url = null;
      try { url = new URL(href); } catch (e) { url = null; }
      if (!url || (url.protocol !== 'http:' && url.protocol !== 'https:')) continue;
      if (start > at) parent.append(document.createTextNode(text.slice(at, start)));
      const a = document.createElement('a');
      a.href = url.href;
      a.rel = 'noopener noreferrer';
      a.target = '_blank';
      a.textContent = href;
      parent.append(a);
      at = start + href.length;
    }
    if (at < text.length) parent.append(document.createTextNode(text.slice(at)));
  }

  // ---- files ------------------------------------------------------------------------------------

  const IMAGE_NAME = /\.(png|jpe?g|gif|webp)$/i; // shown with a preview (the server sniffs the bytes)
  const UPLOAD_PATH = /^\/upload\/[A-Za-z0-9_-]{16,64}$/;
  const NAME_MAX = 255; // characters of a name /upload takes
  const IMAGE_TYPES = { 'image/png': 'png', 'image/jpeg': 'jpg', 'image/gif': 'gif', 'image/webp': 'webp' };

  const FILE_PATH = /^\/files\/[A-Za-z0-9_-]{16,64}\/[^/]+$/;

  /** A URL from the network as a URL, when it is http(s) on this page's own origin; else null.
   * A file's URL (``/files/<id>/<name>``) made with another address of the server (its
   * --web-url, localhost for 127.0.0.1, a proxy's name) is taken on this page's own origin:
   * every web door of the server serves every one of its files, and this page may fetch
   * nothing from elsewhere anyway (its CSP). */
  function ownUrl(raw, file = false) {
    let url;
    try { url = new URL(raw); } catch (e) { return null; }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return null;
    if (url.username || url.password) return null;
    if (url.origin === location.origin) return url;
    if (file && FILE_PATH.test(url.pathname) && !url.search && !url.hash) {
      return new URL(url.pathname, location.origin);
    }
    return null;
  }

  /** A file's name as /upload takes it: one word (its spaces as _), at most 255 characters,
   * keeping the extension when it must be cut. */
  function wireName(name) {
    const word = String(name || '').replace(/\s/g, '_') || 'file';
    const chars = [...word];
    if (chars.length <= NAME_MAX) return word;
    const dot = word.lastIndexOf('.');
    const ext = dot > 0 && word.length - dot <= 16 ? [...word.slice(dot)] : [];
    return chars.slice(0, NAME_MAX - ext.length).join('') + ext.join('');
  }

  /** A pasted picture's name: the clipboard calls every one image.png. */
  function pastedName(file) {
    if (file.name && !/^image\.\w+$/.test(file.name)) return file.name;
    const d = new Date();
    const stamp = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())}_`
      + `${pad2(d.getHours())}-${pad2(d.getMinutes())}-${pad2(d.getSeconds())}`;
    const ext = IMAGE_TYPES[file.type] || (/\.(\w+)$/.exec(file.name || '') || [])[1] || 'bin';
    return `pasted-${stamp}.${ext}`;
  }

  const hasFiles = (e) => !!(e.dataTransfer && Array.from(e.dataTransfer.types || []).includes('Files'));

  function loadStored() {
    try {
      const v = JSON.parse(sessionStorage.getItem(STORE_KEY) || 'null');
      return v && typeof v === 'object' ? v : null;
    } catch (e) {
      return null;
    }
  }

  class Page {
    constructor() {
      this.state = new ChatState();
      this.session = null;
      this.queue = [];
      this.flushTimer = 0;
      this.unseen = 0;
      this.stuck = true; // the log shows its end (a preview that loads keeps it there)
      this.pickTarget = null; // the target a typed /upload chose for the file picker
      this.dragDepth = 0;
      this.ui = {
        log: $('log'), users: $('users'), rooms: $('rooms'), input: $('input'),
        send: $('send'), sendForm: $('send-form'), room: $('room'), topic: $('topic'),
        status: $('status'), who: $('who'), usersCount: $('users-count'),
        usersToggle: $('users-toggle'), roomsToggle: $('rooms-toggle'),
        joinForm: $('join-form'), joinRoom: $('join-room'), account: $('account-button'),
        dialog: $('login'), loginForm: $('login-form'), loginName: $('login-name'),
        loginPassword: $('login-password'), loginError: $('login-error'),
        loginButton: $('login-button'), registerButton: $('register-button'),
        guestButton: $('guest-button'), attach: $('attach'), fileInput: $('file-input'),
        dropText: $('drop-text'),
      };
      this.wire();
      const stored = loadStored();
      const name = stored && !nameProblem(String(stored.name || '')) ? String(stored.name) : '';
      const account = stored && stored.account && stored.token ? String(stored.account) : '';
      if (name || account) { // a reload: back as before, without the form
        this.connect({
          name, account, token: account ? String(stored.token) : '', restore: true,
          room: ROOM_RE.test(String(stored.room || '')) ? String(stored.room) : LOBBY,
        });
      } else {
        this.openLogin('', '');
      }
      this.render();
      setInterval(() => this.pollRooms(), ROOMS_POLL_MS);
    }

    wire() {
      const u = this.ui;
      u.sendForm.addEventListener('submit', (e) => { e.preventDefault(); this.onSend(); });
      u.joinForm.addEventListener('submit', (e) => { e.preventDefault(); this.onJoinTyped(); });
      u.attach.addEventListener('click', () => this.pickFiles(null));
      u.fileInput.addEventListener('change', () => {
        const files = [...u.fileInput.files].map((file) => ({ file, name: file.name }));
        u.fileInput.value = ''; // the same file may be chosen again
        const target = this.pickTarget !== null ? this.pickTarget : this.currentTarget();
        this.pickTarget = null;
        this.sendFiles(files, target);
        if (!matchMedia('(pointer: coarse)').matches) u.input.focus(); // no keyboard popping up
      });
      u.input.addEventListener('paste', (e) => {
        const files = e.clipboardData ? [...e.clipboardData.files] : [];
        if (!files.length) return; // text: pasted as usual
        e.preventDefault();
        this.sendFiles(files.map((file) => ({ file, name: pastedName(file) })), this.currentTarget());
      });
      // files dropped anywhere on the page (never opened by the browser in place of the chat)
      document.addEventListener('dragenter', (e) => {
        if (!hasFiles(e)) return;
        e.preventDefault();
        if (this.dragDepth++ === 0) this.showDrop(true);
      });
      document.addEventListener('dragover', (e) => {
        if (!hasFiles(e)) return;
        e.preventDefault();
        e.dataTransfer.dropEffect = 'copy';
      });
      document.addEventListener('dragleave', (e) => {
        if (!hasFiles(e)) return;
        this.dragDepth = Math.max(0, this.dragDepth - 1);
        if (!this.dragDepth) this.showDrop(false);
      });
      document.addEventListener('drop', (e) => {
        if (!hasFiles(e)) return;
        e.preventDefault();
        this.dragDepth = 0;
        this.showDrop(false);
        this.sendFiles([...e.dataTransfer.files].map((file) => ({ file, name: file.name })),
          this.currentTarget());
      });
      u.log.addEventListener('scroll', () => {
        this.stuck = u.log.scrollTop + u.log.clientHeight >= u.log.scrollHeight - 8;
      }, { passive: true });
      u.usersToggle.addEventListener('click', () => this.toggle('users'));
      u.roomsToggle.addEventListener('click', () => this.toggle('rooms'));
      u.account.addEventListener('click', () => this.onAccount());
      u.users.addEventListener('click', (e) => {
        const b = e.target instanceof Element ? e.target.closest('button[data-uid]') : null;
        if (b) this.onUserClick(b.dataset.uid);
      });
      u.rooms.addEventListener('click', (e) => {
        const b = e.target instanceof Element ? e.target.closest('button[data-room]') : null;
        if (b) this.joinRoom(b.dataset.room);
      });
      u.loginForm.addEventListener('submit', (e) => e.preventDefault());
      u.loginButton.addEventListener('click', () => this.sendLogin(false));
      u.registerButton.addEventListener('click', () => this.sendLogin(true));
      u.guestButton.addEventListener('click', () => this.onGuest());
      for (const field of [u.loginName, u.loginPassword]) {
        field.addEventListener('keydown', (e) => {
          if (e.key !== 'Enter' || e.isComposing) return;
          e.preventDefault();
          if (u.loginPassword.value) this.sendLogin(false); else this.onGuest();
        });
      }
      u.dialog.addEventListener('cancel', (e) => { e.preventDefault(); this.onGuest(); });
      $('center').addEventListener('click', () => {
        if (document.body.classList.contains('drawer-open')) this.closeDrawers(false);
      });
      document.addEventListener('keydown', (e) => {
        if (e.key === 'Escape' && document.body.classList.contains('drawer-open')) this.closeDrawers(true);
      });
      document.addEventListener('visibilitychange', () => {
        if (!document.hidden) {
          this.unseen = 0;
          this.renderTitle();
        }
      });
    }

    connect(opts) {
      this.session = new Session((ev) => this.onEvent(ev), opts).start();
    }

    // -- the login dialog

    openLogin(name, message, error = true) {
      const u = this.ui;
      if (name) u.loginName.value = name;
      this.say(message, error);
      if (!u.dialog.open) u.dialog.showModal();
      (u.loginName.value ? u.loginPassword : u.loginName).focus();
    }

    closeLogin() {
      const u = this.ui;
      u.loginPassword.value = '';
      this.say('', false);
      this.setLoginBusy(false);
      if (u.dialog.open) u.dialog.close();
      u.input.focus();
    }

    say(message, error = true) {
      const m = this.ui.loginError;
      m.textContent = message;
      m.classList.toggle('error', !!(message && error));
      m.dataset.kind = message ? (error ? 'error' : 'info') : '';
      if (error && message) {
        this.setLoginBusy(false);
        this.ui.loginPassword.value = '';
        this.ui.loginPassword.focus();
      }
    }

    setLoginBusy(busy) {
      this.ui.loginButton.disabled = busy;
      this.ui.registerButton.disabled = busy;
    }

    sendLogin(register) {
      const u = this.ui;
      const name = u.loginName.value.trim();
      const password = u.loginPassword.value;
      let problem = name ? nameProblem(name) : 'type your name';
      if (!problem) problem = register ? passwordProblem(password) : (password ? '' : 'type your password');
      if (problem) {
        this.say(problem);
        if (!name || nameProblem(name)) u.loginName.focus();
        return;
      }
      u.loginPassword.value = ''; // the page keeps no password: the session holds it until answered
      this.setLoginBusy(true);
      this.say(`${register ? 'Registering' : 'Logging in as'} ${name}...`, false);
      if (!this.session) this.connect({ login: { name, password, register } });
      else this.session.login(name, password, register);
    }

    onGuest() {
      const u = this.ui;
      const name = u.loginName.value.trim();
      if (name && nameProblem(name)) {
        this.say(nameProblem(name));
        u.loginName.focus();
        return;
      }
      this.closeLogin();
      if (!this.session) this.connect({ name, room: LOBBY });
      else if (name && name !== this.state.name) this.session.setName(name);
    }

    onAccount() {
      if (this.state.account && this.session) this.session.send('/logout');
      else this.openLogin(this.state.name, '');
    }

    // -- the main window

    onSend() {
      const u = this.ui;
      const text = u.input.value.trim();
      if (!text) return;
      if (new TextEncoder().encode(text).length > MAX_LINE_BYTES) {
        this.show(this.state.line('error', `line too long (max ${MAX_LINE_BYTES} bytes): not sent`));
        return;
      }
      u.input.value = '';
      if (!this.session) this.connect({ room: LOBBY });
      const word = endWord(text);
      if (word === 'quit') {
        this.session.quit();
        return;
      }
      const args = text.split(/[ \t]+/).slice(1);
      if (word === 'upload' && args.length <= 1) { // /upload [target]: the file from the picker
        this.pickFiles(args.length ? args[0] : '');
        return;
      }
      this.session.send(text, true);
    }

    // -- files: /upload, then the bytes by PUT to the URL it gives

    /** The user the input is addressing (`/msg bob ...`): files go to them; "" for the room. */
    currentTarget() {
      const m = /^\/(?:msg|w)[ \t]+(\S+)/i.exec(this.ui.input.value);
      return m ? m[1] : '';
    }

    where(target) {
      return target ? `privately to ${this.state.display(target)}` : `to ${this.state.room}`;
    }

    pickFiles(target) {
      this.pickTarget = target;
      this.ui.fileInput.click();
    }

    showDrop(on) {
      document.body.classList.toggle('dragging', on);
      this.ui.dropText.textContent = on ? `Drop files to send them ${this.where(this.currentTarget())}` : '';
    }

    /** files: [{file, name}], each sent with its own /upload, in order. */
    sendFiles(files, target) {
      if (!files.length) return;
      if (!this.session) {
        this.show(this.state.line('error', 'not connected: log in, or continue as a guest, to send files'));
        return;
      }
      for (const { file, name } of files) {
        const wire = wireName(name);
        const u = {
          file, name: wire, size: file.size, where: this.where(target), state: 'asking', percent: 0,
          why: '', node: null, line: `/upload ${file.size} ${wire}${target ? ` ${target}` : ''}`,
        };
        this.show(this.state.line('upload', '', { upload: u }));
        this.session.send(u.line, false, false, u);
      }
    }

    /** The UPLOAD: URL answering u's /upload: the bytes go there in one PUT. */
    put(u, raw) {
      if (u.state !== 'asking') return; // cancelled while asking: the URL expires unused
      let url = ownUrl(raw);
      if (!url) {
        // a URL on another origin (the server's --web-url is not the address this page has):
        // the same upload on this page's own door, which takes any upload of its server; the
        // page may connect to nothing else (its CSP: connect-src 'self')
        let other = null;
        try { other = new URL(raw); } catch (e) { other = null; }
        if (other && UPLOAD_PATH.test(other.pathname) && !other.search) {
          url = new URL(other.pathname, location.origin);
        }
      }
      if (!url) {
        this.setUpload(u, 'failed', `the server's upload URL is not one the page can use: ${raw}`);
        return;
      }
      const xhr = new XMLHttpRequest(); // not fetch: its upload shows progress
      u.xhr = xhr;
      xhr.open('PUT', url.href);
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable && e.total) this.setUpload(u, 'sending', '', Math.floor((100 * e.loaded) / e.total));
      };
      xhr.onload = () => {
        u.xhr = null;
        if (xhr.status === 201) {
          this.setUpload(u, 'sent');
        } else {
          const why = (xhr.responseText || xhr.statusText || '').trim().replace(/\s+/g, ' ').slice(0, 300);
          this.setUpload(u, 'failed', `HTTP ${xhr.status}${why ? `: ${why}` : ''}`);
        }
      };
      xhr.onerror = () => this.setUpload(u, 'failed', 'the connection to the server failed');
      xhr.onabort = () => this.setUpload(u, 'failed', 'cancelled');
      this.setUpload(u, 'sending', '', 0);
      xhr.send(u.file);
    }

    cancelUpload(u) {
      if (u.xhr) u.xhr.abort(); // its onabort says so
      else this.setUpload(u, 'failed', 'cancelled');
    }

    setUpload(u, state, why = '', percent = 0) {
      if (u.state === 'sent' || u.state === 'failed') return; // over
      u.state = state;
      u.why = why;
      u.percent = percent;
      if (u.node) this.fillUpload(u.node, u);
    }

    fillUpload(row, u) {
      const failed = u.state === 'failed';
      row.className = `line ${failed ? 'error' : 'upload'}`;
      row.dataset.kind = failed ? 'error' : 'upload';
      row.dataset.state = u.state;
      const size = humanSize(u.size);
      let text = `sending ${u.name} (${size}) ${u.where}: `;
      if (failed) text = `could not send ${u.name} (${size}): ${u.why}`;
      else if (u.state === 'sent') text = `sent ${u.name} (${size}) ${u.where}`;
      else text += u.state === 'sending' ? `${u.percent}%` : 'asking the server';
      row.querySelector('.mark').textContent = failed ? '! ' : '\u2191 ';
      row.querySelector('.text').textContent = text;
      let bar = row.querySelector('progress');
      if (u.state === 'sent' || failed) {
        if (bar) bar.remove();
        const cancel = row.querySelector('button');
        if (cancel) {
          if (cancel === document.activeElement) this.ui.input.focus();
          cancel.remove();
        }
        return;
      }
      if (!bar) {
        bar = el('progress', 'upload-bar');
        bar.max = 100;
        bar.setAttribute('aria-label', `sending ${u.name}`);
        const cancel = el('button', 'secondary upload-cancel', 'Cancel');
        cancel.type = 'button';
        cancel.setAttribute('aria-label', `Cancel sending ${u.name}`);
        cancel.addEventListener('click', () => this.cancelUpload(u));
        row.append(bar, cancel);
      }
      if (u.state === 'sending') bar.value = u.percent;
      else bar.removeAttribute('value'); // waiting: indeterminate
    }

    onUserClick(uid) {
      const u = this.ui;
      u.input.value = `/msg ${uid} `;
      this.closeDrawers(false);
      u.input.focus();
      u.input.setSelectionRange(u.input.value.length, u.input.value.length);
    }

    onJoinTyped() {
      const u = this.ui;
      let room = u.joinRoom.value.trim();
      if (!room || room === '#') return;
      if (!room.startsWith('#')) room = `#${room}`;
      if (!ROOM_RE.test(room)) {
        this.show(this.state.line('error', `invalid room ${room}: # and 1-32 letters, digits, _ or -`));
        return;
      }
      u.joinRoom.value = '#';
      this.joinRoom(room);
    }

    joinRoom(room) {
      if (!this.session) return;
      if (room.toLowerCase() !== this.state.room) this.session.send(`/join ${room}`);
      this.closeDrawers(false);
      this.ui.input.focus();
    }

    pollRooms() {
      const s = this.session;
      if (s && s.state === 'connected' && s.c && s.c.ready && !document.hidden) s.send('/rooms');
    }

    toggle(which) {
      const body = document.body;
      const cls = `${which}-open`;
      const open = !body.classList.contains(cls);
      this.closeDrawers(false);
      if (open) {
        body.classList.add(cls, 'drawer-open');
        const button = which === 'users' ? this.ui.usersToggle : this.ui.roomsToggle;
        button.setAttribute('aria-expanded', 'true');
        const first = (which === 'users' ? this.ui.users : this.ui.rooms).querySelector('button');
        if (first) first.focus();
      }
    }

    closeDrawers(refocus) {
      const body = document.body;
      const wasUsers = body.classList.contains('users-open');
      body.classList.remove('users-open', 'rooms-open', 'drawer-open');
      this.ui.usersToggle.setAttribute('aria-expanded', 'false');
      this.ui.roomsToggle.setAttribute('aria-expanded', 'false');
      if (refocus) (wasUsers ? this.ui.usersToggle : this.ui.roomsToggle).focus();
    }

    // -- events from the session

    onEvent(ev) {
      const line = this.state.apply(ev);
      if (line) this.show(line);
      this.note(ev);
      this.render(ROSTER_EVENTS.has(ev.type)); // a chat line leaves the lists alone
    }

    note(ev) {
      const s = this.session;
      switch (ev.type) {
        case 'nameRefused':
          if (!ev.typed) {
            this.openLogin(ev.name, ev.registered
              ? `${ev.name} is an account: log in with its password, or continue as a guest with another name`
              : ev.reason);
            if (!ev.registered) this.ui.loginName.focus();
          }
          break;
        case 'loggedIn':
          if (this.ui.dialog.open) this.closeLogin();
          break;
        case 'loginRefused':
          if (ev.final) {
            this.closeLogin();
          } else {
            this.openLogin(ev.name, ev.restored
              ? `Your login as ${ev.name} could not be kept (${ev.reason}): log in again, or continue as a guest`
              : ev.reason);
            if (['name-registered', 'name-taken', 'invalid-name'].includes(ev.code)) this.ui.loginName.focus();
          }
          break;
        case 'status':
          if (ev.state === 'connected' && s) s.send('/rooms');
          break;
        case 'room':
          if (s) s.send('/rooms');
          break;
        case 'uploadUrl':
          if (ev.upload) this.put(ev.upload, ev.url);
          break;
        case 'uploadRefused':
          this.setUpload(ev.upload, 'failed', ev.reason);
          break;
        default:
          break;
      }
      if (s) this.store();
    }

    store() {
      const s = this.session;
      try {
        sessionStorage.setItem(STORE_KEY, JSON.stringify({
          name: s.account ? '' : (s.name || s.wantedName || ''), room: s.room,
          account: s.account, token: s.account ? s.token : '',
        }));
      } catch (e) { /* storage off: a reload starts afresh */ }
    }

    // -- the widgets from the state

    show(line) {
      this.queue.push(line);
      const toMe = line.kind === 'private' && line.who.startsWith('from ') && !line.history;
      if (document.hidden && (line.mention || toMe)) {
        this.unseen += 1;
        this.renderTitle();
      }
      if (!this.flushTimer) this.flushTimer = setTimeout(() => this.flush(), 16);
    }

    flush() {
      this.flushTimer = 0;
      const log = this.ui.log;
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      const frag = document.createDocumentFragment();
      for (const ln of this.queue) frag.append(this.lineNode(ln));
      this.queue = [];
      log.append(frag);
      let extra = log.childElementCount - LOG_LIMIT;
      while (extra-- > 0) log.firstElementChild.remove();
      if (atEnd) log.scrollTop = log.scrollHeight;
    }

    lineNode(ln) {
      const row = el('div', `line ${ln.kind}`);
      row.dataset.kind = ln.kind;
      if (ln.history) row.classList.add('history');
      if (ln.mention) row.classList.add('mention');
      row.dataset.mention = ln.mention ? '1' : '0';
      const time = el('time', 'clock', ln.clock);
      if (ln.stamp) {
        time.dateTime = ln.stamp;
        time.title = new Date(ln.stamp).toLocaleString();
      }
      row.append(time, document.createTextNode(' '));
      if (ln.upload) {
        row.append(el('span', 'mark'), el('span', 'text'));
        ln.upload.node = row;
        this.fillUpload(row, ln.upload);
        return row;
      }
      if (ln.kind === 'file') return this.fileNode(row, ln);
      if (ln.kind === 'system' || ln.kind === 'error') {
        const text = el('span', 'text');
        textNodes(text, ln.text);
        row.append(el('span', 'mark', ln.kind === 'error' ? '! ' : '* '), text);
        return row;
      }
      row.dataset.who = ln.who;
      if (ln.uid) row.dataset.uid = ln.uid;
      const text = el('span', 'text');
      textNodes(text, ln.text);
      row.append(el('span', 'who', ln.who), el('span', 'sep', ': '), text);
      return row;
    }

    /** A FILE: line: who sent it, the name as a link (a download), its size; an image's preview
     * below, a click opening it whole in a new tab. Only a URL on the page's own origin becomes
     * a link or an image; another is shown as text. */
    fileNode(row, ln) {
      const f = ln.file;
      if (ln.own) row.classList.add('own');
      row.dataset.who = ln.who;
      row.dataset.uid = ln.uid;
      const url = ownUrl(f.url, true);
      const text = el('span', 'text');
      if (url) {
        const a = el('a', 'file-name', f.name);
        a.href = url.href;
        a.download = f.name;
        a.rel = 'noopener noreferrer';
        text.append(a, el('span', 'file-size', ` (${humanSize(f.size)})`));
        row.dataset.url = url.href;
      } else {
        text.textContent = `${f.name} (${humanSize(f.size)}) ${f.url}`;
      }
      row.append(el('span', 'who', ln.who), el('span', 'sep', ' sent '), text);
      if (url && IMAGE_NAME.test(f.name)) {
        const open = el('a', 'file-preview');
        open.href = url.href;
        open.target = '_blank';
        open.rel = 'noopener noreferrer';
        open.setAttribute('aria-label', `${f.name}: open the whole image in a new tab`);
        const img = el('img');
        img.alt = f.name;
        img.loading = 'lazy';
        img.decoding = 'async';
        img.addEventListener('load', () => {
          if (this.stuck) this.ui.log.scrollTop = this.ui.log.scrollHeight;
        });
        img.addEventListener('error', () => open.remove()); // gone from the store: the link stays
        img.src = url.href;
        open.append(img);
        row.append(open);
      }
      return row;
    }

    renderTitle() {
      const st = this.state;
      const who = st.name || st.uid || '';
      document.title = `${this.unseen ? `(${this.unseen}) ` : ''}PyChat${who ? ` - ${who}` : ''} - ${st.room}`;
    }

    render(lists = true) {
      const u = this.ui;
      const st = this.state;
      const s = this.session;
      if (u.room.textContent !== st.room) {
        u.room.textContent = st.room;
        u.room.dataset.room = st.room;
      }
      u.topic.hidden = !st.topic;
      if (u.topic.textContent !== st.topic) u.topic.textContent = st.topic ? `Topic: ${st.topic}` : '';
      const state = s ? s.state : 'starting';
      const status = s ? st.status : 'not connected: log in, or continue as a guest';
      if (u.status.dataset.state !== state) u.status.dataset.state = state;
      if (u.status.textContent !== status) u.status.textContent = status;
      const who = st.account ? `${st.name || st.account} (logged in)`
        : st.name ? `${st.name} (guest)` : `guest${st.uid ? ` ${st.uid}` : ''}`;
      if (u.who.textContent !== who) u.who.textContent = who;
      u.who.dataset.account = st.account;
      u.who.dataset.name = st.name;
      u.who.dataset.uid = st.uid;
      const accountLabel = st.account ? 'Log out' : 'Log in';
      if (u.account.textContent !== accountLabel) u.account.textContent = accountLabel;
      if (lists) {
        this.renderUsers();
        this.renderRooms();
      }
      this.renderTitle();
    }

    renderUsers() {
      const u = this.ui;
      const rows = this.state.userRows();
      const key = JSON.stringify(rows);
      if (key === this.usersKey) return;
      this.usersKey = key;
      const focused = document.activeElement && u.users.contains(document.activeElement)
        ? document.activeElement.dataset.uid : null;
      const frag = document.createDocumentFragment();
      for (const row of rows) {
        const li = el('li');
        const b = el('button', `user${row.me ? ' me' : ''}`);
        b.type = 'button';
        b.dataset.uid = row.uid;
        b.dataset.name = row.name;
        b.setAttribute('aria-label', `${row.label}: private message`);
        b.append(el('span', 'user-name', row.name || row.uid));
        if (row.name) b.append(el('span', 'user-uid', row.uid));
        if (row.me) b.append(el('span', 'user-you', 'you'));
        li.append(b);
        frag.append(li);
      }
      u.users.replaceChildren(frag);
      u.usersCount.textContent = String(rows.length);
      $('users-title').textContent = `Users in ${this.state.room} (${rows.length})`;
      if (focused) {
        const again = u.users.querySelector(`button[data-uid="${CSS.escape(focused)}"]`);
        if (again) again.focus();
      }
    }

    renderRooms() {
      const u = this.ui;
      const rooms = new Map(this.state.rooms);
      if (!rooms.has(LOBBY)) rooms.set(LOBBY, 0); // always a way back
      if (!rooms.has(this.state.room)) rooms.set(this.state.room, this.state.users.length);
      const names = [...rooms.keys()].sort();
      const key = JSON.stringify([this.state.room, names.map((r) => [r, rooms.get(r)])]);
      if (key === this.roomsKey) return;
      this.roomsKey = key;
      const frag = document.createDocumentFragment();
      for (const room of names) {
        const li = el('li');
        const b = el('button', 'room');
        b.type = 'button';
        b.dataset.room = room;
        if (room === this.state.room) {
          b.classList.add('current');
          b.setAttribute('aria-current', 'true');
        }
        b.append(el('span', 'room-name', room), el('span', 'room-count', String(rooms.get(room))));
        b.setAttribute('aria-label', `${room}, ${rooms.get(room)} member${rooms.get(room) === 1 ? '' : 's'}`);
        li.append(b);
        frag.append(li);
      }
      u.rooms.replaceChildren(frag);
    }
  }

  window.addEventListener('DOMContentLoaded', () => {
    window.pychat = new Page();
  });
})();
