// relay.js: the relay's browser client. One ES module, no dependencies, no build step.
//
// It speaks the relay's `/ws` endpoint: one WebSocket follows any number of channels, publishes
// to any of them and asks for presence. The connection is the client's business: it reconnects
// by itself after any drop (jittered exponential backoff), asks for a fresh token before each
// connect, subscribes every subscription again from its position (no message lost, none twice)
// and sends every unanswered publish again with the key it was first sent with (each publish is
// stored once). A silent connection (a hung instance, a dead network) is noticed with `ping`
// frames and replaced.
//
//   import { Relay } from "https://relay.example/client/relay.js";
//   const relay = new Relay("https://relay.example", { token: () => fetchToken() });
//   const sub = relay.subscribe("orders", { from: "0" }, { onMessage(m) { ... } });
//   const id = await relay.publish("orders", { n: 1 });

/** This client's version (the relay's version it was served with). */
export const VERSION = "0.1.0";

const DEFAULTS = Object.freeze({
  reconnectDelay: 250, // ms: the backoff's base
  maxReconnectDelay: 10000, // ms: the backoff's cap
  stableAfter: 5000, // ms a connection stays up before the backoff starts over
  retryDelay: 250, // ms before a call refused with `unavailable`/`rate_limited` goes again
  maxRetryDelay: 5000, // ms: the cap of that delay (it doubles on each refusal)
  keepalive: 15000, // ms of silence before a ping (0: never)
  keepaliveTimeout: 10000, // ms to wait for anything after the ping before giving up
  maxMessageBytes: 65536, // the relay's RELAY_MAX_MESSAGE_BYTES: a frame far over it is never sent
});
const ENVELOPE = 4096; // bytes a /ws frame may hold beyond its message (the relay closes with 1009 past it)
const TOO_BIG = 1009;

const RETRIED = new Set(["unavailable", "rate_limited"]); // refusals worth sending again
const SILENT = 4000; // the close code this client uses for a connection gone silent
const POLICY = 1008;
const REFRESH_MARGIN = 3000; // ms: ask for a new token at least this long before `exp`
const MIN_REFRESH_DELAY = 1000; // ms: never ask sooner than this (a very short-lived token)

/**
 * A refusal from the relay (`code` is its error code: `forbidden`, `too_large`, ...), or the end
 * of a call because the client was closed (`closed`) or the subscription ended (`unsubscribed`).
 */
export class RelayError extends Error {
  /**
   * @param {string} code the relay's error code, or `closed`, `unsubscribed`, `policy`
   * @param {string} [detail] the relay's explanation
   * @param {string | null} [channel] the channel the refusal is about
   */
  constructor(code, detail = "", channel = null) {
    const where = channel ? ` (channel ${channel})` : "";
    super(`${code}${detail ? `: ${detail}` : ""}${where}`);
    this.name = "RelayError";
    /** @type {string} */
    this.code = code;
    /** @type {string} */
    this.detail = detail;
    /** @type {string | null} */
    this.channel = channel;
  }
}

// -- small helpers ---------------------------------------------------------------------------------

/** The `/ws` URL of a relay base URL (http, https, ws or wss), with the token in the query. */
function socketUrl(base, token) {
  const url = new URL(base.href);
  url.protocol = url.protocol === "https:" || url.protocol === "wss:" ? "wss:" : "ws:";
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/ws`;
  url.hash = "";
  if (token) url.searchParams.set("token", token);
  return url.href;
}

function parseBase(base) {
  const url = new URL(String(base), globalThis.location?.href);
  if (!["http:", "https:", "ws:", "wss:"].includes(url.protocol)) {
    throw new TypeError(`expected an http(s):// or ws(s):// relay URL, got ${base}`);
  }
  return url;
}

/** A stream id (`ms-seq`, or `ms`, or `0`) as [ms, seq] BigInts; null when it is none. */
function parseId(id) {
  const match = /^(\d+)(?:-(\d+))?$/.exec(typeof id === "string" ? id : "");
  return match ? [BigInt(match[1]), BigInt(match[2] ?? 0)] : null;
}

/**
 * Compare two stream ids (`ms-seq`) by time, then sequence: negative when `a` comes first, 0 when
 * they are equal, positive when `a` comes after `b`. Throws a TypeError for what is no stream id.
 * @param {string} a
 * @param {string} b
 * @returns {number}
 */
export function compareIds(a, b) {
  const x = parseId(a);
  const y = parseId(b);
  if (x === null || y === null) throw new TypeError(`expected two stream ids, got ${a} and ${b}`);
  if (x[0] !== y[0]) return x[0] < y[0] ? -1 : 1;
  return x[1] === y[1] ? 0 : x[1] < y[1] ? -1 : 1;
}

/** Whether stream id `a` comes after `b` (false when either is no stream id). */
function isAfter(a, b) {
  return parseId(a) !== null && parseId(b) !== null && compareIds(a, b) > 0;
}

/** A fresh idempotency key: a UUID, or 128 random bits as hex. */
function freshKey() {
  const crypto = globalThis.crypto;
  if (typeof crypto?.randomUUID === "function") return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `exp` of a JWT in milliseconds, or null (not a JWT, or no `exp`). */
function expiryOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const payload = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    return typeof payload.exp === "number" ? payload.exp * 1000 : null;
  } catch {
    return null;
  }
}

/** Full jitter: a random delay between 0 and min(cap, base * 2^attempt). */
function jittered(attempt, base, cap) {
  return Math.random() * Math.min(cap, base * 2 ** attempt);
}

/** Run a caller's callback; an exception in it is reported, never breaks the client. */
function invoke(callback, ...args) {
  if (typeof callback !== "function") return;
  try {
    callback(...args);
  } catch (error) {
    (globalThis.reportError ?? console.error)(error);
  }
}

function optionOf(options, name) {
  const value = options[name];
  return value === undefined ? DEFAULTS[name] : value;
}

// -- subscriptions -----------------------------------------------------------------------------

/** One channel followed over a Relay: made by {@link Relay#subscribe}, never with `new`. */
export class Subscription {
  constructor(relay, channel, from, presence, handlers) {
    this._relay = relay;
    /** The channel followed. */
    this.channel = channel;
    /** Whether joins and leaves of the channel's other clients are delivered. */
    this.presence = presence;
    this._handlers = handlers;
    this._position = from === "$" ? null : from;
    this._socket = null; // the socket its subscribe went out on
    this._live = false; // subscribed on that socket: its frames are delivered
    this._ended = false;
    this._lastGap = null;
    this._retry = { count: 0, timer: null }; // a subscribe sent again after `unavailable`
    this._settle = null;
    /** Resolves with the position once the relay first said `subscribed`; rejects when the
     * subscription ends before that (refused, unsubscribed, the Relay closed). */
    this.ready = new Promise((resolve, reject) => {
      this._settle = { resolve, reject };
    });
    this.ready.catch(() => {}); // the rejection is for those who wait on it: never "unhandled"
  }

  /** The id of the last message delivered, else the position subscribed at: "$" until the
   * relay said where "$" is. `subscribe(channel, { from: sub.position })` resumes after it. */
  get position() {
    return this._position ?? "$";
  }

  /** False once unsubscribed, refused, or the Relay closed. */
  get active() {
    return !this._ended;
  }

  /** Whether the relay said `subscribed` on the current connection (its messages flow). */
  get subscribed() {
    return this._live;
  }

  /** Stop following the channel: nothing more of it is delivered, from now on. */
  unsubscribe() {
    this._relay._unsubscribe(this);
  }

  _frame() {
    const from = this._position ?? "$";
    return { type: "subscribe", channel: this.channel, from, presence: this.presence };
  }

  _subscribed(position) {
    this._live = true;
    this._retry.count = 0;
    if (this._position === null || !isAfter(this._position, position)) this._position = position;
    this._settle.resolve(this._position);
    invoke(this._handlers.onSubscribed, { channel: this.channel, id: this._position });
  }

  _deliver(frame) {
    if (!this._live || this._ended) return;
    if (frame.type === "message") this._message(frame);
    else if (frame.type === "gap") this._gap(frame);
    else if (frame.type === "join") invoke(this._handlers.onJoin, frame.client);
    else if (frame.type === "leave") invoke(this._handlers.onLeave, frame.client);
  }

  /** Whether message `id` comes after the position (what a resume repeats does not). */
  _isNew(id) {
    return this._position === null || parseId(id) === null || isAfter(id, this._position);
  }

  _message({ id, channel, data }) {
    if (!this._isNew(id)) return;
    this._position = id;
    invoke(this._handlers.onMessage, { id, channel, data });
  }

  _gap({ channel, from, next }) {
    const last = this._lastGap;
    if (last !== null && last.from === from && last.next === next) return; // told again on resume
    this._lastGap = { from, next };
    invoke(this._handlers.onGap, { channel, from, next });
  }

  _end(error) {
    this._ended = true;
    this._live = false;
    clearTimeout(this._retry.timer);
    this._settle.reject(error);
  }
}

// -- the client ------------------------------------------------------------------------------

/**
 * One `/ws` connection to a relay, with any number of subscriptions. It connects at once and
 * keeps reconnecting until {@link Relay#close}.
 */
export class Relay {
  /**
   * @param {string} url the relay's base URL: `http(s)://host[:port][/prefix]` (or `ws(s)://`)
   * @param {object} [options] see relay.d.ts (`RelayOptions`)
   */
  constructor(url, options = {}) {
    this._base = parseBase(url);
    this._token = options.token ?? null;
    this._WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this._WebSocket !== "function") throw new TypeError("no WebSocket: pass options.WebSocket");
    this._options = Object.fromEntries(Object.keys(DEFAULTS).map((name) => [name, optionOf(options, name)]));
    /** Called with the new state on each change: "connecting", "connected" or "closed". */
    this.onstate = null;
    /** Called with a RelayError that belongs to no call: an error frame with no known ref, a 1008
     * close, a failing token function (console.warn when unset). */
    this.onerror = null;
    this._state = "connecting";
    this._client = null;
    this._connects = 0;
    this._subs = new Map(); // channel -> Subscription
    this._calls = new Set(); // publishes and presence requests not answered, in call order
    this._refs = new Map(); // ref -> what it was sent for, on the current socket
    this._ref = 0;
    this._socket = null;
    this._connected = false; // the current socket said `connected`
    this._attempt = 0;
    this._timers = {};
    this._heardAt = 0;
    this._pingedAt = 0;
    this._tokenExpiry = null;
    queueMicrotask(() => {
      if (this._state === "closed") return;
      invoke(this.onstate, this._state); // the first "connecting", to a handler set right after `new`
      this._connect();
    });
  }

  /** The connection's state: "connecting", "connected" or "closed". */
  get state() {
    return this._state;
  }

  /** This connection's id (as in presence), from the relay's `connected` frame; null before. */
  get client() {
    return this._client;
  }

  /** The relay's `/ws` URL this client connects to (without the token). */
  get url() {
    return socketUrl(this._base, null);
  }

  /** How many connections said `connected` so far (1 + reconnects, once connected). */
  get connects() {
    return this._connects;
  }

  /**
   * Follow `channel`. Throws a RelayError `already_subscribed` when this Relay follows it already.
   * @param {string} channel
   * @param {{from?: string, presence?: boolean}} [options] `from`: "$" (now, the default), "0"
   *   (everything retained) or an entry id (after it); `presence`: also deliver joins and leaves
   * @param {object} [handlers] onMessage, onGap, onJoin, onLeave, onError, onSubscribed
   * @returns {Subscription}
   */
  subscribe(channel, options = {}, handlers = {}) {
    if (this._state === "closed") throw new RelayError("closed", "the Relay is closed", channel);
    if (this._subs.has(channel)) {
      throw new RelayError("already_subscribed", `this Relay follows ${channel} already`, channel);
    }
    const from = options.from ?? "$";
    const sub = new Subscription(this, channel, String(from), Boolean(options.presence), handlers);
    this._subs.set(channel, sub);
    if (this._connected) this._sendSubscribe(sub);
    return sub;
  }

  /**
   * Store `data` (any JSON value) on `channel`; resolves with its entry id once the relay has it.
   * Sent with a fresh idempotency key, and again with the same key after a drop: stored once.
   * @param {string} channel
   * @param {unknown} data
   * @returns {Promise<string>}
   */
  publish(channel, data) {
    const frame = { type: "publish", channel, data, key: freshKey() };
    return this._call(frame, (reply) => String(reply.id));
  }

  /**
   * The clients present on `channel`, on every instance.
   * @param {string} channel
   * @returns {Promise<Array<{client: string, user: string | null, info: unknown}>>}
   */
  presence(channel) {
    return this._call({ type: "presence", channel }, (reply) => (Array.isArray(reply.clients) ? reply.clients : []));
  }

  /** Close for good: pending calls reject with RelayError `closed`; no reconnect follows. */
  close() {
    if (this._state === "closed") return;
    this._setState("closed");
    this._clearTimers();
    const socket = this._socket;
    this._detach();
    if (socket !== null) socket.close(1000, "closed by the client");
    const closed = () => new RelayError("closed", "the Relay was closed");
    for (const call of this._calls) call.reject(closed());
    this._calls.clear();
    for (const sub of this._subs.values()) sub._end(closed());
    this._subs.clear();
  }

  // -- calls ---------------------------------------------------------------------------------

  _call(frame, result) {
    if (this._state === "closed") {
      return Promise.reject(new RelayError("closed", "the Relay is closed", frame.channel));
    }
    let body;
    try {
      body = JSON.stringify(frame); // once: the same text (the same key) each time it is sent
    } catch (error) {
      return Promise.reject(new RelayError("invalid_frame", `data is no JSON: ${error.message}`, frame.channel));
    }
    const size = new TextEncoder().encode(body).length;
    const limit = this._options.maxMessageBytes + ENVELOPE;
    if (size > limit) {
      // the relay would close the socket (1009), and the client would send it again for ever
      const detail = `the frame is ${size} bytes, over the ${limit} a relay with RELAY_MAX_MESSAGE_BYTES=${this._options.maxMessageBytes} takes`;
      return Promise.reject(new RelayError("too_large", detail, frame.channel));
    }
    return new Promise((resolve, reject) => {
      const call = { body, size, result, resolve, reject, retry: { count: 0, timer: null }, sent: false };
      this._calls.add(call);
      if (this._connected) this._sendCall(call);
    });
  }

  _sendCall(call) {
    call.sent = true;
    this._send(call.body, { kind: "call", call });
  }

  _sendSubscribe(sub) {
    sub._socket = this._socket;
    sub._live = false;
    this._send(JSON.stringify(sub._frame()), { kind: "subscribe", sub });
  }

  _unsubscribe(sub) {
    if (sub._ended) return;
    sub._end(new RelayError("unsubscribed", "unsubscribed", sub.channel));
    if (this._subs.get(sub.channel) === sub) this._subs.delete(sub.channel);
    if (this._connected && sub._socket === this._socket) {
      this._send(JSON.stringify({ type: "unsubscribe", channel: sub.channel }), { kind: "unsubscribe" });
    }
  }

  /** Send a frame (`body`: its JSON object text) with a new ref; `pending`: what its reply is for. */
  _send(body, pending) {
    const ref = ++this._ref;
    this._refs.set(ref, pending);
    try {
      this._socket.send(`${body.slice(0, -1)},"ref":${ref}}`);
    } catch {
      this._refs.delete(ref); // the socket is going: its close event makes everything go again
    }
  }

  /** Send a refused call (or subscribe) again later, with the same frame (the same key). */
  _retryLater(retry, send) {
    const { retryDelay, maxRetryDelay } = this._options;
    const delay = Math.min(maxRetryDelay, retryDelay * 2 ** retry.count);
    retry.count += 1;
    clearTimeout(retry.timer);
    retry.timer = setTimeout(() => {
      retry.timer = null;
      if (this._connected) send();
    }, delay);
  }

  // -- the connection ------------------------------------------------------------------------

  async _connect() {
    const generation = (this._generation = (this._generation ?? 0) + 1);
    let token;
    try {
      token = await this._freshToken();
    } catch (error) {
      if (!this._isCurrent(generation)) return;
      this._report(new RelayError("token", `the token function failed: ${error?.message ?? error}`));
      this._reconnectLater();
      return;
    }
    if (!this._isCurrent(generation)) return;
    let socket;
    try {
      socket = new this._WebSocket(socketUrl(this._base, token));
    } catch (error) {
      this._report(new RelayError("connect", `no WebSocket made: ${error?.message ?? error}`));
      this._reconnectLater();
      return;
    }
    this._tokenExpiry = token ? expiryOf(token) : null;
    this._attach(socket);
  }

  _isCurrent(generation) {
    return this._state !== "closed" && generation === this._generation;
  }

  async _freshToken() {
    const token = typeof this._token === "function" ? await this._token() : this._token;
    return token ? String(token) : null;
  }

  _attach(socket) {
    this._socket = socket;
    socket.onmessage = (event) => this._onFrame(socket, event.data);
    socket.onclose = (event) => this._onClose(socket, event);
    socket.onerror = () => {}; // a close event follows
    this._heard();
    this._watch(socket, this._options.keepalive);
  }

  _detach() {
    const socket = this._socket;
    if (socket !== null) {
      socket.onmessage = socket.onclose = socket.onerror = null;
    }
    this._socket = null;
    this._connected = false;
    this._refs.clear();
  }

  _onClose(socket, event) {
    if (socket !== this._socket) return;
    if (event.code === POLICY) {
      this._report(new RelayError("policy", event.reason || "the relay closed the connection (1008)"));
    }
    if (event.code === TOO_BIG) this._refuseLargest(event.reason);
    this._lost();
  }

  /** Give up on the socket now (a close handshake on a dead network may take long). */
  _abandon(code, reason) {
    const socket = this._socket;
    this._detach();
    try {
      socket.close(code, reason);
    } catch {
      // closed already
    }
    this._lost();
  }

  /** The connection is gone: what was sent on it goes again on the next one. */
  _lost() {
    this._detach();
    this._clearTimers();
    for (const call of this._calls) {
      call.sent = false;
      clearTimeout(call.retry.timer);
    }
    for (const sub of this._subs.values()) {
      sub._live = false;
      sub._socket = null;
      clearTimeout(sub._retry.timer);
    }
    if (this._state === "closed") return;
    this._setState("connecting");
    this._reconnectLater();
  }

  _reconnectLater() {
    this._setTimer("reconnect", () => this._connect(), this._backoff());
  }

  /** The next reconnect delay: full jitter, growing with each attempt until a stable connection. */
  _backoff() {
    const { reconnectDelay, maxReconnectDelay } = this._options;
    const delay = jittered(this._attempt, reconnectDelay, maxReconnectDelay);
    this._attempt = Math.min(this._attempt + 1, 30); // the cap is reached long before
    return delay;
  }

  _onConnected(frame) {
    this._client = typeof frame.client === "string" ? frame.client : null;
    this._connected = true;
    this._connects += 1;
    this._setState("connected");
    this._setTimer("stable", () => (this._attempt = 0), this._options.stableAfter);
    this._scheduleRefresh();
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const call of this._calls) this._sendCall(call);
  }

  _setState(state) {
    if (state === this._state) return;
    this._state = state;
    invoke(this.onstate, state);
  }

  _report(error) {
    if (typeof this.onerror === "function") invoke(this.onerror, error);
    else console.warn(`relay: ${error.message}`);
  }

  // -- timers --------------------------------------------------------------------------------

  _setTimer(name, callback, delay) {
    clearTimeout(this._timers[name]);
    this._timers[name] = setTimeout(callback, delay);
  }

  _clearTimers() {
    for (const name of Object.keys(this._timers)) clearTimeout(this._timers[name]);
    this._timers = {};
  }

  // -- the silence watch ---------------------------------------------------------------------

  _heard() {
    this._heardAt = Date.now();
    this._pingedAt = 0;
  }

  _watch(socket, delay) {
    if (!(this._options.keepalive > 0)) return;
    this._setTimer("silence", () => this._checkSilence(socket), Math.max(1, delay));
  }

  _checkSilence(socket) {
    if (socket !== this._socket) return;
    const { keepalive, keepaliveTimeout } = this._options;
    if (this._pingedAt !== 0) {
      this._abandon(SILENT, "silent"); // nothing, not even the pong, since the ping
      return;
    }
    const quiet = Date.now() - this._heardAt;
    if (quiet < keepalive) {
      this._watch(socket, Math.min(keepalive, keepalive - quiet));
      return;
    }
    this._pingedAt = Date.now();
    if (this._connected) this._send('{"type":"ping"}', { kind: "ping" });
    this._watch(socket, keepaliveTimeout);
  }

  // -- a fresh token before the old one expires ---------------------------------------------

  _scheduleRefresh() {
    if (typeof this._token !== "function" || this._tokenExpiry === null) return;
    const left = this._tokenExpiry - Date.now();
    if (left <= 2 * MIN_REFRESH_DELAY) return; // too late: the relay closes with 4401, we reconnect
    const delay = Math.max(MIN_REFRESH_DELAY, Math.min(left * 0.85, left - REFRESH_MARGIN));
    const socket = this._socket;
    this._setTimer("refresh", () => this._refresh(socket), delay);
  }

  async _refresh(socket) {
    let token;
    try {
      token = await this._freshToken();
    } catch {
      return; // the relay closes at expiry; the reconnect asks again
    }
    const expiry = token ? expiryOf(token) : null;
    if (socket !== this._socket || !this._connected || expiry === null) return;
    if (this._tokenExpiry !== null && expiry <= this._tokenExpiry) return; // nothing gained
    this._send(JSON.stringify({ type: "refresh", token }), { kind: "refresh", expiry });
  }

  // -- frames from the relay -----------------------------------------------------------------

  _onFrame(socket, text) {
    if (socket !== this._socket) return;
    this._heard();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this._report(new RelayError("invalid_frame", `the relay sent no JSON: ${String(text).slice(0, 100)}`));
      return;
    }
    if (frame === null || typeof frame !== "object") return;
    if (frame.type === "connected") this._onConnected(frame);
    else if (["message", "gap", "join", "leave"].includes(frame.type)) this._onChannelFrame(frame);
    else this._onReply(frame);
  }

  _onChannelFrame(frame) {
    const sub = this._subs.get(frame.channel);
    if (sub !== undefined) sub._deliver(frame);
  }

  _onReply(frame) {
    const pending = frame.ref === undefined ? undefined : this._refs.get(frame.ref);
    if (pending === undefined) {
      if (frame.type === "error") {
        this._report(new RelayError(String(frame.code), String(frame.detail ?? ""), frame.channel ?? null));
      }
      return;
    }
    this._refs.delete(frame.ref);
    if (frame.type === "error") this._onRefusal(pending, frame);
    else if (pending.kind === "subscribe") this._onSubscribed(pending.sub, frame);
    else if (pending.kind === "call") this._onAnswer(pending.call, frame);
    else if (pending.kind === "refresh") this._onRefreshed(pending.expiry);
  }

  _onSubscribed(sub, frame) {
    if (sub._ended || this._subs.get(sub.channel) !== sub) return;
    sub._subscribed(String(frame.id));
  }

  _onAnswer(call, frame) {
    if (!this._calls.delete(call)) return;
    call.resolve(call.result(frame));
  }

  _onRefreshed(expiry) {
    this._tokenExpiry = expiry;
    this._scheduleRefresh();
  }

  _onRefusal(pending, frame) {
    const code = String(frame.code);
    const error = new RelayError(code, String(frame.detail ?? ""), frame.channel ?? null);
    if (pending.kind === "call") this._callRefused(pending.call, error);
    else if (pending.kind === "subscribe") this._subscribeRefused(pending.sub, error);
    // a refused refresh keeps the old token (the relay closes with 4401 at its expiry and the
    // reconnect gets a fresh one); a refused unsubscribe or ping needs nothing
  }

  /** The relay closed with 1009 (its limit is below `maxMessageBytes`): the biggest call sent on
   * that socket is what it refused; sending it again would close every connection after. */
  _refuseLargest(reason) {
    let largest = null;
    for (const call of this._calls) if (call.sent && (largest === null || call.size > largest.size)) largest = call;
    if (largest === null) return;
    this._calls.delete(largest);
    largest.reject(new RelayError("too_large", reason || "the relay closed the connection: frame too big (1009)"));
  }

  _callRefused(call, error) {
    if (!this._calls.has(call)) return;
    if (RETRIED.has(error.code)) {
      call.sent = false;
      this._retryLater(call.retry, () => !call.sent && this._calls.has(call) && this._sendCall(call));
      return;
    }
    this._calls.delete(call);
    call.reject(error);
  }

  _subscribeRefused(sub, error) {
    if (sub._ended || this._subs.get(sub.channel) !== sub) return;
    if (RETRIED.has(error.code)) {
      const again = () => this._subs.get(sub.channel) === sub && !sub._ended && this._sendSubscribe(sub);
      this._retryLater(sub._retry, again);
      return;
    }
    this._subs.delete(sub.channel);
    sub._end(error);
    invoke(sub._handlers.onError, error);
  }
}
