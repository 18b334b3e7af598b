"""How much of an oversized request body the server reads, and what it costs in memory.

    python benchmarks/serve_body_limit.py [--body-mb 400] [--limit-mb 8]

Trains the demo engine.toml for one epoch on a 2k-request simulated funnel, starts
``rankengine serve --max-body-bytes LIMIT`` in a subprocess and sends ``POST /v1/rank`` bodies
of ``--body-mb`` MB over a raw socket in 1 MB pieces, once with ``Content-Length`` and once
chunked, stopping as soon as the server answers or closes the connection. It prints the status,
how much the client got to send and the server's resident memory before and at its peak
(``VmRSS`` / ``VmHWM`` from /proc). A body within the limit would be read whole; one beyond it
must be refused after at most the limit plus the 1 MiB grace (413).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from rankengine.config import load_config
from rankengine.registry import RegistryStore
from rankengine.registry.artifacts import register
from rankengine.simulate import SimulationConfig, write_funnel
from rankengine.train import train

REPO = Path(__file__).resolve().parents[1]
PIECE = 1 << 20


def memory_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of ``pid`` in MB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text()
                  .splitlines() if ":" in line)
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def send(port: int, body_bytes: int, chunked: bool) -> tuple[str, int]:
    """Send a body of ``body_bytes``; returns (the response's status line, bytes sent)."""
    head = ("POST /v1/rank HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            + ("Transfer-Encoding: chunked\r\n" if chunked else
               f"Content-Length: {body_bytes}\r\n") + "\r\n").encode()
    piece = b" " * PIECE
    sent = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head)
        sock.settimeout(0.0)
        try:
            while sent < body_bytes:
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the server answered before the body ended
                except BlockingIOError:
                    pass
                sock.settimeout(10.0)
                sock.sendall(f"{PIECE:x}\r\n".encode() + piece + b"\r\n" if chunked else piece)
                sock.settimeout(0.0)
                sent += PIECE
            if sent >= body_bytes and chunked:
                sock.settimeout(10.0)
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed by the server past the limit
        sock.settimeout(30.0)
        try:
            status = sock.recv(4096).split(b"\r\n", 1)[0].decode(errors="replace")
        except (ConnectionResetError, TimeoutError):
            status = "(no response)"
    return status or "(connection closed)", sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--body-mb", type=int, default=400)
    parser.add_argument("--limit-mb", type=int, default=8)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    write_funnel(tmp / "data", SimulationConfig(requests=2_000, seed=7))
    config = load_config(REPO / "engine.toml")
    for split in ("train", "valid", "test"):
        setattr(config.data, split, str(tmp / "data" / f"{split}.parquet"))
    config.train.epochs = 1
    trained = train(config, progress=False)
    url = f"sqlite:///{tmp / 'reg.db'}"
    store = RegistryStore(url)
    register(store, tmp / "artifacts", trained, "demo")
    store.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "rankengine.cli", "serve", "demo/1", "--registry", url,
         "--port", str(port), "--threads", "1", "--no-access-log",
         "--max-body-bytes", str(args.limit_mb << 20)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise SystemExit("server did not become ready")
            time.sleep(0.2)
        print(f"# {args.body_mb} MB bodies, --max-body-bytes {args.limit_mb} MiB, one server "
              f"process")
        print("| body sent as | status | client sent | server RSS before | server peak RSS |")
        print("|---|---|---|---|---|")
        for chunked in (False, True):
            before, _ = memory_mb(server.pid)
            status, sent = send(port, args.body_mb << 20, chunked)
            time.sleep(0.5)
            _, peak = memory_mb(server.pid)
            print(f"| {'chunked' if chunked else 'Content-Length'} | {status} | "
                  f"{sent >> 20} MB | {before:.0f} MB | {peak:.0f} MB |")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
