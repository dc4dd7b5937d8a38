#!/usr/bin/env python3
"""The crash part of `make demo`: kill -9 in the middle of writes, then recovery.

Usage: demo_crash.py NODE_BINARY DATA_DIR

Starts the node, keeps many appends of 16 KiB in flight (so that a group commit's write
spans many pages), kills the process with SIGKILL while it writes, starts it again on
the same directory and shows what recovery found: the entries written but never
acknowledged, and that every acknowledged append reads back with its own payload.

A kill leaves whole writes (the kernel finishes what the process handed it); a power
cut may not. So when entries past the last acknowledged one are on disk (written, not
yet synced when the process died), the demo also tears the last of them as a power cut
could have, zeroing its final bytes, and recovery must cut that torn tail and nothing
acknowledged.
"""
import json
import os
import signal
import subprocess
import sys
import threading
import time

PAYLOAD_BYTES = 16 * 1024
IN_FLIGHT = 512
# Requests written to the node's stdin in one write.
BURST = 64


def line(src, body):
    return json.dumps({"src": src, "dest": "n1", "body": body}) + "\n"


def init():
    return line("c0", {"type": "init", "msg_id": 1, "node_id": "n1", "node_ids": ["n1"]})


def payload(i):
    head = f"entry {i} "
    return head + chr(ord("a") + i % 26) * (PAYLOAD_BYTES - len(head))


def write_then_kill(binary, data_dir, seconds):
    """Appends in bursts for `seconds`, then SIGKILL; (sent, acknowledged offsets)."""
    node = subprocess.Popen([binary, "--data-dir", data_dir, "--auto-compact", "false"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    acked = {}  # offset -> entry number
    window = threading.Semaphore(IN_FLIGHT)

    def read():
        for reply in node.stdout:
            body = json.loads(reply)["body"]
            if body.get("type") == "wal_append_ok":
                acked[body["offset"]] = body["in_reply_to"] - 2
            if body.get("type") != "init_ok":
                window.release()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    killer = threading.Timer(seconds, lambda: os.kill(node.pid, signal.SIGKILL))
    killer.start()
    sent = 0
    try:
        node.stdin.write(init().encode())
        node.stdin.flush()
        while True:
            window.acquire()
            burst = [sent]
            while len(burst) < BURST and window.acquire(blocking=False):
                burst.append(burst[-1] + 1)
            sent += len(burst)
            node.stdin.write("".join(
                line("c1", {"type": "wal_append", "msg_id": i + 2, "payload": payload(i)})
                for i in burst).encode())
            node.stdin.flush()
    except (BrokenPipeError, ValueError):
        pass  # the node is gone
    node.wait()
    reader.join(timeout=5)
    return sent, dict(acked)


def tear_last_record(binary, data_dir, bytes_torn):
    """Zeroes the last `bytes_torn` bytes of the log's written data; the segment."""
    out = subprocess.run([binary, "inspect", os.path.join(data_dir, "n1"), "--json"],
                         capture_output=True, text=True, check=True).stdout
    active = json.loads(out)["segments"][-1]
    path = os.path.join(data_dir, "n1", active["file"])
    with open(path, "r+b") as f:
        f.seek(active["size_bytes"] - bytes_torn)
        f.write(b"\0" * bytes_torn)
    return active["file"]


def restart_and_check(binary, data_dir, acked):
    """Starts the node again; its wal_status, and the acknowledged offsets that do not
    read back with their own payload."""
    requests = [init(), line("c1", {"type": "wal_status", "msg_id": 2})]
    for n, offset in enumerate(sorted(acked)):
        requests.append(line("c1", {"type": "wal_read", "msg_id": n + 3, "offset": offset}))
    out = subprocess.run([binary, "--data-dir", data_dir], input="".join(requests),
                         capture_output=True, text=True, check=True).stdout
    replies = {}
    for reply in out.splitlines():
        body = json.loads(reply)["body"]
        replies[body["in_reply_to"]] = body
    wrong = []
    for n, offset in enumerate(sorted(acked)):
        got = replies.get(n + 3, {})
        if got.get("payload") != payload(acked[offset]):
            wrong.append((offset, got.get("type")))
    return replies[2]["status"], wrong


def main():
    binary, data_dir = sys.argv[1], sys.argv[2]
    sent, acked = write_then_kill(binary, data_dir, 1.5)
    top = max(acked) if acked else -1
    print(f"{sent} appends of {PAYLOAD_BYTES // 1024} KiB sent, up to {IN_FLIGHT} in flight; "
          f"{len(acked)} acknowledged (offsets 0 to {top}) when the node was killed with SIGKILL "
          f"in the middle of its writes")
    on_disk = json.loads(subprocess.run(
        [binary, "inspect", os.path.join(data_dir, "n1"), "--json"],
        capture_output=True, text=True, check=True).stdout)["next_offset"]
    if on_disk - 1 > top:
        torn = tear_last_record(binary, data_dir, 1000)
        print(f"on disk: offsets up to {on_disk - 1}; the last one, never acknowledged, torn as "
              f"a power cut could leave it (its final 1000 bytes of {torn} zeroed)")
    else:
        print(f"on disk: offsets up to {on_disk - 1}, each acknowledged: no unsynced record to "
              f"tear this time")
    status, wrong = restart_and_check(binary, data_dir, acked)
    r = status["last_recovery"]
    end = status["next_offset"]
    print("restarted on the same directory; recovery:")
    print(f"  loaded snapshot      {r.get('snapshot') or 'none'}")
    print(f"  entries replayed     {r['entries_replayed']}, in {r['duration_ms']} ms")
    if r.get("bytes_truncated"):
        print(f"  torn tail cut        {r['bytes_truncated']} bytes, kept aside in "
              f"{r['broken_file']}")
    else:
        print("  torn tail cut        none")
    print(f"  the log ends at      offset {end}: {end - 1 - top} entries written but never "
          f"acknowledged (a client retries those)")
    if wrong:
        print(f"LOST: {len(wrong)} acknowledged appends do not read back: {wrong[:5]}")
        sys.exit(1)
    print(f"every one of the {len(acked)} acknowledged appends reads back with its own payload")


if __name__ == "__main__":
    main()
