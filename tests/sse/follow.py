#!/usr/bin/env python3
"""Follows tether's /events the way a Python application would, with the sseclient-py
library, and records what it saw, so the integration test can hold the stream against
tether's own record of its transitions.

It drops its connection after a seeded random choice of events and resumes by sending
the last id it saw as Last-Event-ID, pausing a little (also seeded) before it does, so
that events happen while nobody listens. Every event becomes one JSON line
{"type", "id", "data"} in --out; every resume one {"type": "_resume", "last_event_id"}.
It stops once it has seen the position written into --stop (by the test, when it is
done changing things), or fails after --limit seconds.
"""

import argparse
import http.client
import json
import random
import sys
import time

import sseclient


def position(event_id):
    return int(event_id.rsplit(":", 1)[1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True, help="host:port of tether's HTTP server")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--drops", type=int, default=20)
    parser.add_argument("--within", type=int, required=True,
                        help="the drops fall among the first WITHIN events")
    parser.add_argument("--out", required=True)
    parser.add_argument("--stop", required=True,
                        help="a file the test writes the final <instance>:<position> into")
    parser.add_argument("--limit", type=float, default=80.0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    drops = set(rng.sample(range(1, args.within), args.drops))
    deadline = time.monotonic() + args.limit
    host, port = args.addr.rsplit(":", 1)
    last_id = None
    received = 0
    out = open(args.out, "w", encoding="utf-8")

    def record(line):
        out.write(json.dumps(line) + "\n")
        out.flush()

    def finished():
        """Whether the test has said where the stream ends and we have reached it."""
        if time.monotonic() > deadline:
            sys.exit(f"no final position reached within {args.limit}s (last id {last_id})")
        try:
            with open(args.stop, encoding="utf-8") as f:
                final = f.read().strip()
        except FileNotFoundError:
            return False
        return bool(final) and last_id is not None and position(last_id) >= position(final)

    def lines(response):
        """The response's lines, ending the stream once the final position was seen:
        heartbeats (every events_heartbeat) bring us here while nothing happens."""
        for line in response:
            yield line
            if finished():
                return

    while True:
        connection = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = {"Accept": "text/event-stream"}
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        connection.request("GET", "/events", headers=headers)
        response = connection.getresponse()
        if response.status != 200:
            sys.exit(f"/events answered {response.status}")
        dropped = False
        for event in sseclient.SSEClient(lines(response)).events():
            record({"type": event.event, "id": event.id, "data": json.loads(event.data)})
            if event.id:
                last_id = event.id
            received += 1
            if finished():
                break
            if received in drops:
                dropped = True
                break
        connection.close()
        if not dropped:
            break
        time.sleep(rng.uniform(0.0, 0.05))
        record({"type": "_resume", "last_event_id": last_id})
    print(f"seed {args.seed}: {received} events, {len(drops)} resumes", file=sys.stderr)


if __name__ == "__main__":
    main()
