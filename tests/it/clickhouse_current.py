"""A current ClickHouse engine for tests/it/clickhouse_current.rs: chdb (ClickHouse in-process,
from PyPI; deploy/run-tests.sh installs it) in a session kept in the folder argv[1], driven
over stdin and stdout, one JSON line each way:

    in:  {"sql": "...", "format": "TabSeparatedWithNames"}
    out: {"ok": true, "out": "<the answer, base64>"} or {"ok": false, "error": "..."}

The first line out names the versions: {"ok": true, "chdb": "4.4.0", "version": "26.9.2.1"}.
"""

import base64
import json
import sys

try:
    import chdb
    from chdb import session
except ImportError as e:  # say so on the protocol, not as a traceback
    print(json.dumps({"ok": False, "error": f"chdb is not installed ({e}): deploy/run-tests.sh installs it"}), flush=True)
    sys.exit(1)


def main():
    s = session.Session(sys.argv[1])
    version = s.query("SELECT version()", "TSVRaw").bytes().decode().strip()
    print(json.dumps({"ok": True, "chdb": chdb.__version__, "version": version}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            result = s.query(request["sql"], request.get("format", "TabSeparatedWithNames"))
            answer = {"ok": True, "out": base64.b64encode(result.bytes()).decode()}
        except Exception as e:  # the engine's error text is the answer
            answer = {"ok": False, "error": str(e)}
        print(json.dumps(answer), flush=True)
    s.close()


main()
