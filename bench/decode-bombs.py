#!/usr/bin/env python3
"""Server CPU and peak RSS for crafted decode-bomb messages against normal ones.

For each kind of message, a fresh `ripple dev` (in-memory persistence, its own port and data
dir) gets 50 messages, each on a fresh WebSocket connection (handshake, one binary frame, wait
for the server to answer or close). The server's CPU (utime + stime from /proc/PID/stat) over
the 50 and its peak RSS (VmHWM) are printed as a table and as JSON lines.

    python3 bench/decode-bombs.py --bin target/release/ripple [--bin-label after] [--count 50]

Loopback only; bounded: each kind sends --count messages and waits at most 10 s for each.
"""

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time


def varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def var_bytes(b):
    return varint(len(b)) + b


def sync(sub, payload):
    return bytes([0, sub]) + var_bytes(payload)


def any_item(tag, n):
    return bytes([1, 1, 9, 0, 8, 1, 1, ord("a"), 1, tag]) + varint(n) + bytes([126, 0])


KINDS = {
    # A normal sync step 1 (empty state vector): the server answers with step 2.
    "normal step 1": sync(0, bytes([0])),
    "sv 1e8 entries": sync(0, varint(100_000_000) + bytes([1, 1])),
    "sv 4e8 entries": sync(0, varint(400_000_000) + bytes([1, 1])),
    "update 1e8 clients": sync(2, varint(100_000_000) + bytes([0, 1, 0, 0])),
    "update any array 1e8": sync(2, any_item(117, 100_000_000)),
    "update any map 1e8": sync(2, any_item(118, 100_000_000)),
    # 50,000 nested arrays (100 KB): yrs decodes Any recursively.
    "update nested 50k deep": sync(
        2, bytes([1, 1, 9, 0, 8, 1, 1, ord("a"), 1]) + bytes([117, 1]) * 50_000 + bytes([126, 0])
    ),
}


def start(binary, port):
    data = tempfile.mkdtemp(prefix="ripple-bombs-")
    proc = subprocess.Popen(
        [binary, "dev", "--port", str(port), "--data-dir", data, "--persist", "none"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "listening" in line:
            return proc
        if proc.poll() is not None:
            break
    proc.kill()
    raise SystemExit(f"{binary} did not start")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def frame(payload):
    mask = os.urandom(4)
    head = bytearray([0x82])
    n = len(payload)
    if n < 126:
        head.append(0x80 | n)
    elif n < 65536:
        head.append(0x80 | 126)
        head += n.to_bytes(2, "big")
    else:
        head.append(0x80 | 127)
        head += n.to_bytes(8, "big")
    return bytes(head) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def one(port, room, payload):
    """Connects, sends one frame, reads until the server answers a step 2 or closes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /{room} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("closed during the handshake")
        buf += chunk
    s.sendall(frame(payload))
    rest = buf.split(b"\r\n\r\n", 1)[1]

    def read(n):
        nonlocal rest
        while len(rest) < n:
            chunk = s.recv(65536)
            if not chunk:
                raise EOFError
            rest += chunk
        out, rest = rest[:n], rest[n:]
        return out

    # Server frames are unmasked. Done at a close frame, or at our step 2 answer.
    try:
        while True:
            b0, b1 = read(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(read(2), "big")
            elif n == 127:
                n = int.from_bytes(read(8), "big")
            body = read(n)
            if b0 & 0x0F == 8 or (b0 & 0x0F == 2 and body[:2] == b"\x00\x01"):
                break
    except (EOFError, socket.timeout, ConnectionError):
        pass
    s.close()


def measure(binary, label, kind, payload, count, port):
    proc = start(binary, port)
    try:
        before = cpu_seconds(proc.pid)
        t0 = time.time()
        for i in range(count):
            try:
                one(port, f"bomb-{i}", payload)
            except OSError:
                pass
            if proc.poll() is not None:
                break
        wall = time.time() - t0
        alive = proc.poll() is None
        cpu = cpu_seconds(proc.pid) - before if alive else float("nan")
        rss = peak_rss_kib(proc.pid) if alive else 0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {
        "server": label,
        "kind": kind,
        "messages": count,
        "bytes": len(payload),
        "cpu_ms": round(cpu * 1000, 1),
        "peak_rss_mib": round(rss / 1024, 1),
        "wall_s": round(wall, 2),
        "survived": alive,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", action="append", required=True)
    ap.add_argument("--bin-label", action="append")
    ap.add_argument("--count", type=int, default=50)
    ap.add_argument("--port", type=int, default=19990)
    args = ap.parse_args()
    labels = args.bin_label or args.bin
    rows = []
    for binary, label in zip(args.bin, labels):
        for kind, payload in KINDS.items():
            row = measure(binary, label, kind, payload, args.count, args.port)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print(f"| server | message | bytes | CPU for {args.count} (ms) | peak RSS (MiB) |")
    print("|---|---|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['server']} | {r['kind']} | {r['bytes']} | {r['cpu_ms']} | {r['peak_rss_mib']} |"
        )


if __name__ == "__main__":
    main()
