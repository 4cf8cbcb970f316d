"""An alert receiver for the alert tests: verifies every delivery with the
reference Standard Webhooks implementation (PyPI `standardwebhooks`), keeps
what it verified, and can be told to hang, as a receiver that is down does.

    python alert_receiver.py SECRET [SECRET...]   -> prints its port

POST /control {"hang": true|false} or {"secrets": [...]} (the secrets it
verifies with from now on); GET /received; POST / (deliveries).
While hanging, deliveries wait until released (then refused, 503: a
receiver that never answered never took them) or until the sender gives
up; `hanging_max` is the most held open at once.
"""
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

hooks = [Webhook(secret) for secret in sys.argv[1:]]
lock = threading.Lock()
state = {"received": [], "rejected": [], "hung": 0, "hanging_now": 0, "hanging_max": 0}
released = threading.Event()
released.set()


def client_gone(sock):
    """Whether the sender closed the connection (gave up waiting)."""
    try:
        sock.setblocking(False)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


class Handler(BaseHTTPRequestHandler):
    def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        with lock:
            self._answer(200, state)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/control":
            command = json.loads(body)
            if "secrets" in command:
                hooks[:] = [Webhook(secret) for secret in command["secrets"]]
            elif command["hang"]:
                released.clear()
            else:
                released.set()
            self._answer(200, {"ok": True})
            return
        if not released.is_set():
            with lock:
                state["hung"] += 1
                state["hanging_now"] += 1
                state["hanging_max"] = max(state["hanging_max"], state["hanging_now"])
            # Held until released, or until the sender gives up: what is
            # counted is the requests held open at once.
            while not released.wait(0.05):
                if client_gone(self.connection):
                    break
            with lock:
                state["hanging_now"] -= 1
            if released.is_set():
                self._answer(503, {"error": "was hanging"})
            return
        headers = {name.lower(): value for name, value in self.headers.items()}
        for hook in hooks:
            try:
                payload = hook.verify(body, headers)
            except WebhookVerificationError:
                continue
            with lock:
                state["received"].append(
                    {"id": headers["webhook-id"], "path": self.path, "payload": payload}
                )
            self._answer(204, {})
            return
        with lock:
            state["rejected"].append(headers.get("webhook-id", ""))
        self._answer(400, {"error": "signature not verified"})

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
print(server.server_address[1], flush=True)
server.serve_forever()
