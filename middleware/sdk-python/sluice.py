"""Write sluice middleware in Python.

A middleware is a subclass of `Middleware` that overrides the phases it handles; a phase it does
not override is not called (sluice is told so at `init`). Each phase returns `None` to let the
request go on unchanged, or one of `Next`, `Respond`/`problem` and `Replace`:

    import sluice

    class AddHeader(sluice.Middleware):
        def init(self, config):
            self.value = config.get("value", "hello")

        def on_request_headers(self, req):
            return sluice.Next(set={"x-hello": self.value})

    WitWorld = sluice.export(AddHeader)

Build it into a component with componentize-py (the version `requirements.txt` pins):

    componentize-py -d wit -w middleware componentize app -o app.wasm

`wit/` is sluice's `wit/middleware.wit`; componentize-py generates the bindings (`wit_world`)
from it at build time. `componentize-py -d wit -w middleware bindings .` writes them out for an
editor.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import log as _log
from wit_world.imports import state as _state
from wit_world.imports import types

__all__ = [
    "Middleware",
    "Request",
    "Next",
    "Respond",
    "Replace",
    "problem",
    "export",
    "state",
    "log",
    "ConfigError",
]

_ALL_HEADERS = object()


class ConfigError(Exception):
    """Raised by `init`: sluice refuses the config and reports the message with the middleware's name."""


class Request:
    """The request as a phase sees it: the client's, with earlier middleware's edits applied."""

    __slots__ = ("_raw",)

    def __init__(self, raw):
        self._raw = raw

    @property
    def method(self) -> str:
        return self._raw.method

    @property
    def scheme(self) -> str:
        return self._raw.scheme

    @property
    def authority(self) -> str:
        return self._raw.authority

    @property
    def path(self) -> str:
        """The path and query, as received."""
        return self._raw.path_with_query

    @property
    def client_addr(self) -> str:
        return self._raw.client_addr

    @property
    def route(self) -> str:
        return self._raw.route

    @property
    def headers(self):
        """Every header passed (see `Middleware.request_headers`), as `(name, bytes)` pairs."""
        return self._raw.headers

    def header(self, name: str):
        """The first value of header `name` (lowercase) as a `str`, or `None`."""
        for key, value in self._raw.headers:
            if key == name:
                return value.decode("latin-1")
        return None

    def context(self, key: str):
        """What an earlier middleware attached under `key`, or `None`."""
        for k, v in self._raw.context:
            if k == key:
                return v
        return None


def _pairs(headers):
    """Header fields from a dict or a list of pairs; `str` values are encoded as latin-1."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, dict) else headers
    return [
        (name.lower(), value.encode("latin-1") if isinstance(value, str) else bytes(value))
        for name, value in items
    ]


class Next:
    """Go on: header edits (`remove`, then `set`, then `append`) and, from `on_request_headers`,
    context for later middleware (`{"key": "value"}`)."""

    __slots__ = ("set", "append", "remove", "context")

    def __init__(self, set=None, append=None, remove=None, context=None):
        self.set = set
        self.append = append
        self.remove = remove
        self.context = context

    def _edits(self):
        return types.HeaderEdits(
            _pairs(self.set), _pairs(self.append), [n.lower() for n in (self.remove or [])]
        )

    def _context(self):
        if self.context is None:
            return []
        items = self.context.items() if isinstance(self.context, dict) else self.context
        return [(str(k), str(v)) for k, v in items]


class Respond:
    """Answer the client with this response: later middleware and the upstream never see the request."""

    __slots__ = ("status", "body", "headers")

    def __init__(self, status: int, body=b"", headers=None):
        self.status = status
        self.body = body
        self.headers = headers

    def _response(self):
        body = self.body.encode() if isinstance(self.body, str) else bytes(self.body)
        return types.Response(self.status, _pairs(self.headers), body)


class Replace:
    """From a body phase: forward this body instead (sluice fixes `Content-Length`)."""

    __slots__ = ("body",)

    def __init__(self, body):
        self.body = body.encode() if isinstance(body, str) else bytes(body)


def problem(status: int, title: str, detail: str) -> Respond:
    """An RFC 9457 `application/problem+json` answer, as sluice's own errors are."""
    body = json.dumps({"type": "about:blank", "title": title, "status": status, "detail": detail})
    return Respond(status, body, {"content-type": "application/problem+json", "cache-control": "no-store"})


_EMPTY_EDITS = types.HeaderEdits([], [], [])


def _request_decision(result):
    if result is None:
        return types.RequestDecision_Next((_EMPTY_EDITS, []))
    if isinstance(result, Next):
        return types.RequestDecision_Next((result._edits(), result._context()))
    if isinstance(result, Respond):
        return types.RequestDecision_Respond(result._response())
    raise TypeError(f"on_request_headers returned {result!r}: return None, Next or Respond")


def _response_decision(result):
    if result is None:
        return types.ResponseDecision_Next(_EMPTY_EDITS)
    if isinstance(result, Next):
        return types.ResponseDecision_Next(result._edits())
    if isinstance(result, Respond):
        return types.ResponseDecision_Respond(result._response())
    raise TypeError(f"on_response_headers returned {result!r}: return None, Next or Respond")


def _body_decision(result, phase):
    if result is None or isinstance(result, Next):
        return types.BodyDecision_Next()
    if isinstance(result, Replace):
        return types.BodyDecision_Replace(result.body)
    if isinstance(result, (bytes, bytearray, str)):
        return types.BodyDecision_Replace(Replace(result).body)
    if isinstance(result, Respond):
        return types.BodyDecision_Respond(result._response())
    raise TypeError(f"{phase} returned {result!r}: return None, Replace or Respond")


class Middleware:
    """Override `init` and the phases this middleware handles; every other phase is never called.

    `request_headers` and `response_headers` name the headers a phase is passed (lowercase);
    `None` passes all of them. Each header passed is copied into the component per call, so a
    middleware that reads one header should name one, and one that reads none `[]`.
    """

    request_headers = None
    response_headers = None
    #: The phases to call, as `["request-headers", "response-body", ...]`; `None` (the default)
    #: calls each phase this class overrides. `init` may set it from the config.
    phases = None

    def init(self, config: dict) -> None:
        """Called once per load with the middleware's `config` table. Raise `ConfigError` to refuse it."""

    def on_request_headers(self, req: Request):
        return None

    def on_request_body(self, req: Request, body: bytes):
        return None

    def on_response_headers(self, req: Request, status: int, headers):
        return None

    def on_response_body(self, req: Request, status: int, headers, body: bytes):
        return None


_PHASES = (
    ("on_request_headers", types.Phases.REQUEST_HEADERS),
    ("on_request_body", types.Phases.REQUEST_BODY),
    ("on_response_headers", types.Phases.RESPONSE_HEADERS),
    ("on_response_body", types.Phases.RESPONSE_BODY),
)


def export(cls):
    """The `WitWorld` class componentize-py exports, calling one instance of `cls`."""
    if not (isinstance(cls, type) and issubclass(cls, Middleware)):
        raise TypeError("export() takes a subclass of sluice.Middleware")
    overridden = types.Phases(0)
    for name, flag in _PHASES:
        if getattr(cls, name) is not getattr(Middleware, name):
            overridden |= flag
    holder = {}

    class World(wit_world.WitWorld):
        def init(self, config: str) -> types.Registration:
            try:
                parsed = json.loads(config) if config else {}
                mw = cls()
                mw.init(parsed)
            except ConfigError as e:
                raise Err(str(e))
            except (ValueError, KeyError, TypeError) as e:
                raise Err(f"{type(e).__name__}: {e}")
            phases = overridden if mw.phases is None else _phase_flags(mw.phases)
            holder["mw"] = mw
            return types.Registration(phases, _names(mw.request_headers), _names(mw.response_headers))

        def on_request_headers(self, req):
            return _request_decision(holder["mw"].on_request_headers(Request(req)))

        def on_request_body(self, req, body):
            return _body_decision(holder["mw"].on_request_body(Request(req), body), "on_request_body")

        def on_response_headers(self, req, status, headers):
            return _response_decision(holder["mw"].on_response_headers(Request(req), status, headers))

        def on_response_body(self, req, status, headers, body):
            return _body_decision(
                holder["mw"].on_response_body(Request(req), status, headers, body), "on_response_body"
            )

    return World


def _phase_flags(names):
    flags = types.Phases(0)
    by_name = {name[3:].replace("_", "-"): flag for name, flag in _PHASES}
    for name in names:
        if name not in by_name:
            raise Err(f"unknown phase {name!r}: one of {', '.join(by_name)}")
        flags |= by_name[name]
    return flags


def _names(names):
    return None if names is None else [n.lower() for n in names]


class state:
    """Key-value state shared by every instance of this middleware (memory, or Redis shared by
    every sluice). A backend error raises `componentize_py_types.Err` with its message."""

    get = staticmethod(_state.get)
    set = staticmethod(_state.set)
    incr = staticmethod(_state.incr)
    compare_and_swap = staticmethod(_state.compare_and_swap)


class log:
    """Log lines written through sluice's own logging, with the middleware's name."""

    @staticmethod
    def debug(message: str) -> None:
        _log.log(_log.Level.DEBUG, message)

    @staticmethod
    def info(message: str) -> None:
        _log.log(_log.Level.INFO, message)

    @staticmethod
    def warn(message: str) -> None:
        _log.log(_log.Level.WARN, message)

    @staticmethod
    def error(message: str) -> None:
        _log.log(_log.Level.ERROR, message)
