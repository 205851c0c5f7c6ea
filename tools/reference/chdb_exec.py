"""Runs SQL statements on a current ClickHouse engine, in-process (chDB).

The current-engine tests (internal/testenv/chdb.go) send what the product
sends to ClickHouse here, to check it on a current release as well as on the
18.16 server the other integration tests use.

Input (stdin): a JSON list of statements, {"sql": "...", "rows": bool}. Any
parameter values are already inlined as SQL literals; a statement with
"rows" true returns rows. All statements run in order in one chDB session
over a temporary folder, removed at the end. A statement that fails does not
stop the others (its error is reported; later statements may fail for the
same reason).

The input may also be an object, {"config": "<clickhouse>...</clickhouse>",
"statements": [...]}: the session then starts with that server
configuration (macros, clusters, an in-memory Keeper), for the test of the
clustered schema.

Output (stdout): one JSON object, {"version": "26.9.2.1", "seconds": 0.7,
"results": [...]}, one result per statement: {"error": "..."} when it
failed; else, for "rows" statements, {"columns": [names], "types": [types],
"data": [[cell, ...], ...]} with every cell in ClickHouse's text form
(JSONCompactStrings), and {} for the others.
"""

import json
import sys
import tempfile
import time

from chdb import session


def run(statements, config=None):
    started = time.monotonic()
    results = []
    with tempfile.TemporaryDirectory(prefix="emoflow-chdb-") as path:
        if config is None:
            s = session.Session(path)
        else:
            config_file = path + "/config.xml"
            with open(config_file, "w") as f:
                f.write(config)
            s = session.Session(path + "/data?config-file=" + config_file)
        try:
            version = s.query("SELECT version()", "JSONCompactStrings")
            version = json.loads(version.bytes())["data"][0][0]
            for st in statements:
                try:
                    if st.get("rows"):
                        out = json.loads(s.query(st["sql"], "JSONCompactStrings").bytes())
                        results.append({
                            "columns": [c["name"] for c in out["meta"]],
                            "types": [c["type"] for c in out["meta"]],
                            "data": out["data"],
                        })
                    else:
                        s.query(st["sql"])
                        results.append({})
                except Exception as e:  # the engine's error, reported per statement
                    results.append({"error": str(e)})
        finally:
            s.close()
    return {"version": version, "seconds": round(time.monotonic() - started, 3), "results": results}


def main():
    statements = json.load(sys.stdin)
    config = None
    if isinstance(statements, dict):
        config, statements = statements.get("config"), statements.get("statements")
    if not isinstance(statements, list):
        sys.exit("chdb_exec.py: stdin must be a JSON list of statements, or an object with config and statements")
    json.dump(run(statements, config), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
