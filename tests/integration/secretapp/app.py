"""A service that uses secrets the way a careless app would: it prints them (stdout and
stderr) and answers, over HTTP, the SHA-256 of each one it was given (never the value), from
its environment or, with as_file, from the file NAME_FILE names.

    python app.py PORT NAME [NAME...]
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def value(name: str) -> tuple[str | None, str | None]:
    """(the value, the file it came from)."""
    if name in os.environ:
        return os.environ[name], None
    path = os.environ.get(f"{name}_FILE")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read(), path
    return None, None


def report(names: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name in names:
        found, path = value(name)
        entry: dict[str, object] = {
            "sha256": hashlib.sha256(found.encode()).hexdigest() if found is not None else None
        }
        if path is not None:
            entry["file"] = path
            entry["mode"] = oct(stat.S_IMODE(os.stat(path).st_mode))
            entry["dir_mode"] = oct(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode))
        out[name] = entry
    return out


def main() -> None:
    port, names = int(sys.argv[1]), sys.argv[2:]
    for name in names:  # the careless part: its log must show [secret:NAME]
        found, _ = value(name)
        print(f"starting with {name}={found}", flush=True)
        print(f"warning: {name} is {found}", file=sys.stderr, flush=True)
    body = json.dumps(report(names)).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("X-Demo-Version", os.environ.get("CONVEYOR_VERSION", ""))
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
