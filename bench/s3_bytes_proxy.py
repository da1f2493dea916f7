"""A loopback HTTP proxy in front of the sandbox's S3 that counts what `release` moves to and from
the state bucket: bench/ledger-bytes.sh points AWS_ENDPOINT_URL_S3 at it.

    python s3_bytes_proxy.py UPSTREAM_URL PORT_FILE

Listens on 127.0.0.1 (a free port, written to PORT_FILE). GET /_bytes answers the counts since the
last GET /_bytes?reset=1 as JSON: requests, bytes written (request bodies) and bytes read
(response bodies) for objects under /<bucket>/apps/.
"""

import http.client
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

UPSTREAM = urllib.parse.urlsplit(sys.argv[1])
COUNTS = {"requests": 0, "written": 0, "read": 0}
LOCK = threading.Lock()


def body_of(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = b""
        while True:
            size = int(handler.rfile.readline().split(b";")[0], 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return out
            out += handler.rfile.read(size)
            handler.rfile.readline()
    return handler.rfile.read(int(handler.headers.get("Content-Length") or 0))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def forward(self) -> None:
        if self.path.startswith("/_bytes"):
            with LOCK:
                answer = json.dumps(COUNTS).encode()
                if "reset=1" in self.path:
                    COUNTS.update(requests=0, written=0, read=0)
            self.send_response(200)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)
            return
        body = body_of(self)
        headers = {k: v for k, v in self.headers.items() if k.lower() != "transfer-encoding"}
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            headers["Content-Length"] = str(len(body))
        conn = http.client.HTTPConnection(UPSTREAM.hostname, UPSTREAM.port, timeout=60)
        conn.request(self.command, self.path, body=body if body else None, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if "/apps/" in self.path:
            with LOCK:
                COUNTS["requests"] += 1
                COUNTS["written"] += len(body)
                COUNTS["read"] += len(data) if self.command != "HEAD" else 0
        self.send_response(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(sys.argv[2], "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
