"""Test component in Python, the same probe as probe.js, driven by its config.

Stamps its `name` as the Rust `stamp` test component does: request headers get
`x-stamp-request: NAME` appended and `x-stamp-saw-NAME` set to the context's `stamp.path`
extended with NAME (`a>b>NAME`), response headers get `x-stamp-response: NAME`, bodies get
`+NAME` appended. A request carrying the header named by `block-header` is answered
`block-status` (problem+json); `trap-header` raises, `loop-header` spins forever; `count-header` counts
requests in the shared `state` (`x-probe-count`); `inspect-header` reports what the host
granted the interpreter (`x-probe-env`: how many environment variables it sees, `x-probe-fs`:
what listing `/` and reading `/etc/passwd` did), after printing to stdout and stderr.
Config: `{ "name": "py", "phases": [...], "block-header": "x-block", "block-status": 403,
"trap-header": "x-trap", "loop-header": "x-loop", "inspect-header": "x-inspect",
"count-header": "x-count" }`, everything
but `name` optional.
"""

import os
import sys

import sluice


class Probe(sluice.Middleware):
    def init(self, config):
        if not isinstance(config.get("name"), str):
            raise sluice.ConfigError("`name` is required: a string to stamp")
        self.name = config["name"]
        self.phases = config.get("phases", ["request-headers", "response-headers"])
        self.block = config.get("block-header")
        self.status = int(config.get("block-status", 403))
        self.trap = config.get("trap-header")
        self.spin = config.get("loop-header")
        self.inspect = config.get("inspect-header")
        self.count = config.get("count-header")
        watched = (self.block, self.trap, self.spin, self.inspect, self.count)
        self.request_headers = [h for h in watched if h]
        self.response_headers = []

    def on_request_headers(self, req):
        if self.block and req.header(self.block) is not None:
            return sluice.problem(self.status, "Blocked", f"{self.name} blocks requests with {self.block}")
        if self.trap and req.header(self.trap) is not None:
            raise RuntimeError(f"{self.name} was asked to fail")
        if self.spin and req.header(self.spin) is not None:
            while True:
                pass
        if self.inspect and req.header(self.inspect) is not None:
            print("to stdout")
            print("to stderr", file=sys.stderr)
            return sluice.Next(set={"x-probe-env": str(len(os.environ)), "x-probe-fs": _filesystem()})
        if self.count and req.header(self.count) is not None:
            hits = sluice.state.incr("hits", 1, 0)
            sluice.log.info(f"hit {hits}")
            return sluice.Next(set={"x-probe-count": str(hits)})
        before = req.context("stamp.path")
        path = f"{before}>{self.name}" if before else self.name
        return sluice.Next(
            set={f"x-stamp-saw-{self.name}": path},
            append={"x-stamp-request": self.name},
            context={"stamp.path": path},
        )

    def on_request_body(self, req, body):
        return sluice.Replace(body + f"+{self.name}".encode())

    def on_response_headers(self, req, status, headers):
        return sluice.Next(append={"x-stamp-response": self.name})

    def on_response_body(self, req, status, headers, body):
        return sluice.Replace(body + f"+{self.name}".encode())


def _filesystem():
    seen = []
    for attempt in (lambda: os.listdir("/"), lambda: open("/etc/passwd").read()):
        try:
            seen.append(f"read {len(attempt())}")
        except OSError as e:
            seen.append(f"denied ({type(e).__name__})")
    return ", ".join(seen)


WitWorld = sluice.export(Probe)
