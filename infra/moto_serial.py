"""moto server with DynamoDB's atomicity: one request at a time.

DynamoDB applies a conditional write or a TransactWriteItems call
atomically: two concurrent transactions on the same items never both
commit. moto checks the conditions and then writes, in Python, on a
threaded HTTP server, so two requests can interleave between the check and
the write, and both "succeed" (seen with two concurrent key revocations).
crmbridge's race tests rely on the guarantee DynamoDB documents, so the
emulator must give it: this runs moto's own application behind a lock that
serialises request handling (connections are still served by threads, so
a keep-alive connection never blocks another).

Usage: python infra/moto_serial.py -H 127.0.0.1 -p PORT
"""

import argparse
import os
import threading

from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple


class Serialised:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        with self.lock:
            # Drain the response inside the lock: moto may build it lazily.
            return list(self.app(environ, start_response))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args()
    os.environ.setdefault("MOTO_PORT", str(args.port))
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        Serialised(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
