// Type declarations for relay.js, the relay's browser client (served at /client/relay.d.ts).

/** This client's version (the relay's version it was served with). */
export const VERSION: string;

/** A token, or where to get a fresh one: called again before every connection. */
export type TokenSource = string | (() => string | Promise<string>);

export type State = "connecting" | "connected" | "closed";

export interface RelayOptions {
  /** A JWT (sent as `?token=`), or a function (sync or async) called before every connection. */
  token?: TokenSource | null;
  /** The WebSocket constructor to use (tests); default `globalThis.WebSocket`. */
  WebSocket?: new (url: string) => WebSocket;
  /** Base of the reconnect backoff, in ms (full jitter: random in [0, min(max, base * 2^attempt)]). Default 250. */
  reconnectDelay?: number;
  /** Cap of the reconnect backoff, in ms. Default 10000. */
  maxReconnectDelay?: number;
  /** Ms a connection stays up (after `connected`) before the backoff starts over. Default 5000. */
  stableAfter?: number;
  /** First delay before a call refused with `unavailable` or `rate_limited` is sent again, in ms (doubling). Default 250. */
  retryDelay?: number;
  /** Cap of that delay, in ms. Default 5000. */
  maxRetryDelay?: number;
  /** Ms with nothing received after which a `ping` frame is sent; 0: never. Default 15000. */
  keepalive?: number;
  /** Ms after that ping with still nothing received before the socket is closed (4000) and replaced. Default 10000. */
  keepaliveTimeout?: number;
  /** The relay's RELAY_MAX_MESSAGE_BYTES (default 65536): a publish whose frame is over it + 4096 bytes rejects with too_large, unsent. A 1009 close rejects the largest publish in flight. */
  maxMessageBytes?: number;
}

export interface SubscribeOptions {
  /** "$" (only new messages, the default), "0" (everything retained) or an entry id (resume after it). */
  from?: string;
  /** Also deliver onJoin and onLeave for the channel's other connections. Default false. */
  presence?: boolean;
}

export interface Message<T = unknown> {
  id: string;
  channel: string;
  data: T;
}

export interface Gap {
  channel: string;
  /** Messages after this id ... */
  from: string;
  /** ... and before this one are gone (retention). */
  next: string;
}

/** A connection present on a channel. */
export interface Client {
  client: string;
  user: string | null;
  info: unknown;
}

export interface Handlers<T = unknown> {
  onMessage?(message: Message<T>): void;
  onGap?(gap: Gap): void;
  onJoin?(client: Client): void;
  onLeave?(client: Client): void;
  /** The relay follows the channel for this connection from `id` on (after every (re)connect). */
  onSubscribed?(position: { channel: string; id: string }): void;
  /** The relay refused the subscription (forbidden, invalid_channel, ...): it has ended. */
  onError?(error: RelayError): void;
}

export class RelayError extends Error {
  constructor(code: string, detail?: string, channel?: string | null);
  /** The relay's error code (forbidden, too_large, ...), or the client's own: closed, unsubscribed,
   * already_subscribed, token (the token function failed), connect (no WebSocket could be made),
   * policy (a 1008 close), invalid_frame. */
  readonly code: string;
  readonly detail: string;
  readonly channel: string | null;
}

/** One channel followed over a Relay (made by `Relay.subscribe`, never with `new`). */
export class Subscription {
  private constructor();
  readonly channel: string;
  readonly presence: boolean;
  /** Id of the last message delivered, else the subscribed position ("$" until the relay gave one). */
  readonly position: string;
  /** False once unsubscribed, refused, or the Relay closed. */
  readonly active: boolean;
  /** Whether the relay said `subscribed` on the current connection (its messages flow). */
  readonly subscribed: boolean;
  /** Resolves with the position when the relay first says `subscribed`; rejects (RelayError) when
   * the subscription ends before that. */
  readonly ready: Promise<string>;
  /** Stop following the channel: nothing more of it is delivered. */
  unsubscribe(): void;
}

export class Relay {
  /** @param url the relay's base URL: http(s)://host[:port][/prefix], or ws(s):// */
  constructor(url: string, options?: RelayOptions);
  /** The `/ws` URL connected to (without the token). */
  readonly url: string;
  readonly state: State;
  /** This connection's id in presence, once connected; null before. */
  readonly client: string | null;
  /** Connections that said `connected` so far. */
  readonly connects: number;
  /** Called on each state change (a handler set right after `new` sees the first "connecting"). */
  onstate: ((state: State) => void) | null;
  /** Errors that belong to no call: an error frame with no known ref, a 1008 close, a failing
   * token function (console.warn when unset). */
  onerror: ((error: RelayError) => void) | null;
  /** Throws a RelayError (already_subscribed) when this Relay follows the channel already. */
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions, handlers?: Handlers<T>): Subscription;
  /** Resolves with the entry id once Redis has it; stored exactly once, across reconnects too. */
  publish(channel: string, data: unknown): Promise<string>;
  /** The clients present on the channel, on every instance. */
  presence(channel: string): Promise<Client[]>;
  /** Close for good: pending calls reject with RelayError `closed`. */
  close(): void;
}

/** Compare two stream ids by time, then sequence: negative, zero or positive (TypeError for no id). */
export function compareIds(a: string, b: string): number;
