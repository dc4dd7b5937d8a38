#!/usr/bin/env python3
"""Prints a conversation as `make demo` shows it: each request, then its reply.

Usage: pair.py REQUESTS.jsonl REPLIES.jsonl [WIDTH]

Replies are matched to requests by source and msg_id (`in_reply_to`); long lines are
wrapped to WIDTH columns (100 by default) under their arrow.
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
                print(wrap("<-", reply, width))
            print()
    for lines in replies.values():
        for reply in lines:
            print(wrap("<-", reply, width))


if __name__ == "__main__":
    main()
