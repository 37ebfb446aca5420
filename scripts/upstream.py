#!/usr/bin/env python3
"""A small upstream API to put behind payg (the README walkthrough and CI).

    python3 scripts/upstream.py [--port 9000] [--secret pgs_...]

Every request is answered with JSON describing what arrived: method, path
(with its query), the caller payg names (X-Payg-User-Id, X-Payg-Api), and
the body. With --secret (or PAYG_SIGNING_SECRET), a request whose
Payg-Signature does not verify, or is older than five minutes, gets 401:
this is how an upstream refuses calls that did not come through payg.

GET /status/<code> answers with that status; anything else echoes.
Only the Python standard library is used.
"""

import argparse
import hashlib
import hmac
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_AGE_SECONDS = 300


def verify_payg_signature(secret, header, method, path_and_query, user_id, now=None):
    """True when `header` (Payg-Signature: t=<unix>,v1=<hex>[,v1=<hex>]) holds
    an HMAC-SHA256, keyed with `secret`, of
        "<t>\\n<METHOD>\\n<path and query as received>\\n<X-Payg-User-Id>"
    made within the last five minutes. During a secret rotation payg sends
    one v1 per secret; any one matching is enough."""
    if not header:
        return False
    parts = [p.split("=", 1) for p in header.split(",") if "=" in p]
    stamps = [v for k, v in parts if k.strip() == "t"]
    signatures = [v for k, v in parts if k.strip() == "v1"]
    if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
        return False
    timestamp = int(stamps[0])
    if abs((now or time.time()) - timestamp) > MAX_AGE_SECONDS:
        return False
    message = f"{timestamp}\n{method}\n{path_and_query}\n{user_id}".encode()
    expected = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, s.strip()) for s in signatures)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    secret = None

    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _handle(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        user = self.headers.get("X-Payg-User-Id")
        if self.secret and not verify_payg_signature(
            self.secret, self.headers.get("Payg-Signature"), self.command, self.path, user or ""
        ):
            self._answer(401, {"error": "not signed by payg"})
            return
        if self.path.startswith("/status/") and self.path[8:].isdigit():
            self._answer(int(self.path[8:]), {"status": int(self.path[8:])})
            return
        self._answer(
            200,
            {
                "method": self.command,
                "path": self.path,
                "user": user,
                "api": self.headers.get("X-Payg-Api"),
                "signature": self.headers.get("Payg-Signature"),
                "authorization_seen": "Authorization" in self.headers or "X-API-Key" in self.headers,
                "body": body.decode("utf-8", "replace"),
            },
        )

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle

    def log_message(self, *args):
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--secret", default=os.environ.get("PAYG_SIGNING_SECRET"))
    args = parser.parse_args()
    Handler.secret = args.secret
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"upstream listening on http://{args.host}:{args.port}"
          f" ({'verifying Payg-Signature' if args.secret else 'not verifying signatures'})", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
