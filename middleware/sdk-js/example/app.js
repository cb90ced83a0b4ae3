// A sluice middleware in JavaScript: greets the client by the name in `x-name`.
//
// Request: sets `x-hello: GREETING, NAME` for the upstream and attaches `hello.name` for later
// middleware; a name over 64 characters is answered 400 (problem+json). Response: appends
// `x-hello-lang: javascript`. Config: `{ "greeting": "hello" }` (optional).
//
// Build: npx componentize-js app.js --wit wit --world-name middleware -o app.wasm
import { middleware, next, problem } from "./sluice.js";

export const { init, onRequestHeaders, onRequestBody, onResponseHeaders, onResponseBody } = middleware({
  init(config) {
    const greeting = config.greeting ?? "hello";
    if (typeof greeting !== "string") throw new Error("`greeting` must be a string");
    // The one request header this middleware reads; none of the response's.
    return { greeting, requestHeaders: ["x-name"], responseHeaders: [] };
  },
  onRequestHeaders(req, self) {
    const name = req.header("x-name") ?? "world";
    if (name.length > 64) return problem(400, "Name too long", "x-name is limited to 64 characters");
    return next({ set: { "x-hello": `${self.greeting}, ${name}` }, context: { "hello.name": name } });
  },
  onResponseHeaders(req, status, headers, self) {
    return next({ append: { "x-hello-lang": "javascript" } });
  },
});
