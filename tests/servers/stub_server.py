"""A stub HTTP server for the tests of a server's lifetime (tests/test_serving.py), not a model server:
`python stub_server.py PORT MODE`. /health answers 200 at once; POST /v1/completions hangs (MODE hang,
to be interrupted), answers 500 (MODE fail), or streams max_tokens events of "x" with a usage block
(MODE echo: what the client and the scenario need, with no model behind it). It also starts a child process in its group, which must
be gone after the server is stopped. Real model servers are tested with `transformers serve`."""
import http.server
import json
import subprocess
import sys
import time

port, mode = int(sys.argv[1]), sys.argv[2]
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
print(f"stub server on port {port}, mode {mode}, child {child.pid}", flush=True)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def do_POST(self):
        if mode == "hang":
            time.sleep(600)
        if mode == "echo":
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            n = body["max_tokens"]
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.end_headers()
            for k in range(n):
                event = {"choices": [{"index": 0, "text": "x", "finish_reason": "length" if k == n - 1 else None}]}
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
                self.wfile.flush()
                time.sleep(0.002)
            self.wfile.write(b"data: " + json.dumps({"choices": [], "usage": {"completion_tokens": n}}).encode()
                             + b"\n\ndata: [DONE]\n\n")
            return
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"stub server: no model here")


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
