#!/usr/bin/env python3
"""Prints a conversation as `make demo` shows it: each request, then its reply.

Usage: pair.py REQUESTS.jsonl REPLIES.jsonl [WIDTH]

Replies are matched to requests by source and msg_id (`in_reply_to`); long lines are
wrapped to WIDTH columns (100 by default) under their arrow. A `wal_status` reply, a
large JSON object, is shown as a few lines of its main fields.
"""
import json
import sys
import textwrap


def wrap(arrow, line, width):
    """The message as `src -> dest: body`, wrapped (the raw line if it is not JSON)."""
    try:
        msg = json.loads(line)
        line = f"{msg['src']} to {msg['dest']}: {json.dumps(msg['body'])}"
    except (ValueError, KeyError, TypeError):
        pass
    return "\n".join(textwrap.wrap(line, width=width, initial_indent=arrow + " ",
                                   subsequent_indent=" " * (len(arrow) + 3),
                                   break_long_words=True, break_on_hyphens=False))


def status_lines(line):
    """The main fields of a wal_status reply, one topic a line; None for other lines."""
    try:
        msg = json.loads(line)
        st = msg["body"]["status"] if msg["body"]["type"] == "wal_status_ok" else None
    except (ValueError, KeyError, TypeError):
        return None
    if st is None:
        return None
    rec = st.get("last_recovery") or {}
    snap = st.get("latest_snapshot") or {}
    cnt = st.get("counters") or {}
    return [
        f"<- {msg['src']} to {msg['dest']}: wal_status_ok (main fields; the whole object is "
        f"in docs/PROTOCOL.md)",
        f"     log        offsets {st['first_offset']} to {st['next_offset'] - 1}, "
        f"{st['entries']} entries in {st['segments']} segment(s), {st['keys']} keys",
        f"     snapshot   {snap.get('file', 'none')} (covers offsets below "
        f"{snap.get('offset', 0)})",
        f"     recovery   loaded {rec.get('snapshot') or 'no snapshot'}, replayed "
        f"{rec.get('entries_replayed', 0)} entries, cut {rec.get('bytes_truncated', 0)} "
        f"bytes of torn tail, in {rec.get('duration_ms', 0)} ms",
        f"     counters   {cnt.get('appends', 0)} appends, {cnt.get('fsyncs', 0)} fsyncs, "
        f"{cnt.get('snapshots', 0)} snapshots, {cnt.get('compactions', 0)} compactions "
        f"since this process started",
    ]


def main():
    requests_path, replies_path = sys.argv[1], sys.argv[2]
    width = int(sys.argv[3]) if len(sys.argv) > 3 else 100
    replies = {}
    with open(replies_path) as f:
        for line in f:
            line = line.rstrip("\n")
            msg = json.loads(line)
            key = (msg["dest"], msg["body"].get("in_reply_to"))
            replies.setdefault(key, []).append(line)
    with open(requests_path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            print(wrap("->", line, width))
            try:
                msg = json.loads(line)
                key = (msg["src"], msg["body"].get("msg_id"))
            except (ValueError, KeyError, TypeError, AttributeError):
                key = None
            for reply in replies.pop(key, []) if key else []:
                print("\n".join(status_lines(reply) or [wrap("<-", reply, width)]))
            print()
    for lines in replies.values():
        for reply in lines:
            print(wrap("<-", reply, width))


if __name__ == "__main__":
    main()
