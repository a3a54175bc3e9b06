"""A plain WSGI web app that hands slow work to jobsd from its request handlers.

    jobsd serve &
    jobsd worker examples.emails:jobs -q emails &
    python -m examples.wsgi_app            # http://127.0.0.1:8000/signup?email=ada@example.com

One ``Client`` serves every request thread: it keeps one socket per thread.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import make_server

from examples.emails import send_email
from jobsd import Client

client = Client(os.environ.get("JOBSD_ENDPOINT", "tcp://127.0.0.1:7465"))


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    query = parse_qs(environ.get("QUERY_STRING", ""))
    if environ.get("PATH_INFO") == "/signup" and query.get("email"):
        job_id = client.submit(send_email, query["email"][0], "Welcome!")
        body, status = {"queued": job_id}, "202 Accepted"
    elif environ.get("PATH_INFO", "").startswith("/jobs/"):
        job = client.status(environ["PATH_INFO"].removeprefix("/jobs/"))
        body = {"state": job.state, "result": job.result} if job else {"error": "no such job"}
        status = "200 OK" if job else "404 Not Found"
    else:
        body, status = {"try": "/signup?email=ada@example.com"}, "404 Not Found"
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]


if __name__ == "__main__":
    with make_server("127.0.0.1", 8000, app) as server:
        print("serving on http://127.0.0.1:8000")
        server.serve_forever()
