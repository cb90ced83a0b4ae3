"""A sluice middleware in Python: greets the client by the name in `x-name`.

Request: sets `x-hello: GREETING, NAME` for the upstream and attaches `hello.name` for later
middleware; a name over 64 characters is answered 400 (problem+json). Response: appends
`x-hello-lang: python`. Config: `{ "greeting": "hello" }` (optional).

Build: componentize-py -d wit -w middleware componentize app -o app.wasm
"""

import sluice


class Hello(sluice.Middleware):
    # The one request header this middleware reads; none of the response's.
    request_headers = ["x-name"]
    response_headers = []

    def init(self, config):
        self.greeting = config.get("greeting", "hello")
        if not isinstance(self.greeting, str):
            raise sluice.ConfigError("`greeting` must be a string")

    def on_request_headers(self, req):
        name = req.header("x-name") or "world"
        if len(name) > 64:
            return sluice.problem(400, "Name too long", "x-name is limited to 64 characters")
        return sluice.Next(set={"x-hello": f"{self.greeting}, {name}"}, context={"hello.name": name})

    def on_response_headers(self, req, status, headers):
        return sluice.Next(append={"x-hello-lang": "python"})


WitWorld = sluice.export(Hello)
