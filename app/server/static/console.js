// The relay's live console (GET /console): list channels, follow some live, publish JSON.
//
// Powers: none beyond the token typed into the page. Every call carries that token: fetch()
// sends it as "Authorization: Bearer", the browser client (relay.js) as its `token` option.
// Nothing is stored on the server for the console.
//
// Storage: this tab's sessionStorage only (never localStorage, never a cookie), so it is gone
// when the tab closes and is not shared with other tabs:
//   - "relay-console:token"   the token typed in (so a reload keeps it);
//   - "relay-console:follows" the followed channels, each with its `position` (the id of the last
//     message shown, or the position the relay subscribed it at). A reload follows them again
//     from there: nothing is shown twice, nothing is skipped (a gap is reported if retention
//     removed messages meanwhile). Across a dropped connection, the client itself resumes.
//
// Messages are untrusted: they reach the DOM through textContent and attributes only, never
// innerHTML.

const TOKEN_KEY = "relay-console:token";
const FOLLOWS_KEY = "relay-console:follows";
const MAX_ROWS = 500; // per followed channel, in the DOM
const CHANNEL_RULE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const POSITION_RULE = /^(\$|0|\d+(-\d+)?)$/;

// relay.js lives at /client/relay.js next to /console: relative URLs keep working when the relay
// is served under a path prefix.
const BASE = new URL(".", location.href).href.replace(/\/$/, "");

const $ = (id) => document.getElementById(id);
const ui = {
  state: $("state"),
  clientId: $("client-id"),
  connectionError: $("connection-error"),
  tokenForm: $("token-form"),
  token: $("token"),
  channelsRefresh: $("channels-refresh"),
  channelsStatus: $("channels-status"),
  channelsError: $("channels-error"),
  channelsBody: $("channels-body"),
  followForm: $("follow-form"),
  followChannel: $("follow-channel"),
  followFrom: $("follow-from"),
  followFromId: $("follow-from-id"),
  followError: $("follow-error"),
  publishForm: $("publish-form"),
  publishChannel: $("publish-channel"),
  publishData: $("publish-data"),
  publishResult: $("publish-result"),
  followed: $("followed"),
  followedEmpty: $("followed-empty"),
  template: $("channel-template"),
};

// -- storage (sessionStorage only; see the top of this file) -------------------------------------

function load(key, fallback) {
  try {
    const text = sessionStorage.getItem(key);
    return text === null ? fallback : JSON.parse(text);
  } catch {
    return fallback;
  }
}

function store(key, value) {
  try {
    sessionStorage.setItem(key, JSON.stringify(value));
  } catch {
    // storage full or disabled: the console works, a reload just starts afresh
  }
}

// -- small helpers ---------------------------------------------------------------------------------

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function describe(error) {
  if (error && typeof error === "object" && "code" in error) {
    return error.detail ? `${error.code}: ${error.detail}` : String(error.code);
  }
  return error instanceof Error ? error.message : String(error);
}

function showError(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

function token() {
  return ui.token.value.trim();
}

// -- the client -----------------------------------------------------------------------------------

let client = null; // the module /client/relay.js, once loaded
let relay = null; // the Relay of the current token
let generation = 0; // bumped on every reconnect: callbacks of an older Relay are ignored
const follows = new Map(); // channel -> Follow

function clientIdOf(r) {
  if (!r) return null;
  return r.client ?? null; // relay.js: this connection's id in presence (undefined until connected)
}

function myId() {
  return clientIdOf(relay);
}

function setState(state) {
  ui.state.textContent = state;
  ui.state.dataset.state = state;
  const id = myId();
  ui.clientId.textContent = id ?? "–";
  if (id) ui.clientId.dataset.client = id;
  else delete ui.clientId.dataset.client;
}

function connect() {
  if (relay) {
    try {
      relay.close();
    } catch {
      // already closed
    }
  }
  generation += 1;
  const mine = generation;
  const value = token();
  relay = new client.Relay(BASE, value ? { token: value } : {});
  relay.onstate = (state) => {
    if (mine !== generation) return;
    setState(state);
    if (state === "connected") {
      showError(ui.connectionError, "");
      // joins and leaves may have been missed while disconnected: ask again once resubscribed
      for (const follow of follows.values()) {
        follow.whenSubscribed(() => mine === generation && follow.refreshPresence());
      }
    }
  };
  relay.onerror = (error) => {
    if (mine === generation) showError(ui.connectionError, describe(error));
  };
  setState("connecting");
  for (const follow of follows.values()) follow.subscribe();
}

// -- followed channels ----------------------------------------------------------------------------

function saveFollows() {
  store(
    FOLLOWS_KEY,
    [...follows.values()].map((f) => ({ channel: f.channel, from: f.position() })),
  );
}

let saveTimer = null;
function saveSoon() {
  if (saveTimer !== null) return;
  saveTimer = setTimeout(() => {
    saveTimer = null;
    saveFollows();
  }, 250);
}
addEventListener("pagehide", saveFollows);

class Follow {
  constructor(channel, from) {
    this.channel = channel;
    this.from = from; // where to (re)subscribe from: the last known position
    this.sub = null;
    this.subscribed = false;
    this.present = new Map(); // client id -> presence entry
    this.pending = null; // join/leave events seen while a presence request is out
    this.presenceSeq = 0;
    this.build();
  }

  build() {
    const node = ui.template.content.firstElementChild.cloneNode(true);
    node.id = `channel-${this.channel}`;
    node.dataset.channel = this.channel;
    node.dataset.testid = `channel-${this.channel}`;
    node.setAttribute("aria-label", `channel ${this.channel}`);
    node.querySelector(".channel-name").textContent = this.channel;
    this.node = node;
    this.positionNode = node.querySelector(".position");
    this.statusNode = node.querySelector(".status");
    this.presenceNode = node.querySelector(".presence");
    this.presenceCount = node.querySelector(".presence-count");
    this.list = node.querySelector(".messages");
    const unfollow = node.querySelector(".unfollow");
    unfollow.setAttribute("aria-label", `Unfollow ${this.channel}`);
    unfollow.addEventListener("click", () => unfollowChannel(this.channel));
    ui.followed.append(node);
    ui.followedEmpty.hidden = true;
  }

  position() {
    const current = this.sub ? this.sub.position : null;
    return current ?? this.from;
  }

  status(text, kind = "") {
    this.statusNode.textContent = text;
    this.statusNode.dataset.kind = kind;
  }

  subscribe() {
    this.from = this.position();
    this.sub = null;
    this.subscribed = false;
    this.present.clear();
    this.renderPresence();
    this.status(`following from ${this.from}`);
    const mine = generation;
    const live = () => mine === generation && follows.get(this.channel) === this;
    const handlers = {
      onMessage: (m) => live() && this.message(m),
      onGap: (g) => live() && this.gap(g),
      onJoin: (c) => live() && this.presenceEvent("join", c),
      onLeave: (c) => live() && this.presenceEvent("leave", c),
      onError: (e) => live() && this.error(e),
      onSubscribed: () => live() && this.onSubscribed(),
    };
    try {
      this.sub = relay.subscribe(this.channel, { from: this.from, presence: true }, handlers);
    } catch (error) {
      this.error(error);
      return;
    }
    this.whenSubscribed(() => live() && this.onSubscribed());
  }

  // relay.js has no event for the relay's "subscribed" reply: its Subscription says so in
  // `subscribed` (on the current connection) and `active` (false once refused or unsubscribed)
  whenSubscribed(then) {
    const sub = this.sub;
    const check = () => {
      if (sub !== this.sub || !sub || !sub.active) return;
      if (sub.subscribed) then();
      else setTimeout(check, 50);
    };
    check();
  }

  onSubscribed() {
    if (this.subscribed) return;
    this.subscribed = true;
    this.status("live", "ok");
    this.showPosition();
    saveSoon();
    this.refreshPresence();
    // a join is written to Redis in the background: ask once more a little later
    setTimeout(() => this.subscribed && this.refreshPresence(), 1500);
  }

  showPosition() {
    const position = this.position();
    this.positionNode.textContent = position ?? "–";
  }

  addRow(row) {
    const list = this.list;
    const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 24;
    list.append(row);
    while (list.childElementCount > MAX_ROWS) list.firstElementChild.remove();
    if (atBottom) list.scrollTop = list.scrollHeight;
  }

  message(m) {
    if (!this.subscribed) this.onSubscribed();
    const row = el("li", "message");
    row.dataset.testid = "message";
    row.dataset.id = String(m.id);
    row.append(el("code", "id", String(m.id)));
    let text;
    try {
      text = JSON.stringify(m.data);
    } catch {
      text = String(m.data);
    }
    row.append(el("pre", "data", text));
    this.addRow(row);
    this.showPosition();
    saveSoon();
  }

  gap(g) {
    const row = el(
      "li",
      "gap",
      `gap: messages after ${g.from} are gone (retention); continuing at ${g.next ?? "the next message"}`,
    );
    row.dataset.testid = "gap";
    row.dataset.from = String(g.from);
    if (g.next != null) row.dataset.next = String(g.next);
    this.addRow(row);
  }

  error(e) {
    const text = describe(e);
    this.status(`error: ${text}`, "error");
    const row = el("li", "error", `error: ${text}`);
    row.dataset.testid = "error";
    if (e && e.code) row.dataset.code = String(e.code);
    this.addRow(row);
  }

  presenceEvent(kind, entry) {
    if (!entry || typeof entry !== "object") return;
    if (this.pending) this.pending.push([kind, entry]);
    this.applyPresence(kind, entry);
    this.renderPresence();
  }

  applyPresence(kind, entry) {
    if (kind === "join") this.present.set(String(entry.client), entry);
    else this.present.delete(String(entry.client));
  }

  async refreshPresence() {
    if (!relay || !this.subscribed) return;
    const seq = ++this.presenceSeq;
    const mine = generation;
    this.pending = [];
    let clients;
    try {
      clients = await relay.presence(this.channel);
    } catch (error) {
      if (seq === this.presenceSeq) this.pending = null;
      if (mine === generation && follows.get(this.channel) === this) {
        this.status(`presence: ${describe(error)}`, "error");
      }
      return;
    }
    if (seq !== this.presenceSeq || mine !== generation || follows.get(this.channel) !== this) return;
    const events = this.pending || [];
    this.pending = null;
    this.present = new Map(clients.map((c) => [String(c.client), c]));
    for (const [kind, entry] of events) this.applyPresence(kind, entry);
    this.renderPresence();
  }

  renderPresence() {
    const me = myId();
    const present = new Map(this.present);
    // subscribed means present, even before the relay's list has caught up
    if (this.subscribed && me && !present.has(me)) present.set(me, { client: me, user: null, info: null });
    const items = [...present.values()].sort((a, b) => String(a.client).localeCompare(String(b.client)));
    const rows = items.map((entry) => {
      const row = el("li");
      row.dataset.testid = "present";
      row.dataset.client = String(entry.client);
      if (entry.client === me) row.classList.add("me");
      let text = String(entry.client);
      if (entry.user != null) text += ` · ${String(entry.user)}`;
      if (entry.info != null) text += ` · ${JSON.stringify(entry.info)}`;
      row.textContent = text;
      return row;
    });
    this.presenceNode.replaceChildren(...rows);
    this.presenceCount.textContent = String(rows.length);
  }

  close() {
    if (this.sub) {
      try {
        this.sub.unsubscribe();
      } catch {
        // the connection is gone already
      }
    }
    this.sub = null;
    this.subscribed = false;
    this.node.remove();
    ui.followedEmpty.hidden = follows.size > 0;
  }
}

function followChannel(channel, from) {
  if (follows.has(channel)) {
    showError(ui.followError, `already following ${channel}`);
    return null;
  }
  const follow = new Follow(channel, from);
  follows.set(channel, follow);
  follow.subscribe();
  saveFollows();
  return follow;
}

function unfollowChannel(channel) {
  const follow = follows.get(channel);
  if (!follow) return;
  follows.delete(channel);
  follow.close();
  saveFollows();
}

// -- the channel list -----------------------------------------------------------------------------

function headers() {
  const value = token();
  return value ? { Authorization: `Bearer ${value}` } : {};
}

async function refreshChannels() {
  ui.channelsStatus.textContent = "loading…";
  ui.channelsRefresh.disabled = true;
  try {
    const response = await fetch(`${BASE}/channels`, { headers: headers(), cache: "no-store" });
    let body = null;
    try {
      body = await response.json();
    } catch {
      body = null;
    }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.statusText;
      const code = body && body.code ? ` ${body.code}` : "";
      showError(ui.channelsError, `${response.status}${code}: ${detail}`);
      ui.channelsError.dataset.status = String(response.status);
      ui.channelsBody.replaceChildren();
      ui.channelsStatus.textContent = "";
      return;
    }
    showError(ui.channelsError, "");
    delete ui.channelsError.dataset.status;
    renderChannels((body && body.channels) || []);
    ui.channelsStatus.textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    showError(ui.channelsError, `could not reach the relay: ${describe(error)}`);
    ui.channelsStatus.textContent = "";
  } finally {
    ui.channelsRefresh.disabled = false;
  }
}

function renderChannels(channels) {
  const rows = channels.map((c) => {
    const row = document.createElement("tr");
    row.dataset.testid = "channel-row";
    row.dataset.channel = String(c.name);
    const name = document.createElement("td");
    const pick = el("button", "link", String(c.name));
    pick.type = "button";
    pick.title = "follow or publish to this channel";
    pick.setAttribute("aria-label", `pick channel ${c.name}`);
    pick.addEventListener("click", () => {
      ui.followChannel.value = String(c.name);
      ui.publishChannel.value = String(c.name);
      $("follow-submit").focus();
    });
    name.append(pick);
    const length = el("td", "length", String(c.length));
    const last = el("td", "last-id", c.last_id == null ? "–" : String(c.last_id));
    row.append(name, length, last);
    return row;
  });
  ui.channelsBody.replaceChildren(...rows);
}

// -- forms ----------------------------------------------------------------------------------------

ui.tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  store(TOKEN_KEY, token());
  if (client) connect();
  refreshChannels();
});

ui.followFrom.addEventListener("change", () => {
  ui.followFromId.disabled = ui.followFrom.value !== "id";
  if (!ui.followFromId.disabled) ui.followFromId.focus();
});

ui.followForm.addEventListener("submit", (event) => {
  event.preventDefault();
  const channel = ui.followChannel.value.trim();
  if (!CHANNEL_RULE.test(channel)) {
    showError(ui.followError, `not a channel name: letters, digits and _.:- (up to 128), got ${JSON.stringify(channel)}`);
    return;
  }
  let from = ui.followFrom.value;
  if (from === "id") {
    from = ui.followFromId.value.trim();
    if (!POSITION_RULE.test(from)) {
      showError(ui.followError, `not an entry id: expected like 1732540000000-0, got ${JSON.stringify(from)}`);
      return;
    }
  }
  if (!client) {
    showError(ui.followError, "the browser client (/client/relay.js) did not load");
    return;
  }
  showError(ui.followError, "");
  if (followChannel(channel, from)) {
    if (!ui.publishChannel.value) ui.publishChannel.value = channel;
  }
});

let publishSeq = 0;
ui.publishForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const out = ui.publishResult;
  const seq = ++publishSeq;
  const result = (text, kind, extra = {}) => {
    if (seq !== publishSeq) return;
    out.textContent = text;
    out.className = kind;
    out.dataset.status = kind;
    delete out.dataset.id;
    delete out.dataset.code;
    Object.assign(out.dataset, extra);
  };
  const channel = ui.publishChannel.value.trim();
  if (!CHANNEL_RULE.test(channel)) {
    result(`not a channel name: ${JSON.stringify(channel)}`, "bad", { code: "invalid_channel" });
    return;
  }
  let data;
  try {
    data = JSON.parse(ui.publishData.value);
  } catch (error) {
    result(`invalid JSON, not sent: ${error.message}`, "bad", { code: "invalid_json" });
    return;
  }
  if (!client) {
    result("the browser client (/client/relay.js) did not load", "bad");
    return;
  }
  result("sending…", "pending");
  const sentWith = relay;
  try {
    const id = await relay.publish(channel, data);
    if (sentWith === relay) result(`stored on ${channel} as ${id}`, "ok", { id: String(id) });
  } catch (error) {
    const code = error && error.code ? String(error.code) : "error";
    result(`refused: ${describe(error)}`, "bad", { code });
  }
});

ui.channelsRefresh.addEventListener("click", refreshChannels);

// -- start ----------------------------------------------------------------------------------------

ui.token.value = load(TOKEN_KEY, "");
refreshChannels();
try {
  client = await import(`${BASE}/client/relay.js`);
} catch (error) {
  setState("closed");
  ui.state.textContent = "client failed to load";
  showError(ui.followError, `could not load /client/relay.js: ${describe(error)}`);
}
if (client) {
  connect();
  for (const saved of load(FOLLOWS_KEY, [])) {
    if (saved && CHANNEL_RULE.test(saved.channel) && POSITION_RULE.test(String(saved.from))) {
      followChannel(saved.channel, String(saved.from));
    }
  }
}
