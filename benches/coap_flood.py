#!/usr/bin/env python3
"""A flood of hostile datagrams at a running `meterflow serve`'s CoAP port, from many source
addresses, to show that memory stays bounded: random bytes, requests to random paths, Block1
transfers that are started and never finished, LwM2M registrations of random endpoints, and
valid-looking reports for random meters. Prints the server's peak and current RSS and its CoAP
table gauges before and after.

    benches/coap_flood.py PID COAP_PORT HTTP_PORT [DATAGRAMS] [SOCKETS]

Standard library only. Loopback; every datagram is sent without waiting for an answer.
"""
import random
import socket
import struct
import sys
import time
import urllib.request


def rss_kib(pid):
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def gauges(http_port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics").read().decode()
    wanted = ("meterflow_coap_exchanges ", "meterflow_coap_block_transfers ",
              "meterflow_coap_block_bytes ", "meterflow_lwm2m_registrations ",
              "meterflow_coap_inflight ")
    return {l.split()[0]: float(l.split()[1]) for l in text.splitlines() if l.startswith(wanted)}


def option(delta, value):
    """One CoAP option (value shorter than 13 bytes; delta below 269)."""
    if delta < 13:
        return bytes([(delta << 4) | len(value)]) + value
    return bytes([(13 << 4) | len(value), delta - 13]) + value


def request(mid, path_segments, queries=(), cf=None, block1=None, payload=b""):
    out = bytearray([0x42, 0x02]) + struct.pack(">H", mid) + b"\x12\x34"  # CON POST, token 2
    number = 0
    opts = [(11, s) for s in path_segments]
    if cf is not None:
        opts.append((12, cf.to_bytes(2, "big").lstrip(b"\0") or b""))
    opts += [(15, q) for q in queries]
    if block1 is not None:
        opts.append((27, block1.to_bytes(3, "big").lstrip(b"\0") or b""))
    for n, value in opts:
        value = value[:12]
        out += option(n - number, value)
        number = n
    if payload:
        out += b"\xff" + payload
    return bytes(out)


def main():
    pid, coap_port, http_port = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    datagrams = int(sys.argv[4]) if len(sys.argv) > 4 else 500_000
    nsockets = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
    rng = random.Random(7)
    socks = []
    for _ in range(nsockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setblocking(False)
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    before = rss_kib(pid), gauges(http_port)
    started = time.time()
    sent = 0
    for i in range(datagrams):
        kind = i % 5
        mid = rng.randrange(65536)
        if kind == 0:
            d = rng.randbytes(rng.randrange(1, 200))
        elif kind == 1:
            d = request(mid, [b"x", str(rng.random()).encode()], cf=50, payload=b"{}")
        elif kind == 2:  # a Block1 transfer started and abandoned
            d = request(mid, [b"r", f"m{rng.randrange(10**6)}".encode()], cf=50,
                        block1=(0 << 4) | 0x8 | 6, payload=bytes(1024))
        elif kind == 3:
            d = request(mid, [b"rd"], queries=[f"ep=d{rng.randrange(10**7)}".encode()], cf=40)
        else:
            d = request(mid, [b"r", f"m{rng.randrange(10**6)}".encode()], cf=50, payload=b"{bad")
        try:
            socks[i % nsockets].sendto(d, ("127.0.0.1", coap_port))
            sent += 1
        except BlockingIOError:
            time.sleep(0.001)
        for s in (socks[i % nsockets],):  # drain answers so our buffers do not fill
            try:
                while True:
                    s.recv(2048)
            except BlockingIOError:
                pass
    elapsed = time.time() - started
    time.sleep(2)
    after = rss_kib(pid), gauges(http_port)
    print(f"sent {sent} datagrams from {nsockets} sockets in {elapsed:.1f} s")
    print(f"before: RSS {before[0][0] / 1024:.0f} MiB (peak {before[0][1] / 1024:.0f}), {before[1]}")
    print(f"after:  RSS {after[0][0] / 1024:.0f} MiB (peak {after[0][1] / 1024:.0f}), {after[1]}")


if __name__ == "__main__":
    main()
