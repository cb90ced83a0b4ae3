// Test component in JavaScript, the same probe as probe.py, driven by its config.
//
// Stamps its `name` as the Rust `stamp` test component does: request headers get
// `x-stamp-request: NAME` appended and `x-stamp-saw-NAME` set to the context's `stamp.path`
// extended with NAME (`a>b>NAME`), response headers get `x-stamp-response: NAME`, bodies get
// `+NAME` appended. A request carrying the header named by `block-header` is answered
// `block-status` (problem+json); `trap-header` throws, `loop-header` spins forever;
// `count-header` counts requests in the shared `state` (`x-probe-count`).
// Config: `{ "name": "js", "phases": [...], "block-header": "x-block", "block-status": 403,
// "trap-header": "x-trap", "loop-header": "x-loop" }`, everything but `name` optional.
import { log, middleware, next, problem, replace, state } from "./sluice.js";

const encoder = new TextEncoder();

function appended(body, name) {
  const tail = encoder.encode(`+${name}`);
  const out = new Uint8Array(body.length + tail.length);
  out.set(body);
  out.set(tail, body.length);
  return out;
}

export const { init, onRequestHeaders, onRequestBody, onResponseHeaders, onResponseBody } = middleware({
  init(config) {
    if (typeof config.name !== "string") throw new Error("`name` is required: a string to stamp");
    const watched = [config["block-header"], config["trap-header"], config["loop-header"], config["count-header"]];
    return {
      name: config.name,
      phases: config.phases ?? ["request-headers", "response-headers"],
      block: config["block-header"],
      status: config["block-status"] ?? 403,
      trap: config["trap-header"],
      spin: config["loop-header"],
      count: config["count-header"],
      requestHeaders: watched.filter((h) => h),
      responseHeaders: [],
    };
  },
  onRequestHeaders(req, self) {
    if (self.block && req.header(self.block) !== undefined) {
      return problem(self.status, "Blocked", `${self.name} blocks requests with ${self.block}`);
    }
    if (self.trap && req.header(self.trap) !== undefined) {
      throw new Error(`${self.name} was asked to fail`);
    }
    if (self.spin && req.header(self.spin) !== undefined) {
      for (;;) {}
    }
    if (self.count && req.header(self.count) !== undefined) {
      const hits = state.incr("hits", 1);
      log.info(`hit ${hits}`);
      return next({ set: { "x-probe-count": String(hits) } });
    }
    const before = req.context("stamp.path");
    const path = before ? `${before}>${self.name}` : self.name;
    return next({
      set: { [`x-stamp-saw-${self.name}`]: path },
      append: { "x-stamp-request": self.name },
      context: { "stamp.path": path },
    });
  },
  onRequestBody(req, body, self) {
    return replace(appended(body, self.name));
  },
  onResponseHeaders(req, status, headers, self) {
    return next({ append: { "x-stamp-response": self.name } });
  },
  onResponseBody(req, status, headers, body, self) {
    return replace(appended(body, self.name));
  },
});
