#!/usr/bin/env python3
"""How long a served group goes without a leader when its leader stops.

Starts three `flintlog serve` members on loopback, then ROUNDS times: stops the leader
(SIGTERM, which hands leadership over first, or SIGKILL with `kill`), measures the time
from the signal to the first write another member acknowledges, and restarts the
stopped member. Prints each round's time and the median.

    python3 scripts/handover.py term 9 [path/to/flintlog]
    python3 scripts/handover.py kill 9 [path/to/flintlog]
"""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

MODE, ROUNDS = sys.argv[1], int(sys.argv[2])
BIN = sys.argv[3] if len(sys.argv) > 3 else "target/release/flintlog"
assert MODE in ("term", "kill"), "term or kill"
DIR = tempfile.mkdtemp(prefix="handover-")


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


PORTS = free_ports(6)
PEER, CLIENT = PORTS[:3], PORTS[3:]
PEERS = ",".join(f"n{i + 1}=127.0.0.1:{PEER[i]}" for i in range(3))
procs = {}


def start(i):
    log = open(os.path.join(DIR, f"n{i + 1}.log"), "a")
    procs[i] = subprocess.Popen(
        [BIN, "serve", "--data-dir", DIR, "--node-id", f"n{i + 1}",
         "--peer-listen", f"127.0.0.1:{PEER[i]}",
         "--client-listen", f"127.0.0.1:{CLIENT[i]}", "--peers", PEERS],
        stdout=subprocess.DEVNULL, stderr=log)


def call(i, body, timeout):
    try:
        with socket.create_connection(("127.0.0.1", CLIENT[i]), timeout=timeout) as s:
            s.settimeout(timeout)
            body["msg_id"] = 1
            s.sendall((json.dumps({"src": "m", "body": body}) + "\n").encode())
            line = s.makefile().readline()
            return json.loads(line)["body"] if line else None
    except (OSError, ValueError):
        return None


def leader():
    while True:
        for i in list(procs):
            b = call(i, {"type": "wal_status"}, 0.5)
            if b and b.get("status", {}).get("role") == "leader":
                return i
        time.sleep(0.02)


for i in range(3):
    start(i)
times = []
try:
    for r in range(ROUNDS):
        lead = leader()
        others = [i for i in procs if i != lead]
        t0 = time.time()
        if MODE == "term":
            procs[lead].send_signal(signal.SIGTERM)
        else:
            procs[lead].kill()
        done = None
        while done is None:
            for i in others:
                b = call(i, {"type": "write", "key": "k", "value": r}, 2.5)
                if b and b.get("type") == "write_ok":
                    done = time.time() - t0
                    break
        procs.pop(lead).wait()
        times.append(done * 1000)
        start(lead)
        time.sleep(1.0)
finally:
    for p in procs.values():
        p.send_signal(signal.SIGTERM)
        p.wait()
    shutil.rmtree(DIR, ignore_errors=True)
print(MODE, " ".join(f"{t:.0f}" for t in times), "ms; median",
      f"{sorted(times)[len(times) // 2]:.0f} ms")
