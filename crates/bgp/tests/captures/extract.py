#!/usr/bin/env python3
"""Split the BGP byte streams of a pcap (Ethernet/IPv6/TCP) into messages and write
one hex file per direction: <speaker>.hex with one message per line, in order."""
import struct
import sys

SPEAKERS = {"2001:db8:1::1": "bird", "2001:db8:1::2": "gobgp"}


def v6(b):
    import ipaddress
    return str(ipaddress.IPv6Address(b))


def packets(path):
    data = open(path, "rb").read()
    magic = struct.unpack("<I", data[:4])[0]
    endian = "<" if magic in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        _, _, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        yield linktype, data[off:off + incl]
        off += incl


def main(pcap, outdir):
    streams = {}
    for linktype, pkt in packets(pcap):
        if linktype == 1:
            if struct.unpack(">H", pkt[12:14])[0] != 0x86DD:
                continue
            ip = pkt[14:]
        elif linktype == 113:  # Linux cooked capture
            ip = pkt[16:]
        else:
            raise SystemExit(f"unsupported link type {linktype}")
        if ip[6] != 6:  # next header TCP only (no extension headers here)
            continue
        src = v6(ip[8:24])
        tcp = ip[40:]
        seq = struct.unpack(">I", tcp[4:8])[0]
        payload = tcp[(tcp[12] >> 4) * 4:]
        if payload:
            streams.setdefault(src, {})[seq] = payload
    for src, segs in streams.items():
        stream = b""
        for seq in sorted(segs):  # fine for a short capture: no wrap-around
            stream += segs[seq]
        msgs = []
        while len(stream) >= 19:
            length = struct.unpack(">H", stream[16:18])[0]
            msgs.append(stream[:length])
            stream = stream[length:]
        name = SPEAKERS.get(src, src.replace(":", "_"))
        with open(f"{outdir}/{name}.hex", "w") as f:
            for m in msgs:
                f.write(m.hex() + "\n")
        print(f"{name}: {len(msgs)} messages")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
