// relay.js: the relay's browser client. One ES module, no dependencies, no build step; served by
// every relay instance at /client/relay.js (this file, as written). It speaks WS /ws: one socket
// for every channel a page follows and publishes to (docs/protocol.md, "The browser client").
//
//   import { Relay } from "https://relay.example.com/client/relay.js";
//   const relay = new Relay("https://relay.example.com", { token: () => fetchToken() });
//   const sub = relay.subscribe("orders", { from: "0" }, { onMessage(m) {}, onGap(g) {} });
//   const id = await relay.publish("orders", { n: 1 });
//
// After any drop it reconnects with jittered backoff, asks a token function for a fresh token,
// resubscribes every subscription from its position (dropping anything at or before it), and
// sends each unacknowledged publish again with the same key: each message is delivered once, in
// order, and each publish is stored once.

export const VERSION = "0.1.0";

/** Close codes the relay uses (app/protocol/codes.py), and the client's own. */
const SILENT = 4000; // the client's: nothing arrived within keepalive + keepaliveTimeout
const RETRIED_ERRORS = new Set(["unavailable", "rate_limited"]);
const STABLE_MS = 5000; // a connection up this long resets the backoff

/** An error the relay answered with, or the client's own (`closed`, `already_subscribed`). */
export class RelayError extends Error {
  /**
   * @param {string} code the error code (docs/protocol.md)
   * @param {string} detail what the relay said
   * @param {string | undefined} channel the channel the refused frame named
   */
  constructor(code, detail, channel) {
    super(channel ? `${code} (${channel}): ${detail}` : `${code}: ${detail}`);
    this.name = "RelayError";
    this.code = code;
    this.detail = detail;
    this.channel = channel;
  }
}

/** Compare two stream ids ("<ms>-<seq>"): negative, zero or positive. */
export function compareIds(a, b) {
  const [am, as = "0"] = a.split("-");
  const [bm, bs = "0"] = b.split("-");
  return Number(am) - Number(bm) || Number(as) - Number(bs);
}

function randomKey() {
  const cryptoApi = globalThis.crypto;
  if (cryptoApi && typeof cryptoApi.randomUUID === "function") return cryptoApi.randomUUID();
  const bytes = new Uint8Array(16);
  cryptoApi.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The `exp` claim of a JWT (seconds), or undefined. */
function expiryOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const exp = JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "="))).exp;
    return typeof exp === "number" ? exp : undefined;
  } catch {
    return undefined;
  }
}

/** The /ws address for a relay's base URL (http, https, ws or wss; a path prefix is kept). */
function socketUrl(base, token) {
  const url = new URL(base);
  url.protocol = { "http:": "ws:", "https:": "wss:" }[url.protocol] || url.protocol;
  url.pathname = `${url.pathname.replace(/\/+$/, "")}/ws`;
  if (token) url.searchParams.set("token", token);
  return url.toString();
}

/** One channel followed by a Relay. */
export class Subscription {
  constructor(relay, channel, options, handlers) {
    this.channel = channel;
    /** Id of the last message delivered, or the subscribed position ("$" until the relay gave one). */
    this.position = options.from ?? "$";
    this.presence = Boolean(options.presence);
    this.handlers = handlers || {};
    this.active = true;
    this.subscribed = false; // on the current connection
    this._relay = relay;
  }

  /** Stop following the channel; no handler is called for it from now on. */
  unsubscribe() {
    if (!this.active) return;
    this.active = false;
    this._relay._unsubscribe(this);
  }

  _deliver(frame) {
    if (!this.active) return;
    if (frame.type === "message") {
      if (this.position !== "$" && compareIds(frame.id, this.position) <= 0) return; // seen already
      this.position = frame.id;
      this._call("onMessage", { id: frame.id, channel: frame.channel, data: frame.data });
    } else if (frame.type === "gap") {
      this._call("onGap", { channel: frame.channel, from: frame.from, next: frame.next });
    } else if (frame.type === "join") {
      this._call("onJoin", frame.client);
    } else if (frame.type === "leave") {
      this._call("onLeave", frame.client);
    }
  }

  _call(name, value) {
    const handler = this.handlers[name];
    if (typeof handler !== "function") return;
    try {
      handler.call(this.handlers, value);
    } catch (error) {
      console.error(`relay: ${name} for ${this.channel} threw`, error); // a page's bug must not stop delivery
    }
  }
}

/** One connection to the relay, kept up by itself, for any number of channels. */
export class Relay {
  /**
   * @param {string} url the relay's base URL
   * @param {object} [options] token, reconnectDelay, maxReconnectDelay, keepalive, keepaliveTimeout, WebSocket
   */
  constructor(url, options = {}) {
    this.url = url;
    this.options = {
      reconnectDelay: 250,
      maxReconnectDelay: 10000,
      retryDelay: 250,
      maxRetryDelay: 5000,
      keepalive: 15000,
      keepaliveTimeout: 10000,
      ...options,
    };
    this.state = "connecting";
    this.client = undefined; // this connection's id in presence
    this.onstate = null;
    this.onerror = null;
    this.connects = 0; // connections made (1 + reconnects)
    this._subs = new Map(); // channel -> Subscription
    this._ops = []; // publishes and presence requests not answered yet, in order
    this._pending = new Map(); // ref -> what a reply answers
    this._nextRef = 1;
    this._socket = null;
    this._open = false; // the current socket got `connected`
    this._attempt = 0;
    this._timers = new Set();
    this._silence = null;
    this._closed = false;
    this._connect();
  }

  /**
   * Follow a channel.
   * @param {string} channel
   * @param {{from?: string, presence?: boolean}} [options]
   * @param {object} [handlers] onMessage, onGap, onJoin, onLeave, onSubscribed, onError
   */
  subscribe(channel, options = {}, handlers = {}) {
    if (this._closed) throw new RelayError("closed", "the relay connection was closed", channel);
    if (this._subs.has(channel)) {
      throw new RelayError("already_subscribed", "this Relay follows the channel already", channel);
    }
    const sub = new Subscription(this, channel, options, handlers);
    this._subs.set(channel, sub);
    if (this._open) this._sendSubscribe(sub);
    return sub;
  }

  /** Publish a message; resolves with its entry id once Redis has it (stored exactly once). */
  publish(channel, data) {
    return this._operation({ type: "publish", channel, data, key: randomKey() });
  }

  /** The clients present on a channel, on every instance. */
  presence(channel) {
    return this._operation({ type: "presence", channel });
  }

  /** Close for good: pending calls reject with code "closed". */
  close() {
    if (this._closed) return;
    this._closed = true;
    for (const timer of this._timers) clearTimeout(timer);
    this._timers.clear();
    this._stopSilenceWatch();
    const socket = this._socket;
    this._socket = null;
    this._open = false;
    if (socket) socket.close(1000, "closed by the client");
    for (const op of this._ops) op.reject(new RelayError("closed", "the relay connection was closed", op.frame.channel));
    this._ops = [];
    this._pending.clear();
    for (const sub of this._subs.values()) sub.active = false;
    this._subs.clear();
    this._setState("closed");
  }

  // -- the connection ---------------------------------------------------------------------------

  async _connect() {
    if (this._closed) return;
    this._setState("connecting");
    let token;
    try {
      token = await this._token();
    } catch (error) {
      this._report(new RelayError("token", `the token function failed: ${error}`));
      this._reconnectLater();
      return;
    }
    if (this._closed) return;
    const Socket = this.options.WebSocket || globalThis.WebSocket;
    let socket;
    try {
      socket = new Socket(socketUrl(this.url, token));
    } catch (error) {
      this._report(new RelayError("connect", String(error)));
      this._reconnectLater();
      return;
    }
    this._socket = socket;
    this.connects += 1;
    this._currentToken = token;
    socket.onmessage = (event) => socket === this._socket && this._onFrame(event.data);
    socket.onclose = (event) => socket === this._socket && this._onDrop(event);
    socket.onerror = () => {}; // a close follows every error
  }

  async _token() {
    const token = this.options.token;
    return typeof token === "function" ? await token() : token;
  }

  _onDrop(event) {
    this._socket = null;
    const wasOpen = this._open;
    this._open = false;
    this._stopSilenceWatch();
    clearTimeout(this._refreshTimer);
    if (event && event.code === 1008) {
      this._report(new RelayError("policy", `the relay closed the connection: ${event.reason || 1008}`));
    }
    for (const sub of this._subs.values()) sub.subscribed = false;
    this._pending.clear(); // every op still pending is sent again on the next connection
    for (const op of this._ops) op.sent = false;
    if (wasOpen && Date.now() - this._openedAt >= STABLE_MS) this._attempt = 0;
    this._reconnectLater();
  }

  /** Full jitter: a random delay between 0 and min(cap, base * 2^attempt). */
  _backoff() {
    const { reconnectDelay, maxReconnectDelay } = this.options;
    const ceiling = Math.min(maxReconnectDelay, reconnectDelay * 2 ** this._attempt);
    this._attempt = Math.min(this._attempt + 1, 30);
    return Math.random() * ceiling;
  }

  _reconnectLater() {
    if (this._closed) return;
    this._setState("connecting");
    this._later(this._backoff(), () => this._connect());
  }

  _later(ms, action) {
    const timer = setTimeout(() => {
      this._timers.delete(timer);
      action();
    }, ms);
    this._timers.add(timer);
    return timer;
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    if (typeof this.onstate === "function") this.onstate(state);
  }

  _report(error) {
    if (typeof this.onerror === "function") this.onerror(error);
    else console.warn("relay:", error.message);
  }

  _send(frame) {
    const ref = this._nextRef++;
    this._socket.send(JSON.stringify({ ...frame, ref }));
    return ref;
  }

  // -- frames from the relay ------------------------------------------------------------------------

  _onFrame(text) {
    this._heard();
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.type === "connected") {
      this._onConnected(frame);
    } else if ("ref" in frame && this._pending.has(frame.ref)) {
      const answer = this._pending.get(frame.ref);
      this._pending.delete(frame.ref);
      answer(frame);
    } else if (frame.type === "error") {
      this._report(new RelayError(frame.code, frame.detail, frame.channel));
    } else if (frame.channel !== undefined) {
      const sub = this._subs.get(frame.channel);
      if (sub && sub.subscribed) sub._deliver(frame);
    }
  }

  _onConnected(frame) {
    this.client = frame.client;
    this._open = true;
    this._openedAt = Date.now();
    this._setState("connected");
    this._startSilenceWatch(this._socket);
    for (const sub of this._subs.values()) this._sendSubscribe(sub);
    for (const op of this._ops) this._sendOperation(op);
    this._scheduleRefresh();
  }

  _sendSubscribe(sub) {
    const ref = this._send({ type: "subscribe", channel: sub.channel, from: sub.position, presence: sub.presence });
    this._pending.set(ref, (reply) => {
      if (!sub.active || this._subs.get(sub.channel) !== sub) return;
      if (reply.type === "subscribed") {
        if (sub.position === "$" || sub.position === "0") sub.position = reply.id;
        sub.subscribed = true;
        sub._call("onSubscribed", { channel: sub.channel, id: reply.id });
      } else if (reply.type === "error" && RETRIED_ERRORS.has(reply.code)) {
        this._later(this._retryDelay(sub), () => this._open && sub.active && this._sendSubscribe(sub));
      } else {
        this._subs.delete(sub.channel);
        sub.active = false;
        sub._call("onError", new RelayError(reply.code, reply.detail, sub.channel));
      }
    });
  }

  _unsubscribe(sub) {
    if (this._subs.get(sub.channel) !== sub) return;
    this._subs.delete(sub.channel);
    if (this._open) {
      const ref = this._send({ type: "unsubscribe", channel: sub.channel });
      this._pending.set(ref, () => {});
    }
  }

  // -- publishes and presence requests ----------------------------------------------------------------

  _operation(frame) {
    if (this._closed) return Promise.reject(new RelayError("closed", "the relay connection was closed", frame.channel));
    return new Promise((resolve, reject) => {
      const op = { frame, resolve, reject, sent: false, attempt: 0 };
      this._ops.push(op);
      if (this._open) this._sendOperation(op);
    });
  }

  _sendOperation(op) {
    if (op.sent || !this._open) return;
    op.sent = true;
    const ref = this._send(op.frame);
    this._pending.set(ref, (reply) => this._onAnswer(op, reply));
  }

  _onAnswer(op, reply) {
    if (reply.type === "error" && RETRIED_ERRORS.has(reply.code)) {
      op.sent = false;
      this._later(this._retryDelay(op), () => this._sendOperation(op));
      return;
    }
    this._ops.splice(this._ops.indexOf(op), 1);
    if (reply.type === "error") op.reject(new RelayError(reply.code, reply.detail, reply.channel));
    else if (reply.type === "ack") op.resolve(reply.id);
    else op.resolve(reply.clients);
  }

  _retryDelay(thing) {
    const { retryDelay, maxRetryDelay } = this.options;
    thing.attempt = (thing.attempt || 0) + 1;
    return Math.min(maxRetryDelay, retryDelay * 2 ** (thing.attempt - 1));
  }

  // -- a fresh token before the current one expires ------------------------------------------------

  _scheduleRefresh() {
    clearTimeout(this._refreshTimer);
    const exp = typeof this.options.token === "function" ? expiryOf(this._currentToken || "") : undefined;
    if (exp === undefined) return;
    const left = exp * 1000 - Date.now();
    if (left <= 4000) return; // too late to bother: the relay closes with 4401 and we reconnect
    this._refreshTimer = this._later(Math.max(left * 0.85, left - 60000), () => this._refresh());
  }

  async _refresh() {
    let token;
    try {
      token = await this._token();
    } catch {
      return; // the expiry closes the connection, and the reconnect asks again
    }
    if (!this._open || !token) return;
    const ref = this._send({ type: "refresh", token });
    this._pending.set(ref, (reply) => {
      if (reply.type === "refreshed") {
        this._currentToken = token;
        this._scheduleRefresh();
      }
    });
  }

  // -- the silence watch: browsers cannot send WebSocket pings --------------------------------------
  //
  // One timer per connection, not one per frame: every frame only notes the time it came. When
  // nothing came for `keepalive` ms the client sends a `ping` frame (answered `pong`); when still
  // nothing came `keepaliveTimeout` ms later, the connection is dead (a hung instance, a lost
  // network): it is dropped and a new one made.

  _heard() {
    this._lastHeard = Date.now();
  }

  _startSilenceWatch(socket) {
    const { keepalive, keepaliveTimeout } = this.options;
    if (!keepalive) return;
    this._lastHeard = Date.now();
    let pinged = 0; // when the ping went, or 0
    const tick = Math.max(10, Math.min(keepalive, keepaliveTimeout) / 4);
    const check = () => {
      if (socket !== this._socket) return;
      const now = Date.now();
      if (pinged && this._lastHeard < pinged && now - pinged >= keepaliveTimeout) {
        this._onDrop({ code: SILENT }); // stop listening to it at once, then close it
        socket.close(SILENT, "silent");
        return;
      }
      if (this._lastHeard >= pinged) pinged = 0;
      if (!pinged && now - this._lastHeard >= keepalive) {
        pinged = now;
        this._pending.set(this._send({ type: "ping" }), () => {});
      }
      this._silence = this._later(tick, check);
    };
    this._silence = this._later(tick, check);
  }

  _stopSilenceWatch() {
    if (this._silence !== null) {
      clearTimeout(this._silence);
      this._timers.delete(this._silence);
      this._silence = null;
    }
  }
}
