"""The `{{name}}` service. Build it with `componentize-py -d wit -w plugin
componentize app -o {{name}}.wasm`; see README.md."""

from wasaga import Rejected, Service, records

app = Service("{{name}}")


@app.operation("greet", "Greets someone, and counts how often")
def greet(input, call):
    name = (input or {}).get("name")
    if not name:
        raise Rejected("say who to greet: {\"name\": ...}")
    greeted = records.get(f"greeted/{name}")
    count = (greeted.value if greeted else 0) + 1
    records.set(f"greeted/{name}", count)
    return {"greeting": f"Hello, {name}!", "count": count}


# What componentize-py exports.
Service = app.component()
