"""wasaga's Python SDK: a service's operations declared once, over the raw
`wasaga:plugin` world (the bindings componentize-py generates from `wit/`).

    from wasaga import Service, Rejected, records

    app = Service("greeter")

    @app.operation("greet", "Greets someone")
    def greet(input, call):
        return {"greeting": f"Hello, {input['name']}!"}

    Service = app.component()   # what componentize-py exports

Inputs, outputs, records and event payloads are JSON (the convention of the wasaga
API). A handler returns the output, or raises `Rejected` (a business refusal: final,
stored and replayed, compensated in a saga) or `Transient` (a temporary problem:
nothing kept, retried). Any other exception traps the call: the host reports it, with
the end of the traceback, and keeps nothing of it.
"""

import json
from dataclasses import dataclass
from typing import Any, Callable, Optional

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import service as wit
from wit_world.imports import events as wit_events
from wit_world.imports import log as wit_log
from wit_world.imports import store as wit_store
# Two interfaces are called `types` (wasaga:plugin and wasi:http): componentize-py
# names each after its package.
from wit_world.imports import wasaga_plugin_types as wit_types


class Rejected(Exception):
    """A business refusal (out of stock, card declined): final, and a saga compensates."""


class Transient(Exception):
    """A temporary problem (a dependency is down): nothing is kept, the host retries."""


class Conflict(Transient):
    """A compare-and-set (`records.put`, `records.delete` with `expected`) that did not
    hold. Uncaught, it is a transient failure: the caller (or the saga) tries again."""

    def __init__(self, key: str, expected: Optional[int], actual: Optional[int]):
        super().__init__(f"record `{key}` is at version {actual}, not {expected}")
        self.key, self.expected, self.actual = key, expected, actual


def _encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass
class Record:
    """A stored record: its JSON value and its version."""

    value: Any
    version: int


def _store_call(fn: Callable, *args):
    try:
        return fn(*args)
    except Err as err:
        error = err.value
        if isinstance(error, wit_store.StoreError_Conflict):
            c = error.value
            raise Conflict(c.key, c.expected, c.actual) from None
        raise Rejected(str(error.value)) from None


class records:
    """This service's versioned records (see `wit/store.wit`)."""

    @staticmethod
    def get(key: str) -> Optional[Record]:
        entry = wit_store.get(key)
        return None if entry is None else Record(json.loads(entry.value), entry.version)

    @staticmethod
    def set(key: str, value: Any) -> int:
        """Writes `value`, based on what this call read; returns the version it will have."""
        return _store_call(wit_store.set, key, _encode(value))

    @staticmethod
    def put(key: str, value: Any, expected: Optional[int]) -> int:
        """Compare-and-set: `expected=None` creates only if absent."""
        return _store_call(wit_store.put, key, _encode(value), expected)

    @staticmethod
    def delete(key: str, expected: Optional[int] = None) -> None:
        _store_call(wit_store.delete, key, expected)

    @staticmethod
    def scan(prefix: str, start_after: Optional[str] = None, limit: int = 100) -> list:
        """[(key, Record)] in key order; page on with `start_after`."""
        entries = wit_store.scan(prefix, start_after, limit)
        return [(key, Record(json.loads(e.value), e.version)) for key, e in entries]


def publish(topic: str, payload: Any, chain: Optional[str] = None) -> None:
    """Publishes an event, kept if and only if this call succeeds."""
    wit_events.publish(topic, _encode(payload), chain)


class log:
    """Messages into the host's log, tagged with the service and the call."""

    debug = staticmethod(lambda message: wit_log.log(wit_log.Level.DEBUG, message))
    info = staticmethod(lambda message: wit_log.log(wit_log.Level.INFO, message))
    warn = staticmethod(lambda message: wit_log.log(wit_log.Level.WARN, message))
    error = staticmethod(lambda message: wit_log.log(wit_log.Level.ERROR, message))


class Service:
    """A service's operations, subscriptions and HTTP destinations."""

    def __init__(self, name: str):
        self.name = name
        self._operations: dict = {}
        self._infos: list = []
        self._subscriptions: list = []
        self._destinations: list = []

    def operation(self, name: str, description: str = "", compensated_by: Optional[str] = None,
                  internal: Optional[bool] = None):
        """Declares `handler(input, call)` as operation `name`. `internal=True`: only
        sagas, deliveries and operators may call it; `None` leaves it to the host."""
        visibility = None if internal is None else (wit.Visibility.INTERNAL if internal else wit.Visibility.PUBLIC)

        def register(handler):
            self._operations[name] = handler
            self._infos.append(wit.OperationInfo(name, compensated_by, description, visibility))
            return handler

        return register

    def subscribe(self, topic: str, operation: str) -> None:
        """Delivers each event published on `topic` to `operation`."""
        self._subscriptions.append((topic, operation))

    def destination(self, url: str, methods: Optional[list] = None) -> None:
        """Declares an HTTP destination the service calls (through wasi:http):
        `scheme://host[:port]/prefix` (`:*` for a port the operator chooses) and its
        methods (none: all). The operator grants it too."""
        self._destinations.append(wit.Destination(url, list(methods or [])))

    def component(self):
        """The class componentize-py exports (name it `Service` in the app module)."""
        declared = self

        class Component(exports.Service):
            def describe(self) -> wit.Manifest:
                return wit.Manifest(declared.name, declared._infos, declared._subscriptions, declared._destinations)

            def handle(self, call: wit.Invocation) -> bytes:
                handler = declared._operations.get(call.operation)
                if handler is None:
                    raise Err(wit_types.Failure_Rejected(f"no operation `{call.operation}`"))
                try:
                    input = json.loads(call.input) if call.input else None
                except ValueError as e:
                    raise Err(wit_types.Failure_Rejected(f"invalid input: {e}"))
                try:
                    return _encode(handler(input, call))
                except Transient as e:
                    raise Err(wit_types.Failure_Transient(str(e)))
                except Rejected as e:
                    raise Err(wit_types.Failure_Rejected(str(e)))

        return Component
