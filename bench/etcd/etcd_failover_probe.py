#!/usr/bin/env python3
"""Long-lived etcd v3 client that measures leader failover as a client sees it.

Usage: etcd_failover_probe.py --endpoints H:P,H:P,H:P --ca CA --cert CRT --key KEY --kill-pid PID
                              [--interval-ms 10] [--attempt-timeout-ms 1000] [--max-seconds 30]

Opens one mutual-TLS gRPC channel per endpoint (like clientv3 with all endpoints) and proves each one with a
put. Then it sends SIGKILL to --kill-pid (the leader's etcd, started by the calling script), and from that
instant issues a put every --interval-ms, rotating over the endpoints, each with its own deadline and many in
flight, so the first acknowledged write is seen within about one interval of the cluster accepting writes
again. Prints one JSON line: {"failover_ms": F, "attempts": N, "first_ok_endpoint": E, ...}; exit 1 when no
write succeeded within --max-seconds.

The put is etcdserverpb.KV/Put sent as raw bytes (PutRequest{key=1, value=2} encoded here), so grpcio is the
only dependency: no etcd stubs, no protobuf<4 pin.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time

import grpc

PUT = "/etcdserverpb.KV/Put"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def put_request(key: bytes, value: bytes) -> bytes:
    return b"\x0a" + varint(len(key)) + key + b"\x12" + varint(len(value)) + value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoints", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--kill-pid", type=int, required=True)
    ap.add_argument("--interval-ms", type=float, default=10.0)
    ap.add_argument("--attempt-timeout-ms", type=float, default=1000.0)
    ap.add_argument("--max-seconds", type=float, default=30.0)
    ap.add_argument("--max-in-flight", type=int, default=400)
    a = ap.parse_args()

    def rd(p):
        with open(p, "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(rd(a.ca), rd(a.key), rd(a.cert))
    eps = a.endpoints.split(",")
    puts = []
    for ep in eps:
        ch = grpc.secure_channel(ep, creds)
        puts.append(ch.unary_unary(PUT, request_serializer=None, response_deserializer=None))
    for ep, put in zip(eps, puts):  # warm every connection: the client is long-lived when the leader dies
        put(put_request(b"/failover/warm", ep.encode()), timeout=5)

    lock = threading.Lock()
    first = {}
    done = threading.Event()

    def on_done(fut, ep, i):
        t = time.monotonic()
        if fut.code() == grpc.StatusCode.OK:
            with lock:
                if "t" not in first or t < first["t"]:
                    first.update(t=t, ep=ep, i=i)
            done.set()

    os.kill(a.kill_pid, signal.SIGKILL)
    t0 = time.monotonic()
    futs = []
    i = 0
    deadline = t0 + a.max_seconds
    while not done.is_set() and time.monotonic() < deadline:
        if sum(1 for f in futs if not f.done()) < a.max_in_flight:
            k = i % len(puts)
            f = puts[k].future(put_request(b"/failover/probe", str(i).encode()), timeout=a.attempt_timeout_ms / 1000)
            f.add_done_callback(lambda fut, ep=eps[k], n=i: on_done(fut, ep, n))
            futs.append(f)
            i += 1
        done.wait(a.interval_ms / 1000)
    for f in futs:
        f.cancel()
    if "t" not in first:
        print(json.dumps({"failover_ms": None, "attempts": i, "error": f"no put succeeded in {a.max_seconds}s"}))
        sys.exit(1)
    errors = {}
    for f in futs:
        if f.done() and not f.cancelled() and f.code() != grpc.StatusCode.OK:
            key = f"{f.code().name}: {(f.details() or '')[:60]}"
            errors[key] = errors.get(key, 0) + 1
    print(json.dumps({"failover_ms": round((first["t"] - t0) * 1000, 1), "attempts": i,
                      "first_ok_attempt": first["i"], "first_ok_endpoint": first["ep"], "errors": errors}))


if __name__ == "__main__":
    main()
