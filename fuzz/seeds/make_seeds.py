#!/usr/bin/env python3
"""Writes the hand-made seed inputs of fuzz/seeds/ (run once; the files are committed):
protobuf and CBOR reports, CoAP datagrams, MQTT connections and a WAL segment, each in the
framing its fuzz target expects."""
import os, struct, zlib

here = os.path.dirname(os.path.abspath(__file__))

def put(target, name, data):
    d = os.path.join(here, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

# --- protobuf MeterReport ---
def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload
def s(num, text): return field(num, 2, text.encode())
def zigzag(n): return (n << 1) ^ (n >> 63)
reading = s(1, "1-0:1.8.0") + field(2, 0, varint(1719792000000)) + field(3, 1, struct.pack("<d", 1234.5)) + s(4, "kWh")
series = (s(1, "1-0:1.29.0") + field(2, 0, varint(1719792000000)) + field(3, 0, varint(900)) + s(4, "kWh")
          + field(5, 2, b"".join(struct.pack("<d", v) for v in (0.1, 0.2, 0.3))))
status = field(1, 0, varint(87)) + field(2, 0, varint(zigzag(-71))) + s(5, "4.2.17")
put("decode_pb", "report.pb", s(1, "E1") + field(2, 0, varint(3)) + field(3, 2, reading) + field(4, 2, series) + field(5, 2, status))

# --- JSON and CBOR reports ---
json_report = b'''{"meter_id":"E1","seq":3,"readings":[{"channel":"1-0:1.8.1","ts":"2024-03-01T00:15:00Z","value":1234.5,"unit":"kWh"},{"channel":"1-0:1.8.2","ts":1709252100000,"value":99.25,"unit":"kWh","quality":1}],"series":[{"channel":"1-0:1.29.0","start":"2024-03-01T00:00:00+01:00","interval_s":900,"unit":"kWh","values":[0.1,0.2]}],"status":{"battery_pct":87,"rssi_dbm":-71,"firmware":"4.2.17"}}'''
put("decode_json", "report.json", json_report)
put("decode_json", "status.json", b'{"battery_pct":41,"rsrp_dbm":-100,"snr_db":3.5,"error_flags":4}')
def cbor_head(major, n):
    if n < 24: return bytes([(major << 5) | n])
    if n < 256: return bytes([(major << 5) | 24, n])
    if n < 65536: return bytes([(major << 5) | 25]) + struct.pack(">H", n)
    if n < 2**32: return bytes([(major << 5) | 26]) + struct.pack(">I", n)
    return bytes([(major << 5) | 27]) + struct.pack(">Q", n)
def cbor(v):
    if isinstance(v, bool): return b"\xf5" if v else b"\xf4"
    if isinstance(v, int): return cbor_head(0, v) if v >= 0 else cbor_head(1, -1 - v)
    if isinstance(v, float): return b"\xfb" + struct.pack(">d", v)
    if isinstance(v, str): b = v.encode(); return cbor_head(3, len(b)) + b
    if isinstance(v, list): return cbor_head(4, len(v)) + b"".join(cbor(x) for x in v)
    if isinstance(v, dict): return cbor_head(5, len(v)) + b"".join(cbor(k) + cbor(x) for k, x in v.items())
    raise TypeError(v)
put("decode_cbor", "report.cbor", cbor({"meter_id": "E1", "seq": 3,
    "readings": [{"channel": "1-0:1.8.0", "ts": 1719792000000, "value": 1234.5, "unit": "kWh"}],
    "series": [{"channel": "1-0:1.29.0", "start": 1719792000000, "interval_s": 900, "unit": "kWh", "values": [0.1, 0.2]}],
    "status": {"battery_pct": 87}}))
# ts as tag 1 (epoch seconds) and tag 0 (RFC 3339 text)
put("decode_cbor", "tagged.cbor", cbor_head(5, 1) + cbor("readings") + cbor_head(4, 2)
    + cbor_head(5, 4) + cbor("channel") + cbor("1-0:1.8.0") + cbor("ts") + cbor_head(6, 1) + cbor(1719792000)
    + cbor("value") + cbor(1.5) + cbor("unit") + cbor("kWh")
    + cbor_head(5, 4) + cbor("channel") + cbor("1-0:1.8.0") + cbor("ts") + cbor_head(6, 0) + cbor("2024-07-01T00:15:00Z")
    + cbor("value") + cbor(1.75) + cbor("unit") + cbor("kWh"))

# --- CoAP datagrams, each [u16 LE length][bytes] ---
def coap(mtype, code, mid, token, options, payload=b""):
    out = bytes([0x40 | (mtype << 4) | len(token), code]) + struct.pack(">H", mid) + token
    last = 0
    for num, val in sorted(options, key=lambda o: o[0]):
        delta, length = num - last, len(val)
        def nib(x):
            if x < 13: return x, b""
            if x < 269: return 13, bytes([x - 13])
            return 14, struct.pack(">H", x - 269)
        d, dext = nib(delta); l, lext = nib(length)
        out += bytes([(d << 4) | l]) + dext + lext + val
        last = num
    if payload:
        out += b"\xff" + payload
    return out
def framed(*datagrams): return b"".join(struct.pack("<H", len(d)) + d for d in datagrams)
POST, GET, DELETE = 2, 1, 4
uri = lambda *parts: [(11, p.encode()) for p in parts]
cf = lambda n: (12, bytes([n]) if n < 256 else struct.pack(">H", n))
report = coap(0, POST, 1, b"\x01\x02", uri("r", "E1") + [cf(50)], json_report)
put("coap_datagram", "post_json.bin", framed(report, report, coap(0, GET, 2, b"", uri(".well-known", "core"))))
block = lambda num, more, szx: (27, bytes([(num << 4) | (more << 3) | szx]))
body = json_report
put("coap_datagram", "block1.bin", framed(
    coap(0, POST, 10, b"\x07", uri("r", "E2") + [cf(50), block(0, 1, 2)], body[:64]),
    coap(0, POST, 11, b"\x07", uri("r", "E2") + [block(1, 1, 2)], body[64:128]),
    coap(0, POST, 12, b"\x07", uri("r", "E2") + [block(2, 0, 2)], body[128:192])))
put("coap_datagram", "lwm2m.bin", framed(
    coap(0, POST, 20, b"\x09", uri("rd") + [cf(40), (15, b"ep=urn:imei:490154203237518"), (15, b"lt=300"), (15, b"lwm2m=1.1")], b"</1/0>,</3/0>"),
    coap(0, POST, 21, b"\x09", uri("rd", "1")),
    coap(0, POST, 22, b"\x0a", uri("dp") + [cf(110)], b'[{"bn":"/3/0/","n":"9","v":77}]'),
    coap(0, DELETE, 23, b"\x0b", uri("rd", "1")),
    coap(0, 0, 24, b"", [])))

# --- MQTT connections: [choice byte][client bytes] ---
def mqtt_str(t): b = t.encode(); return struct.pack(">H", len(b)) + b
def remaining(n):
    out = b""
    while True:
        b = n % 128; n //= 128
        out += bytes([b | (0x80 if n else 0)])
        if not n: return out
def packet(first, body): return bytes([first]) + remaining(len(body)) + body
def connect(level, client_id, user=None, password=None, props=b""):
    flags = 0x02 | (0x80 if user else 0) | (0x40 if password else 0)
    body = mqtt_str("MQTT") + bytes([level, flags]) + struct.pack(">H", 30)
    if level == 5: body += remaining(len(props)) + props
    body += mqtt_str(client_id)
    if user: body += mqtt_str(user)
    if password: body += mqtt_str(password)
    return packet(0x10, body)
def publish(level, qos, pkid, topic, payload, props=b""):
    body = mqtt_str(topic) + (struct.pack(">H", pkid) if qos else b"")
    if level == 5: body += remaining(len(props)) + props
    return packet(0x30 | (qos << 1), body + payload)
for level in (4, 5):
    stream = (connect(level, "E1", "E1", "a-secret-of-16-chars")
              + publish(level, 1, 1, "meters/E1/json", json_report)
              + publish(level, 2, 2, "meters/E1/json", json_report)
              + packet(0x62, struct.pack(">H", 2) + (b"" if level == 4 else b""))
              + publish(level, 1, 3, "meters/E2/json", b"{}")
              + publish(level, 0, 0, "meters/E1/status", b'{"battery_pct":5}')
              + packet(0x82, struct.pack(">H", 4) + (b"\x00" if level == 5 else b"") + mqtt_str("meters/E1/cmd/#") + b"\x01")
              + packet(0xC0, b"") + packet(0xE0, b""))
    for choice in (1, 2, 6):
        put("mqtt_connection", f"v{level}_choice{choice}.bin", bytes([choice]) + stream)
content_type = b"\x03" + mqtt_str("application/json")
put("mqtt_connection", "v5_content_type.bin", bytes([0]) + connect(5, "", None, None, b"\x11\x00\x00\x0e\x10")
    + publish(5, 1, 9, "meters/E9/pb", b"{}", content_type))

# --- a WAL segment: [u32 len][u32 crc][body] records ---
def wal_record(lsn, topic, payload, content_type=b"", refused=None):
    source = 0 | (0x80 if refused is not None else 0)
    body = (struct.pack("<Qq", lsn, 1719792000000) + bytes([source]) + struct.pack("<H", len(topic)) + topic
            + struct.pack("<H", len(content_type)) + content_type)
    if refused is not None:
        body += struct.pack("<H", len(refused)) + refused
    body += payload
    return struct.pack("<II", len(body), zlib.crc32(body) & 0xFFFFFFFF) + body
segment = (wal_record(1, b"meters/E1/json", json_report, b"application/json")
           + wal_record(2, b"meters/E2/json", b"{}", refused=b'{"identity":"E1","peer":"10.0.0.1:1","reason":"not yours"}')
           + wal_record(3, b"meters/E1/status", b'{"battery_pct":5}'))
put("wal_segment", "three_records.wal", segment)
put("wal_segment", "torn_tail.wal", segment + wal_record(4, b"meters/E1/json", b"{}")[:11])
