"""A model server in Python's standard library only, run by Meridian through docker_server.start_command.

It listens on $PORT (the runtime sets it; server_port in config.yaml otherwise), reads the replica's
identity from MERIDIAN_* variables, and becomes ready once its (simulated) load has finished.
"""

import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(os.environ.get("PORT", "8000"))
LOAD_SECONDS = float(os.environ.get("LOAD_SECONDS", "0.3"))
ENVIRONMENT = os.environ.get("MERIDIAN_ENVIRONMENT") or None
GREETING = os.environ.get("GREETING", "Hello")

ready = threading.Event()


def load():
    time.sleep(LOAD_SECONDS)  # stands in for reading weights
    ready.set()
    print(json.dumps({"msg": "loaded", "port": PORT}), flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health/live":
            self.reply(200, {"alive": True})
        elif self.path == "/health/ready":
            self.reply(200 if ready.is_set() else 503, {"ready": ready.is_set()})
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        if self.path != "/predict":
            self.reply(404, {"error": "not found"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        try:
            payload = json.loads(self.rfile.read(length) or b"null")
        except json.JSONDecodeError as err:
            self.reply(400, {"error": f"invalid JSON: {err}"})
            return
        where = ENVIRONMENT or "no environment"
        self.reply(200, {
            "message": f"{GREETING} from {where}",
            "environment": ENVIRONMENT,
            "model_id": os.environ.get("MERIDIAN_MODEL_ID"),
            "echo": payload,
            "server": "python",
        })

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        if not self.path.startswith("/health/"):  # health checks come every 100 ms while loading
            sys.stderr.write("%s\n" % (format % args))


def main():
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    threading.Thread(target=load, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
