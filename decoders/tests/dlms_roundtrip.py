#!/usr/bin/env python3
"""Ciphered DLMS/COSEM pushes made by an independent implementation, for dlms_roundtrip.rs.

    python3 dlms_roundtrip.py SEED COUNT [--wide]

prints COUNT JSON lines, one push each (`--wide`: 64-bit values over their whole range).
Everything that is DLMS in them is made by Gurux's DLMS library for Python (PyPI
`gurux-dlms`, pinned in deploy/run-tests.sh; GPL-2.0, run as a test tool, nothing of it
copied into meterflow): the A-XDR encoding of the body (`_GXCommon.setData`), the OBIS
codes' bytes (`logicalNameToBytes`), the COSEM date-times, the DataNotification APDU, the
general-glo-ciphering around it (AES-GCM-128 with the library's own AES: security control
0x30, 0x20 or 0x10), general-block-transfer, the IEC 62056-4-7 wrapper and HDLC frames
(`GXDLMSNotify.generateDataNotificationMessages`). This script only draws the random
choices, writes down what it asked for, so that meterflow's decoder can be held to it, and
makes a push again when the library gets its block transfer wrong (count_blocks).

Each line:
  {"seq", "security": 48|32|16, "ek", "ak", "system_title", "invocation_counter",
   "long_invoke_id": its low 24 bits, "apdu_hex": the bare general-glo-ciphering APDU,
   "framing": "apdu"|"wrapper"|"hdlc"|"blocks", "payload_hex": the same push so framed
   (the same bytes as apdu_hex for "apdu"), "blocks": general-block-transfer blocks in
   it, "library_defects": block transfers of the library thrown away for this push,
   "shape": "nested"|"flat",
   "expect": [{"obis": "A.B.C.D.E.F", "type", "raw": decimal string, "scaler", "unit_code"}],
   "date_time": null or {"in": "notification"|"clock", "local": ISO text, "utc_ms",
   "deviation_known": bool}}
"expect" lists the numeric objects in body order; text objects (a serial number) and the
clock object are in the body too but are no readings. "date_time" is the time the readings
are stamped with (the notification's, else the clock object's), its utc_ms computed here
with Python's datetime, not by the library.
"""

import datetime
import json
import random
import sys

try:
    from gurux_dlms import (
        GXByteBuffer,
        GXDateTime,
        GXDLMSNotify,
        GXEnum,
        GXInt8,
        GXInt16,
        GXInt32,
        GXInt64,
        GXStructure,
        GXUInt8,
        GXUInt16,
        GXUInt32,
        GXUInt64,
    )
    from gurux_dlms.enums import (
        ClockStatus,
        Conformance,
        DataType,
        DateTimeSkips,
        InterfaceType,
        Security,
        Unit,
    )
    from gurux_dlms.GXCiphering import GXCiphering
    from gurux_dlms.internal._GXCommon import _GXCommon
except ImportError as e:  # the Rust test turns this into its failure message
    sys.stderr.write(
        f"gurux-dlms is not installed ({e}): python3 -m pip install 'gurux-dlms==1.0.203'\n"
    )
    sys.exit(3)

# The library's types, by the A-XDR type they encode as, with their ranges.
INTEGER_TYPES = {
    "int8": (GXInt8, -(2**7), 2**7 - 1),
    "uint8": (GXUInt8, 0, 2**8 - 1),
    "int16": (GXInt16, -(2**15), 2**15 - 1),
    "uint16": (GXUInt16, 0, 2**16 - 1),
    "int32": (GXInt32, -(2**31), 2**31 - 1),
    "uint32": (GXUInt32, 0, 2**32 - 1),
    "int64": (GXInt64, -(2**63), 2**63 - 1),
    "uint64": (GXUInt64, 0, 2**64 - 1),
}

# Realistic objects of electricity and gas pushes (Austrian/Kaifa, Sagemcom, IDIS): OBIS,
# unit (the library's unit enumeration) and the types meters send them as.
ENERGY = ["uint32", "uint32", "uint64", "int64"]
POWER = ["uint32", "int32", "uint16", "int16"]
VOLTAGE = ["uint16", "uint32", "uint8"]
CURRENT = ["uint16", "int16", "uint32", "int32"]
OBJECTS = [
    ("1.0.1.8.0.255", Unit.ACTIVE_ENERGY, ENERGY),  # A+ energy
    ("1.0.2.8.0.255", Unit.ACTIVE_ENERGY, ENERGY),  # A- energy
    ("1.0.1.8.1.255", Unit.ACTIVE_ENERGY, ENERGY),  # A+ tariff 1
    ("1.0.1.8.2.255", Unit.ACTIVE_ENERGY, ENERGY),  # A+ tariff 2
    ("1.0.1.8.0.101", Unit.ACTIVE_ENERGY, ENERGY),  # A+ at the last billing (F = 101)
    ("1.0.3.8.0.255", Unit.REACTIVE_ENERGY, ENERGY),  # R+ energy
    ("1.0.4.8.0.255", Unit.REACTIVE_ENERGY, ENERGY),  # R- energy
    ("1.0.1.7.0.255", Unit.ACTIVE_POWER, POWER),  # P+
    ("1.0.2.7.0.255", Unit.ACTIVE_POWER, POWER),  # P-
    ("1.0.16.7.0.255", Unit.ACTIVE_POWER, ["int32", "int16"]),  # net power, signed
    ("1.0.3.7.0.255", Unit.REACTIVE_POWER, POWER),  # Q+
    ("1.0.9.7.0.255", Unit.APPARENT_POWER, POWER),  # S+
    ("1.0.32.7.0.255", Unit.VOLTAGE, VOLTAGE),  # L1 voltage
    ("1.0.52.7.0.255", Unit.VOLTAGE, VOLTAGE),  # L2 voltage
    ("1.0.72.7.0.255", Unit.VOLTAGE, VOLTAGE),  # L3 voltage
    ("1.0.31.7.0.255", Unit.CURRENT, CURRENT),  # L1 current
    ("1.0.51.7.0.255", Unit.CURRENT, CURRENT),  # L2 current
    ("1.0.71.7.0.255", Unit.CURRENT, CURRENT),  # L3 current
    ("1.0.14.7.0.255", Unit.FREQUENCY, ["uint16", "uint32"]),  # frequency
    ("1.0.13.7.0.255", 255, ["int16", "int8", "uint8"]),  # power factor: a count, no unit
    ("0.1.24.2.1.255", Unit.VOLUME_CUBIC_METER, ["uint32", "uint64", "int32"]),  # gas
    ("0.2.24.2.1.255", Unit.CORRECTED_VOLUME, ["uint32", "uint64"]),  # gas, corrected
]
SERIAL = "0.0.96.1.0.255"
CLOCK = "0.0.1.0.0.255"
# Offsets to UTC that meters run at, in minutes (UTC+1, +2, +3, +5:30, +5:45, -3:30, ...).
OFFSETS = [0, 60, 120, 180, 240, 300, 330, 345, 480, 540, 600, 780, 840, -60, -180, -210,
           -240, -300, -420, -600, -720]
# 64-bit values of this magnitude and less are exact doubles, and what meters count
# (2^53 Wh is 9 PWh). `--wide` draws them from the whole 64-bit range: then raw × 10^scaler
# is the closest double to the decimal only if it is not computed from the raw value
# rounded to a double first (see the ignored test in dlms_roundtrip.rs).
EXACT = 2**53


def raw_value(rng, type_name):
    _, lo, hi = INTEGER_TYPES[type_name]
    lo, hi = max(lo, -EXACT), min(hi, EXACT)
    r = rng.random()
    if r < 0.1:
        return rng.choice([lo, hi, 0, 1, -1 if lo < 0 else 2])
    if r < 0.5:
        # Meter-sized numbers: small counts, voltages in 0.1 V, energies in Wh.
        return rng.randint(max(lo, -99999), min(hi, 99_999_999))
    return rng.randint(lo, hi)


def random_time(rng):
    """An aware local date-time with hundredths, and the UTC ms it stands for."""
    utc_s = rng.randint(946_684_800, 2_082_758_399)  # 2000-01-01 .. 2035-12-31 UTC
    hundredths = rng.randint(0, 99)
    offset = rng.choice(OFFSETS)
    tz = datetime.timezone(datetime.timedelta(minutes=offset))
    local = datetime.datetime.fromtimestamp(utc_s, tz).replace(microsecond=hundredths * 10_000)
    gx = GXDateTime(local)
    gx.status = rng.choice([ClockStatus.OK, ClockStatus.DAYLIGHT_SAVE_ACTIVE])
    known = rng.random() >= 0.1
    if known:
        utc_ms = utc_s * 1000 + hundredths * 10
    else:
        # Deviation "not specified" (0x8000): the local time is all a receiver has.
        gx.skip |= DateTimeSkips.DEVITATION
        naive = local.replace(tzinfo=datetime.timezone.utc)
        utc_ms = (
            int((naive - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc))
                .total_seconds()) * 1000
            + hundredths * 10
        )
    return gx, {"local": local.isoformat(), "utc_ms": utc_ms, "deviation_known": known}


def obis_bytes(obis):
    return _GXCommon.logicalNameToBytes(obis)


def notify(settings, interface, max_pdu=None):
    """A Gurux notifier of these settings: keys, title, counter, invoke id."""
    n = GXDLMSNotify(True, settings["client"], settings["server"], interface)
    c = GXCiphering(settings["system_title"])
    c.security = settings["security"]
    c.blockCipherKey = settings["ek"]
    c.authenticationKey = settings["ak"]
    c.invocationCounter = settings["ic"]
    n.setCipher(c)
    n.settings.setLongInvokeID(settings["invoke_id"])
    if max_pdu is not None:
        n.conformance = n.conformance | Conformance.GENERAL_BLOCK_TRANSFER
        n.maxReceivePDUSize = max_pdu
    if interface == InterfaceType.HDLC:
        n.hdlcSettings.maxInfoTX = settings["hdlc_max_info"]
        # Segmented frames: Gurux refuses more than one message unless block transfer is
        # negotiated; with a PDU size larger than the APDU it makes no blocks.
        n.conformance = n.conformance | Conformance.GENERAL_BLOCK_TRANSFER
    return n


def check_hdlc(payload):
    """Fails when the library's HDLC frames are not what their format fields say (a Gurux
    defect the frame sizes chosen above keep clear of: a new one must be looked at)."""
    i = 0
    while i < len(payload):
        length = int.from_bytes(payload[i + 1:i + 3], "big") & 0x7FF
        end = i + length + 1
        if payload[i] != 0x7E or end >= len(payload) or payload[end] != 0x7E:
            raise SystemExit(f"Gurux made an HDLC frame whose length is wrong: {payload.hex()}")
        i += length + 2


def count_blocks(payload, apdu):
    """The general-block-transfer blocks of the library's payload: 0 when it sent the APDU
    whole, None when its blocks are not a block transfer of that APDU.

    Gurux 1.0.203 has two defects here, and a push that shows one is made again with
    another PDU size: (1) the last block lacks the last-block bit (0x80) when what is left
    fits a block but not with the ciphering header's size added (its lastBlock test counts
    that header for every block); (2) an APDU a few bytes shorter than the PDU size comes
    out as a piece of it followed by a second ciphered APDU, no block transfer at all."""
    if payload == apdu:
        return 0
    i, joined, number = 0, b"", 0
    while i < len(payload):
        if payload[i] != 0xE0 or i + 7 > len(payload):
            return None
        control = payload[i + 1]
        if int.from_bytes(payload[i + 2:i + 4], "big") != number + 1:
            return None
        number += 1
        length, j = payload[i + 6], i + 7
        if length == 0x81:
            length, j = payload[j], j + 1
        elif length == 0x82:
            length, j = int.from_bytes(payload[j:j + 2], "big"), j + 2
        joined += payload[j:j + length]
        i = j + length
        if (control & 0x80 != 0) != (i >= len(payload)):
            return None
    return number if joined == apdu else None


def body(rng, shape, n_objects, serial, clock):
    """The library's A-XDR of the body, and the objects that are readings, in order."""
    elements = []  # (obis, value, scaler-unit structure or None)
    expect = []
    chosen = rng.sample(OBJECTS, n_objects)
    for (obis, unit, types) in chosen:
        t = rng.choice(types) if rng.random() < 0.8 else rng.choice(list(INTEGER_TYPES))
        raw = raw_value(rng, t)
        scaler = rng.randint(-3, 3)
        su = GXStructure()
        su.append(GXInt8(scaler))
        su.append(GXEnum(int(unit)))
        elements.append((obis, INTEGER_TYPES[t][0](raw), su))
        expect.append({"obis": obis, "type": t, "raw": str(raw), "scaler": scaler,
                       "unit_code": int(unit)})
    if serial is not None:
        elements.insert(rng.randint(0, len(elements)), (SERIAL, serial.encode(), None))
    if clock is not None:
        elements.insert(0, (CLOCK, clock, None))
    top = GXStructure()
    for obis, value, su in elements:
        if shape == "nested":
            s = GXStructure()
            s.append(obis_bytes(obis))
            s.append(value)
            if su is not None:
                s.append(su)
            top.append(s)
        else:
            top.append(obis_bytes(obis))
            top.append(value)
            if su is not None:
                top.append(su)
    # Order the readings as the body has them (the serial and clock are none).
    order = [e[0] for e in elements if e[0] not in (SERIAL, CLOCK)]
    expect.sort(key=lambda e: order.index(e["obis"]))
    buff = GXByteBuffer()
    probe = GXDLMSNotify(True, 1, 1, InterfaceType.PDU)
    _GXCommon.setData(probe.settings, buff, DataType.STRUCTURE, top)
    return buff, expect


def one(rng, seq):
    security = rng.choice([Security.AUTHENTICATION_ENCRYPTION] * 2
                          + [Security.ENCRYPTION, Security.AUTHENTICATION])
    ic = rng.choice([0, 1, 0xFFFFFFFF]) if rng.random() < 0.05 else rng.randint(0, 0xFFFFFFFF)
    settings = {
        "security": security,
        "ek": rng.randbytes(16),
        "ak": rng.randbytes(16),
        "system_title": rng.randbytes(8),
        "ic": ic,
        "invoke_id": rng.randint(0, 0xFFFFFF),
        "client": rng.choice([1, 16, 0x66]),
        # HDLC server addresses of 1, 2 and 4 bytes.
        "server": rng.choice([1, 16, 0x11, 0x1001, 0x45011]),
        # Gurux 1.0.203 writes the high bits of an HDLC frame's length without its 7 bytes
        # of format, control and checksums: a frame of 256 to 262 bytes gets a length 256
        # short (see check_hdlc). These sizes keep every frame under 256 bytes.
        "hdlc_max_info": rng.choice([32, 64, 128, 200, 240]),
    }
    shape = rng.choice(["nested", "flat"])
    n_objects = rng.randint(5, 15)
    serial = None
    if rng.random() < 0.5:
        serial = "".join(rng.choice("0123456789") for _ in range(rng.choice([8, 14, 16])))
    header_time = random_time(rng) if rng.random() < 0.6 else None
    clock_time = random_time(rng) if rng.random() < 0.5 else None
    data, expect = body(rng, shape, n_objects, serial,
                        clock_time[0] if clock_time else None)
    stamp = None
    if header_time is not None:
        stamp = dict(header_time[1], **{"in": "notification"})
    elif clock_time is not None:
        stamp = dict(clock_time[1], **{"in": "clock"})

    def generate(interface, max_pdu=None):
        n = notify(settings, interface, max_pdu)
        # A fresh buffer each time: with block transfer negotiated, Gurux overwrites the
        # body's buffer with the ciphered APDU.
        msgs = n.generateDataNotificationMessages(
            header_time[0] if header_time else None, GXByteBuffer(bytes(data.array())))
        return b"".join(bytes(m) for m in msgs)

    apdu = generate(InterfaceType.PDU)
    framing = rng.choice(["apdu", "wrapper", "hdlc", "blocks"])
    blocks = 0
    library_defects = 0
    if framing == "apdu":
        payload = apdu
    elif framing == "wrapper":
        payload = generate(InterfaceType.WRAPPER)
    elif framing == "hdlc":
        payload = generate(InterfaceType.HDLC)
        check_hdlc(payload)
    else:
        sizes = [64, 100, 128, 160, 200, 256, 512]
        rng.shuffle(sizes)
        for size in sizes:
            payload = generate(InterfaceType.PDU, max_pdu=size)
            blocks = count_blocks(payload, apdu)
            if blocks is not None:
                break
            library_defects += 1
        else:
            raise SystemExit(f"push {seq}: Gurux made no well-formed block transfer")
    return {
        "seq": seq,
        "security": int(security),
        "ek": settings["ek"].hex(),
        "ak": settings["ak"].hex(),
        "system_title": settings["system_title"].hex(),
        "invocation_counter": ic,
        "long_invoke_id": settings["invoke_id"],
        "apdu_hex": apdu.hex(),
        "framing": framing,
        "payload_hex": payload.hex(),
        "blocks": blocks,
        "library_defects": library_defects,
        "shape": shape,
        "expect": expect,
        "date_time": stamp,
    }


def main():
    global EXACT
    args = sys.argv[1:]
    if args[2:] == ["--wide"]:
        EXACT = 2**64
        args = args[:2]
    if len(args) != 2:
        sys.stderr.write(__doc__)
        sys.exit(2)
    seed, count = int(args[0]), int(args[1])
    rng = random.Random(seed)
    out = sys.stdout
    for seq in range(count):
        out.write(json.dumps(one(rng, seq)) + "\n")


if __name__ == "__main__":
    main()
