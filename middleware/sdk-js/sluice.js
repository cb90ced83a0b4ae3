// Write sluice middleware in JavaScript.
//
// `middleware({...})` takes the phases this middleware handles and returns the exports of the
// `middleware` world; a phase it is not given is never called (sluice is told so at `init`).
// Each phase returns nothing to let the request go on unchanged, or `next(...)`,
// `respond(...)`/`problem(...)` or `replace(...)`:
//
//   import { middleware, next } from "./sluice.js";
//
//   export const { init, onRequestHeaders, onRequestBody, onResponseHeaders, onResponseBody } =
//     middleware({
//       init(config) { return { value: config.value ?? "hello" }; },
//       onRequestHeaders(req, self) { return next({ set: { "x-hello": self.value } }); },
//     });
//
// Build it into a component with componentize-js (the version `package.json` pins):
//
//   npx componentize-js app.js --wit wit --world-name middleware -o app.wasm
//
// `wit/` is sluice's `wit/middleware.wit`. `state` and `log` are sluice's host interfaces.

import * as hostState from "sluice:middleware/state@0.1.0";
import * as hostLog from "sluice:middleware/log@0.1.0";

const encoder = new TextEncoder();
const decoder = new TextDecoder("latin1");

/** The request as a phase sees it: the client's, with earlier middleware's edits applied. */
export class Request {
  constructor(raw) {
    this.raw = raw;
  }
  get method() { return this.raw.method; }
  get scheme() { return this.raw.scheme; }
  get authority() { return this.raw.authority; }
  /** The path and query, as received. */
  get path() { return this.raw.pathWithQuery; }
  get clientAddr() { return this.raw.clientAddr; }
  get route() { return this.raw.route; }
  /** Every header passed (see `requestHeaders`), as `[name, Uint8Array]` pairs. */
  get headers() { return this.raw.headers; }
  /** The first value of header `name` (lowercase) as a string, or `undefined`. */
  header(name) {
    for (const [key, value] of this.raw.headers) {
      if (key === name) return decoder.decode(value);
    }
    return undefined;
  }
  /** What an earlier middleware attached under `key`, or `undefined`. */
  context(key) {
    for (const [k, v] of this.raw.context) {
      if (k === key) return v;
    }
    return undefined;
  }
}

function bytes(value) {
  if (value instanceof Uint8Array) return value;
  return encoder.encode(String(value));
}

/** Header fields from an object or a list of pairs; string values are encoded. */
function pairs(headers) {
  if (!headers) return [];
  const items = Array.isArray(headers) ? headers : Object.entries(headers);
  return items.map(([name, value]) => [name.toLowerCase(), bytes(value)]);
}

const NEXT = Symbol("next");
const RESPOND = Symbol("respond");
const REPLACE = Symbol("replace");

/** Go on: header edits (`remove`, then `set`, then `append`) and, from `onRequestHeaders`,
 * context for later middleware (`{ key: "value" }`). */
export function next({ set, append, remove, context } = {}) {
  return { [NEXT]: true, set, append, remove, context };
}

/** Answer the client with this response: later middleware and the upstream never see the request. */
export function respond(status, body = "", headers = {}) {
  return { [RESPOND]: true, status, body, headers };
}

/** An RFC 9457 `application/problem+json` answer, as sluice's own errors are. */
export function problem(status, title, detail) {
  const body = JSON.stringify({ type: "about:blank", title, status, detail });
  return respond(status, body, { "content-type": "application/problem+json", "cache-control": "no-store" });
}

/** From a body phase: forward this body instead (sluice fixes `Content-Length`). */
export function replace(body) {
  return { [REPLACE]: true, body: bytes(body) };
}

const EMPTY_EDITS = { set: [], append: [], remove: [] };

function edits(result) {
  return {
    set: pairs(result.set),
    append: pairs(result.append),
    remove: (result.remove ?? []).map((n) => n.toLowerCase()),
  };
}

function response(result) {
  return { status: result.status, headers: pairs(result.headers), body: bytes(result.body) };
}

function context(result) {
  if (!result.context) return [];
  const items = Array.isArray(result.context) ? result.context : Object.entries(result.context);
  return items.map(([k, v]) => [String(k), String(v)]);
}

function requestDecision(result) {
  if (result == null) return { tag: "next", val: [EMPTY_EDITS, []] };
  if (result[NEXT]) return { tag: "next", val: [edits(result), context(result)] };
  if (result[RESPOND]) return { tag: "respond", val: response(result) };
  throw new TypeError("onRequestHeaders must return nothing, next(...) or respond(...)");
}

function responseDecision(result) {
  if (result == null) return { tag: "next", val: EMPTY_EDITS };
  if (result[NEXT]) return { tag: "next", val: edits(result) };
  if (result[RESPOND]) return { tag: "respond", val: response(result) };
  throw new TypeError("onResponseHeaders must return nothing, next(...) or respond(...)");
}

function bodyDecision(result, phase) {
  if (result == null || result[NEXT]) return { tag: "next" };
  if (result[REPLACE]) return { tag: "replace", val: result.body };
  if (result[RESPOND]) return { tag: "respond", val: response(result) };
  throw new TypeError(`${phase} must return nothing, replace(...) or respond(...)`);
}

const PHASES = {
  "request-headers": "onRequestHeaders",
  "request-body": "onRequestBody",
  "response-headers": "onResponseHeaders",
  "response-body": "onResponseBody",
};

/**
 * The world's exports for a middleware given as `{ init, onRequestHeaders, ... }`.
 *
 * `init(config)` gets the middleware's `config` table, parsed; what it returns is passed to
 * every phase as its last argument. It may return `requestHeaders` / `responseHeaders` (the
 * lowercase header names a phase is passed; absent passes all, `[]` none: each header passed
 * is copied per call) and `phases` (`["request-headers", ...]`; absent calls each phase given).
 * A thrown error refuses the config: sluice reports its message with the middleware's name.
 */
export function middleware(spec) {
  let self = {};
  const given = Object.keys(PHASES).filter((p) => typeof spec[PHASES[p]] === "function");
  return {
    init(config) {
      try {
        self = (spec.init ? spec.init(config ? JSON.parse(config) : {}) : {}) ?? {};
      } catch (e) {
        // componentize-js turns a thrown value into the result's error.
        throw String(e?.message ?? e);
      }
      const names = self.phases ?? given;
      const phases = {};
      for (const name of names) {
        if (!(name in PHASES)) throw `unknown phase "${name}": one of ${Object.keys(PHASES).join(", ")}`;
        phases[PHASES[name].slice(2, 3).toLowerCase() + PHASES[name].slice(3)] = true;
      }
      return {
        phases,
        requestHeaders: self.requestHeaders?.map((n) => n.toLowerCase()),
        responseHeaders: self.responseHeaders?.map((n) => n.toLowerCase()),
      };
    },
    onRequestHeaders(req) {
      return requestDecision(spec.onRequestHeaders?.(new Request(req), self));
    },
    onRequestBody(req, body) {
      return bodyDecision(spec.onRequestBody?.(new Request(req), body, self), "onRequestBody");
    },
    onResponseHeaders(req, status, headers) {
      return responseDecision(spec.onResponseHeaders?.(new Request(req), status, headers, self));
    },
    onResponseBody(req, status, headers, body) {
      return bodyDecision(
        spec.onResponseBody?.(new Request(req), status, headers, body, self),
        "onResponseBody",
      );
    },
  };
}

/** Key-value state shared by every instance of this middleware (memory, or Redis shared by every
 * sluice). A backend error is thrown with its message. */
export const state = {
  get: (key) => hostState.get(key),
  set: (key, value, ttlMs = 0) => hostState.set(key, bytes(value), BigInt(ttlMs)),
  incr: (key, delta = 1, ttlMs = 0) => hostState.incr(key, BigInt(delta), BigInt(ttlMs)),
  compareAndSwap: (key, old, value, ttlMs = 0) =>
    hostState.compareAndSwap(key, old == null ? undefined : bytes(old), bytes(value), BigInt(ttlMs)),
};

/** Log lines written through sluice's own logging, with the middleware's name. */
export const log = {
  debug: (message) => hostLog.log("debug", String(message)),
  info: (message) => hostLog.log("info", String(message)),
  warn: (message) => hostLog.log("warn", String(message)),
  error: (message) => hostLog.log("error", String(message)),
};
