"""Stand-in for LiteLLM (tests/it/compose.rs), run with the compose file's command line
(--port, --model ollama/NAME, --api_base URL) and environment (LITELLM_MASTER_KEY, the
proxy variables). Serves the service's healthcheck (GET /health/liveliness) and
POST /chat/completions, which it answers by asking the model at --api_base (Ollama's
/api/chat) the way LiteLLM does: over HTTP, through HTTP_PROXY, the gate. Exits 0 on
SIGTERM."""

import argparse
import json
import os
import signal
import sys
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--model", required=True)
parser.add_argument("--api_base", required=True)
args = parser.parse_args()


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/health/liveliness":
            self.reply(200, "I'm alive!")
        else:
            self.reply(404, {"error": "not found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if self.path not in ("/chat/completions", "/v1/chat/completions"):
            return self.reply(404, {"error": "not found"})
        if self.headers.get("Authorization") != "Bearer " + os.environ["LITELLM_MASTER_KEY"]:
            return self.reply(401, {"error": "bad master key"})
        provider, _, model = args.model.partition("/")
        if provider != "ollama":
            return self.reply(400, {"error": f"stand-in serves ollama/ models, not {args.model}"})
        upstream = urllib.request.Request(
            args.api_base.rstrip("/") + "/api/chat",
            data=json.dumps(
                {"model": model, "messages": request.get("messages", []), "stream": False}
            ).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(upstream, timeout=10) as r:
                answer = json.load(r)
        except Exception as e:  # the gate refused, or the model is not there
            return self.reply(502, {"error": f"{args.api_base}: {e}"})
        self.reply(
            200,
            {
                "object": "chat.completion",
                "model": args.model,
                "choices": [
                    {"index": 0, "message": answer.get("message"), "finish_reason": "stop"}
                ],
            },
        )

    def log_message(self, fmt, *a):
        sys.stderr.write("litellm stand-in: " + fmt % a + "\n")


signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()
