#!/usr/bin/env python3
"""Captures the rule bytecode `nft` sends, as the reference of the encoder's tests.

Usage (as root; it makes and removes a network namespace):
    capture.py RULES.nft > rules.hex

RULES.nft holds one table (any family) whose chains' rules are to be captured. The table is
loaded with `nft --debug=mnl` inside a fresh namespace (with a veth pair eth0/eth1 and a
VXLAN device fh0, for rules naming devices); the netlink messages it prints are turned back
into bytes, and for every NEWRULE message the value of its NFTA_RULE_EXPRESSIONS attribute
(the expression list) is printed as one line of hex, in the order of the rules.
"""
import re, subprocess, sys

NS = "sipnft-capture"
ESC = re.compile(r"\x1b\[[0-9;]*m")

def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)

def capture(path):
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    run("ip", "netns", "add", NS)
    try:
        x = ["ip", "netns", "exec", NS]
        run(*x, "ip", "link", "add", "eth0", "type", "veth", "peer", "eth1")
        run(*x, "ip", "link", "add", "fh0", "type", "vxlan", "id", "1", "local", "2001:db8::1",
            "remote", "2001:db8::2", "dstport", "4790")
        out = subprocess.run(x + ["nft", "--debug=mnl", "-f", path], check=True,
                             capture_output=True, text=True)
        return out.stdout + out.stderr
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)

def messages(dump):
    msgs, cur = [], None
    for raw in dump.splitlines():
        line = ESC.sub("", raw)
        cells = [c.strip() for c in line.split("|")]
        if "message length" in line:
            cur = {"type": None, "body": bytearray()}
            msgs.append(cur)
        elif "type | flags" in line and cur is not None and cur["type"] is None:
            cur["type"] = int(cells[1])
        elif "extra header" in line or "|      data      |" in line:
            cur["body"] += bytes(int(b, 16) for b in cells[1].split())
        elif "|len |flags| type|" in line:
            length, flags, kind = int(cells[1]), cells[2], int(cells[3])
            if "N" in flags:
                kind |= 0x8000
            cur["body"] += length.to_bytes(2, "little") + kind.to_bytes(2, "little")
    return msgs

def attrs(buf):
    i = 0
    while i + 4 <= len(buf):
        length = int.from_bytes(buf[i:i + 2], "little")
        kind = int.from_bytes(buf[i + 2:i + 4], "little") & 0x7fff
        yield kind, buf[i + 4:i + length]
        i += (length + 3) & ~3

def main():
    for m in messages(capture(sys.argv[1])):
        if m["type"] == (10 << 8) | 6:
            for kind, value in attrs(bytes(m["body"][4:])):
                if kind == 4:
                    print(value.hex())

if __name__ == "__main__":
    main()
