"""A stub HTTP server for the tests of a server's lifetime (tests/test_serving.py), not a model server:
`python stub_server.py PORT MODE`. /health answers 200 at once; POST /v1/completions hangs (MODE hang,
to be interrupted) or answers 500 (MODE fail). It also starts a child process in its group, which must
be gone after the server is stopped. Real model servers are tested with `transformers serve`."""
import http.server
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
        self.send_response(500)
        self.end_headers()
        self.wfile.write(b"stub server: no model here")


http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
