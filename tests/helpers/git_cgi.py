"""A small CGI host for the real `git http-backend`: git's smart HTTP (clone, fetch and push)
for the bare repositories under ROOT, on loopback. Run as its own process:

    python git_cgi.py ROOT PORT [--log FILE]

Request bodies may be sent with `Content-Length` or `Transfer-Encoding: chunked` (git sends
big pushes chunked); a chunked body reaches the backend de-chunked, without CONTENT_LENGTH,
so that it reads to the end. `Content-Encoding` goes through as HTTP_CONTENT_ENCODING: the
backend inflates gzip bodies itself. Answers without a length go back chunked (HTTP/1.1).
Pushing is on for every repository, as REMOTE_USER is set. With `--log`, one line per
request: method, path, status, transfer and content encodings, and body bytes received."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, cast
from urllib.parse import unquote

COPY = 1 << 16


class GitServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, root: Path, log: Path | None) -> None:
        super().__init__(("127.0.0.1", port), GitHandler)
        self.root, self.log = root, log
        self.log_lock = threading.Lock()


class GitHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: GitServer

    def do_GET(self) -> None:
        self.run_backend()

    def do_POST(self) -> None:
        self.run_backend()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the `--log` file says what was served."""

    def environment(self, path: str, query: str, chunked: bool) -> dict[str, str]:
        """The CGI variables for this request (RFC 3875), plus git's own."""
        env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("HTTP_", "CONTENT_", "GIT_"))
        }
        env.update(
            GIT_PROJECT_ROOT=str(self.server.root),
            GIT_HTTP_EXPORT_ALL="1",
            REMOTE_USER="mesh-test",  # http.receivepack defaults to on when this is set
            REMOTE_ADDR=self.client_address[0],
            GATEWAY_INTERFACE="CGI/1.1",
            SERVER_PROTOCOL=self.request_version,
            SERVER_SOFTWARE="git-cgi",
            SERVER_NAME="127.0.0.1",
            SERVER_PORT=str(self.server.server_address[1]),
            REQUEST_METHOD=self.command,
            PATH_INFO=unquote(path),
            QUERY_STRING=query,
            CONTENT_TYPE=self.headers.get("Content-Type", ""),
        )
        length = self.headers.get("Content-Length")
        if length is not None and not chunked:
            env["CONTENT_LENGTH"] = length
        for key in set(self.headers.keys()):
            name = "HTTP_" + key.upper().replace("-", "_")
            if name not in ("HTTP_CONTENT_TYPE", "HTTP_CONTENT_LENGTH"):
                env[name] = ", ".join(self.headers.get_all(key, []))
        if "Git-Protocol" in self.headers:  # protocol v2, as Apache's SetEnvIf would pass it
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        return env

    def run_backend(self) -> None:
        path, _, query = self.path.partition("?")
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        length = 0 if chunked else int(self.headers.get("Content-Length") or 0)
        backend = subprocess.Popen(
            ["git", "http-backend"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=self.environment(path, query, chunked),
        )
        assert backend.stdin is not None and backend.stdout is not None
        received = [0]
        feeder = threading.Thread(
            target=self.feed, args=(backend.stdin, chunked, length, received), daemon=True
        )
        feeder.start()
        status = self.relay(cast(io.BufferedReader, backend.stdout))
        feeder.join()
        backend.wait()
        if self.server.log is not None:
            line = (
                f"{self.command} {path} {status}"
                f" te={self.headers.get('Transfer-Encoding', '-')}"
                f" ce={self.headers.get('Content-Encoding', '-')} in={received[0]}\n"
            )
            with self.server.log_lock, self.server.log.open("a") as log:
                log.write(line)

    def feed(self, sink: IO[bytes], chunked: bool, length: int, received: list[int]) -> None:
        """The request body into the backend, then EOF. Should the backend stop reading, the
        rest is read and dropped (the connection must be left at the next request); should
        the body be cut short or malformed, the connection is closed after the answer."""
        pieces = _chunks(self.rfile) if chunked else _fixed(self.rfile, length)
        try:
            for piece in pieces:
                received[0] += len(piece)
                if not sink.closed:
                    try:
                        sink.write(piece)
                    except BrokenPipeError:
                        with contextlib.suppress(BrokenPipeError):
                            sink.close()
        except (ConnectionError, ValueError):
            self.close_connection = True
        finally:
            with contextlib.suppress(BrokenPipeError):
                sink.close()

    def relay(self, source: io.BufferedReader) -> int:
        """The backend's CGI answer, sent as an HTTP response; its status code."""
        status, reason, headers = 200, "OK", []
        while True:
            line = source.readline().rstrip(b"\r\n").decode("latin-1")
            if not line:
                break
            name, _, value = line.partition(":")
            value = value.strip()
            if name.lower() == "status":
                code, _, reason = value.partition(" ")
                status = int(code)
            else:
                headers.append((name, value))
        self.send_response(status, reason or None)
        sized = any(name.lower() == "content-length" for name, _ in headers)
        for name, value in headers:
            self.send_header(name, value)
        if not sized:
            if self.request_version == "HTTP/1.1":
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.close_connection = True
        self.end_headers()
        chunk = not sized and self.request_version == "HTTP/1.1"
        while piece := source.read1(COPY):
            if chunk:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
        if chunk:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        return status


def _fixed(stream: io.BufferedIOBase, length: int) -> Iterator[bytes]:
    """`length` bytes from `stream`, in pieces."""
    while length > 0:
        piece = stream.read(min(length, COPY))
        if not piece:
            raise ConnectionError("request body cut short")
        length -= len(piece)
        yield piece


def _chunks(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """The decoded pieces of a `Transfer-Encoding: chunked` body from `stream` (trailers
    are read and dropped)."""
    while True:
        size_line = stream.readline(1024)
        if not size_line:
            raise ConnectionError("chunked body cut short")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while stream.readline(1024) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return
        piece = stream.read(size)
        if len(piece) != size:
            raise ConnectionError("chunked body cut short")
        stream.readline(8)  # the CRLF after the chunk
        yield piece


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("port", type=int)
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    with GitServer(args.port, args.root.resolve(), args.log) as server:
        print(f"serving {args.root} on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
