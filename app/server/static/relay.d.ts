// Type declarations for relay.js, the relay's browser client (served at /client/relay.d.ts).

/** The relay's version this client was shipped with (GET /healthz names the relay's). */
export const VERSION: string;

/** A token, or where to get a fresh one before every connection. */
export type TokenSource = string | (() => string | Promise<string>);

export type State = "connecting" | "connected" | "closed";

export interface RelayOptions {
  /** A JWT, or a function (sync or async) called before every connection. */
  token?: TokenSource;
  /** Base of the reconnect backoff, in ms (full jitter: random in [0, min(max, base * 2^attempt)]). Default 250. */
  reconnectDelay?: number;
  /** Cap of the reconnect backoff, in ms. Default 10000. */
  maxReconnectDelay?: number;
  /** First delay before a publish, presence or subscribe refused as `unavailable` or `rate_limited` is sent again, in ms. Default 250. */
  retryDelay?: number;
  /** Cap of that delay, in ms. Default 5000. */
  maxRetryDelay?: number;
  /** Ms with nothing received after which the client sends a `ping` frame; 0: never. Default 15000. */
  keepalive?: number;
  /** Ms after that ping with still nothing received before the connection counts as dead. Default 10000. */
  keepaliveTimeout?: number;
  /** The WebSocket constructor to use (tests); default globalThis.WebSocket. */
  WebSocket?: new (url: string) => WebSocket;
}

export interface SubscribeOptions {
  /** "$" (only new messages, the default), "0" (everything retained) or an entry id (resume after it). */
  from?: string;
  /** Receive onJoin and onLeave for the channel's other connections. */
  presence?: boolean;
}

export interface Message<T = unknown> {
  id: string;
  channel: string;
  data: T;
}

export interface Gap {
  channel: string;
  /** The position the subscription resumed from. */
  from: string;
  /** The first id delivered after what retention removed. */
  next: string;
}

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
  constructor(code: string, detail: string, channel?: string);
  /** An error code of docs/protocol.md, or the client's own: closed, already_subscribed, token, connect, policy. */
  readonly code: string;
  readonly detail: string;
  readonly channel: string | undefined;
}

export class Subscription<T = unknown> {
  readonly channel: string;
  /** Id of the last message delivered, or the subscribed position ("$" until the relay gave one). */
  readonly position: string;
  readonly presence: boolean;
  /** False once unsubscribed, refused, or the Relay closed. */
  readonly active: boolean;
  unsubscribe(): void;
}

export class Relay {
  /** @param url the relay's base URL: http(s)://host[:port][/prefix], or ws(s):// */
  constructor(url: string, options?: RelayOptions);
  readonly url: string;
  readonly state: State;
  /** This connection's id in presence, once connected. */
  readonly client: string | undefined;
  /** Connections made so far (1 + reconnects). */
  readonly connects: number;
  onstate: ((state: State) => void) | null;
  /** Errors that belong to no call (a refused connection's token function, a 1008 close, ...). */
  onerror: ((error: RelayError) => void) | null;
  /** Throws a RelayError (already_subscribed) when this Relay follows the channel already. */
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions, handlers?: Handlers<T>): Subscription<T>;
  /** Resolves with the entry id once Redis has it; stored exactly once, across reconnects too. */
  publish(channel: string, data: unknown): Promise<string>;
  presence(channel: string): Promise<Client[]>;
  close(): void;
}

/** Compare two stream ids: negative, zero or positive. */
export function compareIds(a: string, b: string): number;
