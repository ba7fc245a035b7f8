"""Every part of wasaga's Python SDK in one operation, for tests/e2e/polyglot.rs:
versioned writes, a delete, a compare-and-set that fails, a scan, an event, a log."""

from wasaga import Conflict, Service, log, publish, records

app = Service("sdk-check")


@app.operation("all", "exercises the SDK")
def all_(input, call):
    v1 = records.put("a", {"n": 1}, None)
    v2 = records.set("b", 2)
    records.delete("c")
    try:
        records.put("a", {"n": 9}, 7)
        conflict = None
    except Conflict as e:
        conflict = str(e)
    listed = [f"{k}@{r.version}" for k, r in records.scan("", None, 10)]
    publish("t", {"x": 1}, "chain-1")
    log.info("hello")
    got = records.get("x")
    return {"v1": v1, "v2": v2, "conflict": conflict, "listed": listed, "got": got.value if got else None}


Service = app.component()
