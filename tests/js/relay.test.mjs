// The browser client's logic on Node's own test runner, against a fake WebSocket:
// node --test tests/js/   (tests/unit/test_js_client.py runs it as part of the suite)
import assert from "node:assert/strict";
import { test } from "node:test";

import { Relay, RelayError, Subscription, VERSION, compareIds } from "../../app/server/static/relay.js";

/** A WebSocket the test drives: it records what the client sends and delivers what the test says. */
class FakeSocket {
  static made = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.closed = null;
    FakeSocket.made.push(this);
  }
  send(text) {
    this.sent.push(JSON.parse(text));
  }
  close(code, reason) {
    this.closed = { code, reason };
  }
  // the relay's side
  frame(value) {
    this.onmessage?.({ data: JSON.stringify(value) }); // a detached socket's handlers are null
  }
  drop(code = 1006, reason = "") {
    this.onclose?.({ code, reason });
  }
  count(type) {
    return this.sent.filter((f) => f.type === type).length;
  }
  last(type) {
    return this.sent.filter((f) => f.type === type).at(-1);
  }
  reply(type, value) {
    this.frame({ ...value, ref: this.last(type).ref });
  }
}

const fast = { WebSocket: FakeSocket, reconnectDelay: 1, maxReconnectDelay: 2, retryDelay: 1, keepalive: 0 };
const until = async (predicate, what) => {
  for (let i = 0; i < 500; i++) {
    if (predicate()) return;
    await new Promise((r) => setTimeout(r, 2));
  }
  throw new Error(`timed out waiting for ${what}`);
};
/** A Relay whose next socket is open (its `connected` frame delivered). */
async function connected(options = {}) {
  const before = FakeSocket.made.length;
  const relay = options.relay ?? new Relay("http://relay.test:8080/base/", { ...fast, ...options });
  await until(() => FakeSocket.made.length > before, "a socket");
  const socket = FakeSocket.made.at(-1);
  socket.frame({ type: "connected", client: `c.${FakeSocket.made.length}` });
  return { relay, socket };
}
async function reconnect(relay, socket, code = 1006) {
  socket.drop(code);
  return (await connected({ relay })).socket;
}

test("the socket goes to <base>/ws with the token, and a token function is asked before every connect", async () => {
  let calls = 0;
  const { relay, socket } = await connected({ token: async () => `t${++calls}` });
  assert.equal(socket.url, "ws://relay.test:8080/base/ws?token=t1");
  const next = await reconnect(relay, socket);
  assert.equal(next.url, "ws://relay.test:8080/base/ws?token=t2");
  assert.equal(calls, 2);
  relay.close();
});

test("a subscription resumes after its last message, drops what it saw, and reports gaps", async () => {
  const { relay, socket } = await connected();
  const got = [];
  const gaps = [];
  const subscribed = [];
  const sub = relay.subscribe("orders", { from: "0" }, {
    onMessage: (m) => got.push(m.id),
    onGap: (g) => gaps.push(g),
    onSubscribed: (p) => subscribed.push(p.id),
  });
  assert.deepEqual(socket.last("subscribe"), { type: "subscribe", channel: "orders", from: "0", presence: false, ref: 1 });
  socket.reply("subscribe", { type: "subscribed", channel: "orders", id: "0-0" });
  socket.frame({ type: "message", channel: "orders", id: "5-0", data: 1 });
  socket.frame({ type: "message", channel: "orders", id: "10-1", data: 2 });
  assert.equal(sub.position, "10-1");

  const next = await reconnect(relay, socket, 1012);
  assert.equal(next.last("subscribe").from, "10-1");
  next.reply("subscribe", { type: "subscribed", channel: "orders", id: "10-1" });
  next.frame({ type: "message", channel: "orders", id: "10-1", data: 2 }); // a repeat: dropped
  next.frame({ type: "message", channel: "orders", id: "9-9", data: 0 }); // older: dropped
  next.frame({ type: "gap", channel: "orders", from: "10-1", next: "20-0" });
  next.frame({ type: "message", channel: "orders", id: "20-0", data: 3 });
  assert.deepEqual(got, ["5-0", "10-1", "20-0"]);
  assert.deepEqual(gaps, [{ channel: "orders", from: "10-1", next: "20-0" }]);
  assert.deepEqual(subscribed, ["0-0", "10-1"]);
  relay.close();
});

test("a subscription that never got its position subscribes from $ again", async () => {
  const { relay, socket } = await connected();
  relay.subscribe("news", {}, {});
  const next = await reconnect(relay, socket);
  assert.equal(next.last("subscribe").from, "$");
  next.reply("subscribe", { type: "subscribed", channel: "news", id: "7-0" });
  const again = await reconnect(relay, next);
  assert.equal(again.last("subscribe").from, "7-0");
  relay.close();
});

test("after unsubscribe nothing of the channel is delivered; a refusal ends the subscription", async () => {
  const { relay, socket } = await connected();
  const got = [];
  const errors = [];
  const sub = relay.subscribe("a", {}, { onMessage: (m) => got.push(m.id) });
  socket.reply("subscribe", { type: "subscribed", channel: "a", id: "1-0" });
  sub.unsubscribe();
  assert.equal(socket.last("unsubscribe").channel, "a");
  socket.frame({ type: "message", channel: "a", id: "2-0", data: 1 });
  assert.deepEqual(got, []);

  relay.subscribe("secret", {}, { onError: (e) => errors.push(e) });
  socket.reply("subscribe", { type: "error", code: "forbidden", detail: "no", channel: "secret" });
  assert.equal(errors[0].code, "forbidden");
  assert.ok(errors[0] instanceof RelayError);
  relay.subscribe("secret", {}, {}); // ended: it may be made again
  assert.throws(() => relay.subscribe("secret", {}, {}), (e) => e.code === "already_subscribed");
  relay.close();
});

test("a publish made while disconnected is sent once connected, and resolves with the id", async () => {
  const relay = new Relay("http://relay.test", fast);
  const published = relay.publish("orders", { n: 1 });
  const { socket } = await connected({ relay });
  const frame = socket.last("publish");
  assert.equal(frame.channel, "orders");
  assert.deepEqual(frame.data, { n: 1 });
  assert.match(frame.key, /^[0-9a-f-]{32,36}$/);
  socket.reply("publish", { type: "ack", channel: "orders", id: "3-0" });
  assert.equal(await published, "3-0");
  relay.close();
});

test("a publish whose ack a drop took is sent again with the same key, in order, and resolves once", async () => {
  const { relay, socket } = await connected();
  const first = relay.publish("c", 1);
  const second = relay.publish("c", 2);
  const keys = socket.sent.filter((f) => f.type === "publish").map((f) => f.key);
  assert.equal(new Set(keys).size, 2);
  const next = await reconnect(relay, socket);
  const resent = next.sent.filter((f) => f.type === "publish");
  assert.deepEqual(resent.map((f) => f.key), keys);
  assert.deepEqual(resent.map((f) => f.data), [1, 2]);
  for (const [i, f] of resent.entries()) next.frame({ type: "ack", channel: "c", id: `${i + 1}-0`, ref: f.ref });
  assert.deepEqual(await Promise.all([first, second]), ["1-0", "2-0"]);
  relay.close();
});

test("unavailable is retried with the same key; forbidden rejects", async () => {
  const { relay, socket } = await connected();
  const retried = relay.publish("c", 1);
  const key = socket.last("publish").key;
  socket.reply("publish", { type: "error", code: "unavailable", detail: "Redis away", channel: "c" });
  await until(() => socket.sent.filter((f) => f.type === "publish").length === 2, "the retry");
  assert.equal(socket.last("publish").key, key);
  socket.reply("publish", { type: "ack", channel: "c", id: "9-0" });
  assert.equal(await retried, "9-0");

  const refused = relay.publish("private", 1);
  socket.reply("publish", { type: "error", code: "forbidden", detail: "no", channel: "private" });
  await assert.rejects(refused, (e) => e instanceof RelayError && e.code === "forbidden" && e.channel === "private");
  relay.close();
});

test("presence resolves with the clients, and is asked again after a drop", async () => {
  const { relay, socket } = await connected();
  const asked = relay.presence("room");
  const next = await reconnect(relay, socket);
  next.reply("presence", { type: "presence", channel: "room", clients: [{ client: "x", user: null, info: null }] });
  assert.deepEqual(await asked, [{ client: "x", user: null, info: null }]);
  relay.close();
});

test("close() rejects what is pending and stops reconnecting", async () => {
  const states = [];
  const { relay, socket } = await connected();
  relay.onstate = (s) => states.push(s);
  const pending = relay.publish("c", 1);
  relay.close();
  await assert.rejects(pending, (e) => e.code === "closed");
  assert.equal(socket.closed.code, 1000);
  const count = FakeSocket.made.length;
  socket.drop();
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(FakeSocket.made.length, count);
  assert.deepEqual(states, ["closed"]);
  await assert.rejects(relay.publish("c", 2), (e) => e.code === "closed");
});

test("the state goes connecting, connected, connecting on a drop, connected again", async () => {
  const relay = new Relay("http://relay.test", fast);
  const states = [];
  relay.onstate = (s) => states.push(s);
  const { socket } = await connected({ relay });
  await reconnect(relay, socket);
  assert.deepEqual(states, ["connecting", "connected", "connecting", "connected"]);
  assert.equal(relay.state, "connected");
  assert.equal(relay.client, "c.".concat(FakeSocket.made.length));
  assert.equal(relay.connects, 2);
  relay.close();
});

test("backoff delays grow with full jitter and stay under the cap", () => {
  const relay = new Relay("http://relay.test", { ...fast, reconnectDelay: 100, maxReconnectDelay: 1000 });
  relay.close();
  const ceilings = [100, 200, 400, 800, 1000, 1000];
  for (const ceiling of ceilings) {
    const delay = relay._backoff();
    assert.ok(delay >= 0 && delay <= ceiling, `${delay} over ${ceiling}`);
  }
  const spread = new Set(Array.from({ length: 20 }, () => Math.round(relay._backoff())));
  assert.ok(spread.size > 5, "jittered");
});

test("a silent connection is pinged, and dropped and remade when the pong never comes", async () => {
  const { relay, socket } = await connected({ keepalive: 20, keepaliveTimeout: 20 });
  await until(() => socket.last("ping") !== undefined, "a ping");
  await until(() => socket.closed !== null, "the silent socket to be closed");
  assert.equal(socket.closed.code, 4000);
  await until(() => FakeSocket.made.at(-1) !== socket, "a new socket");
  relay.close();
});

test("a connection that answers its pings is kept", async () => {
  const { relay, socket } = await connected({ keepalive: 10, keepaliveTimeout: 30 });
  for (let i = 0; i < 4; i++) {
    const count = socket.sent.filter((f) => f.type === "ping").length;
    await until(() => socket.sent.filter((f) => f.type === "ping").length > count, "a ping");
    socket.reply("ping", { type: "pong" });
  }
  assert.equal(socket.closed, null);
  relay.close();
});

test("stream ids compare by time, then sequence; VERSION is a version", () => {
  assert.match(VERSION, /^\d+\.\d+\.\d+/);
  assert.throws(() => compareIds("$", "1-0"), TypeError);
  assert.ok(compareIds("10-0", "9-5") > 0);
  assert.ok(compareIds("10-2", "10-10") < 0);
  assert.equal(compareIds("17-3", "17-3"), 0);
  assert.ok(compareIds("1732540000000-0", "1732539999999-99") > 0);
});

// -- more of the contract ---------------------------------------------------------------------------

const jwt = (claims) =>
  ["{}", JSON.stringify(claims), "sig"].map((part) => Buffer.from(part).toString("base64url")).join(".");

test("base URLs of every scheme map to /ws; a string token goes in the query as is", async () => {
  const cases = [
    ["https://relay.example", "wss://relay.example/ws"],
    ["http://relay.example:8000/", "ws://relay.example:8000/ws"],
    ["wss://relay.example/pre/fix", "wss://relay.example/pre/fix/ws"],
    ["ws://127.0.0.1:9", "ws://127.0.0.1:9/ws"],
  ];
  for (const [base, expected] of cases) {
    const relay = new Relay(base, fast);
    assert.equal(relay.url, expected);
    relay.close();
  }
  assert.throws(() => new Relay("ftp://relay.example", fast), TypeError);
  const { relay, socket } = await connected({ token: "a.b.c" });
  assert.equal(socket.url, "ws://relay.test:8080/base/ws?token=a.b.c");
  relay.close();
});

test("a token function that fails counts as a failed connect: reported, and tried again", async () => {
  let calls = 0;
  const errors = [];
  const relay = new Relay("http://relay.test", {
    ...fast,
    token: () => {
      calls += 1;
      if (calls < 3) throw new Error("token server down");
      return "good";
    },
  });
  relay.onerror = (e) => errors.push(e.code);
  const { socket } = await connected({ relay });
  assert.equal(calls, 3);
  assert.deepEqual(errors, ["token", "token"]);
  assert.equal(socket.url, "ws://relay.test/ws?token=good");
  const next = await reconnect(relay, socket, 4401); // expired: a fresh token
  assert.equal(calls, 4);
  assert.ok(next.url.endsWith("token=good"));
  relay.close();
});

test("a subscription made while disconnected is sent on connect, keeps its presence flag, gets joins and leaves", async () => {
  const relay = new Relay("http://relay.test", fast);
  const events = [];
  const sub = relay.subscribe("room", { from: "0", presence: true }, {
    onJoin: (c) => events.push(["join", c.client]),
    onLeave: (c) => events.push(["leave", c.client]),
  });
  assert.equal(sub.position, "0");
  const { socket } = await connected({ relay });
  assert.deepEqual(socket.last("subscribe"), { type: "subscribe", channel: "room", from: "0", presence: true, ref: 1 });
  socket.frame({ type: "join", channel: "room", client: { client: "early", user: null, info: null } }); // before subscribed
  socket.reply("subscribe", { type: "subscribed", channel: "room", id: "0" });
  assert.equal(await sub.ready, "0");
  socket.frame({ type: "join", channel: "room", client: { client: "x", user: "u", info: null } });
  socket.frame({ type: "leave", channel: "room", client: { client: "x", user: "u", info: null } });
  assert.deepEqual(events, [["join", "x"], ["leave", "x"]]);
  const next = await reconnect(relay, socket);
  assert.equal(next.last("subscribe").presence, true);
  relay.close();
});

test("frames of an old socket, and of a subscription not yet subscribed again, are ignored", async () => {
  const { relay, socket } = await connected();
  const got = [];
  const sub = relay.subscribe("c", { from: "0" }, { onMessage: (m) => got.push(m.id) });
  assert.ok(sub instanceof Subscription);
  assert.equal(sub.subscribed, false);
  socket.reply("subscribe", { type: "subscribed", channel: "c", id: "0" });
  assert.equal(sub.subscribed, true);
  socket.frame({ type: "message", channel: "c", id: "1-0", data: null });
  socket.drop();
  assert.equal(sub.subscribed, false);
  socket.frame({ type: "message", channel: "c", id: "5-0", data: null }); // the old socket: ignored
  await until(() => FakeSocket.made.at(-1) !== socket, "a new socket");
  const next = FakeSocket.made.at(-1);
  next.frame({ type: "connected", client: "again" });
  next.frame({ type: "message", channel: "c", id: "2-0", data: null }); // before its subscribed reply
  next.reply("subscribe", { type: "subscribed", channel: "c", id: "1-0" });
  next.frame({ type: "message", channel: "c", id: "3-0", data: null });
  assert.deepEqual(got, ["1-0", "3-0"]);
  assert.equal(sub.active, true);
  sub.unsubscribe();
  assert.equal(sub.active, false);
  relay.close();
});

test("a subscribe refused as unavailable is sent again; the same gap told twice is reported once", async () => {
  const { relay, socket } = await connected();
  const gaps = [];
  const sub = relay.subscribe("c", { from: "5-0" }, { onGap: (g) => gaps.push(g) });
  socket.reply("subscribe", { type: "error", code: "unavailable", detail: "Redis away", channel: "c" });
  await until(() => socket.count("subscribe") === 2, "the subscribe sent again");
  assert.equal(socket.last("subscribe").from, "5-0");
  socket.reply("subscribe", { type: "subscribed", channel: "c", id: "5-0" });
  socket.frame({ type: "gap", channel: "c", from: "5-0", next: "9-0" });
  const next = await reconnect(relay, socket);
  next.reply("subscribe", { type: "subscribed", channel: "c", id: "5-0" });
  next.frame({ type: "gap", channel: "c", from: "5-0", next: "9-0" });
  assert.equal(gaps.length, 1);
  assert.equal(sub.position, "5-0"); // a gap does not move the position
  relay.close();
});

test("an error frame of no call and a 1008 close go to onerror, never thrown; the client reconnects", async () => {
  const { relay, socket } = await connected();
  const errors = [];
  relay.onerror = (e) => errors.push(e);
  socket.frame({ type: "error", code: "invalid_frame", detail: "what?" });
  socket.frame({ type: "error", code: "forbidden", detail: "old", ref: 999 });
  socket.drop(1008, "flood");
  await until(() => FakeSocket.made.at(-1) !== socket, "a new socket");
  assert.deepEqual(errors.map((e) => e.code), ["invalid_frame", "forbidden", "policy"]);
  assert.ok(errors.every((e) => e instanceof RelayError));
  assert.match(errors[2].detail, /flood/);
  relay.close();
});

test("rate_limited is retried with the same key; too_large rejects; close rejects presence and ready", async () => {
  const { relay, socket } = await connected();
  const limited = relay.publish("c", 1);
  const key = socket.last("publish").key;
  socket.reply("publish", { type: "error", code: "rate_limited", detail: "slow down", channel: "c" });
  await until(() => socket.count("publish") === 2, "the retry");
  const again = socket.last("publish");
  assert.equal(again.key, key);
  const next = await reconnect(relay, socket); // dropped before the ack: sent again, once
  assert.equal(next.count("publish"), 1);
  assert.equal(next.last("publish").key, key);
  next.reply("publish", { type: "ack", channel: "c", id: "4-0" });
  assert.equal(await limited, "4-0");

  const big = relay.publish("c", "x".repeat(10));
  next.reply("publish", { type: "error", code: "too_large", detail: "over", channel: "c" });
  await assert.rejects(big, (e) => e.code === "too_large" && e.detail === "over");

  const asked = relay.presence("c");
  const sub = relay.subscribe("d");
  relay.close();
  await assert.rejects(asked, (e) => e instanceof RelayError && e.code === "closed");
  await assert.rejects(sub.ready, (e) => e.code === "closed");
  assert.equal(sub.active, false);
  assert.equal(relay.state, "closed");
  assert.throws(() => relay.subscribe("e"), (e) => e.code === "closed");
});

test("the backoff ceiling doubles up to the cap, and starts over only after a stable connection", async () => {
  const random = Math.random;
  Math.random = () => 0.999;
  try {
    const relay = new Relay("http://relay.test", { ...fast, reconnectDelay: 100, maxReconnectDelay: 1000 });
    relay.close();
    const delays = Array.from({ length: 7 }, () => relay._backoff());
    assert.deepEqual(delays.map(Math.round), [100, 200, 400, 799, 999, 999, 999]);
  } finally {
    Math.random = random;
  }
  const { relay, socket } = await connected({ stableAfter: 40 });
  let current = socket;
  for (let i = 0; i < 3; i++) current = await reconnect(relay, current); // up, then dropped at once
  assert.ok(relay._attempt >= 3, `attempt ${relay._attempt}`);
  await until(() => relay._attempt === 0, "the backoff to start over");
  relay.close();
});

test("before a function token's exp, a fresh one is sent as refresh; a refusal changes nothing", async () => {
  const now = Math.floor(Date.now() / 1000);
  const tokens = [jwt({ exp: now + 3 }), jwt({ exp: now + 3600 })];
  let calls = 0;
  const { relay, socket } = await connected({ token: () => tokens[Math.min(calls++, 1)] });
  assert.equal(calls, 1);
  await until(() => socket.count("refresh") === 1, "a refresh");
  assert.equal(socket.last("refresh").token, tokens[1]);
  socket.reply("refresh", { type: "error", code: "invalid_token", detail: "no" });
  assert.equal(socket.closed, null);
  assert.equal(relay.state, "connected");
  relay.close();
});

test("a publish too big for any relay frame rejects unsent; a 1009 close rejects the largest in flight", async () => {
  const { relay, socket } = await connected({ maxMessageBytes: 100 });
  await assert.rejects(relay.publish("c", "x".repeat(5000)), (e) => e instanceof RelayError && e.code === "too_large");
  assert.equal(socket.last("publish"), undefined);
  const small = relay.publish("c", 1);
  const big = assert.rejects(relay.publish("c", "y".repeat(3000)), (e) => e.code === "too_large");
  const next = await reconnect(relay, socket, 1009);
  await big;
  const resent = next.sent.filter((f) => f.type === "publish");
  assert.deepEqual(resent.map((f) => f.data), [1]);
  next.reply("publish", { type: "ack", channel: "c", id: "1-0" });
  assert.equal(await small, "1-0");
  relay.close();
});
