"""Built-in backends standing in for dev, test and prod when no database is installed.

Each answers every line it receives with its own name, so an app (or a person with
`nc`) can see which environment a connection reached.
"""

from __future__ import annotations

import socketserver
import threading


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        name: str = self.server.backend_name  # type: ignore[attr-defined]
        for _line in self.rfile:
            self.wfile.write(f"{name}\n".encode())
            self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def start_backend(name: str, host: str = "127.0.0.1", port: int = 0) -> tuple[_Server, int]:
    """Start a named line backend in a daemon thread; returns the server and its port."""
    server = _Server((host, port), _Handler)
    server.backend_name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, name=f"backend-{name}", daemon=True).start()
    return server, int(server.server_address[1])
