#!/usr/bin/env python3
"""Captures the kernel's answers to the own-flows dumps, as the reference of their decoders.

Usage (as root; it makes and removes a network namespace):
    capture.py OUTDIR    (node-agent/src/flow_handover/own_flows/testdata)

In a fresh namespace, with 192.0.2.10 and 2001:db8:5::10 (the shared addresses) and
198.51.100.66, 198.51.100.67 and 2001:db8:6::66 (clients, another server) on `lo`, and an
nft `ct state` rule so that conntrack tracks the namespace's traffic, it opens:

    198.51.100.66:40001 -> 192.0.2.10:8000      TCP, listener on 192.0.2.10:8000
    198.51.100.66:40002 -> 192.0.2.10:8000      TCP, same listener
    198.51.100.66:40003 -> 198.51.100.67:9000   TCP, another address
    198.51.100.66:40004 -> 192.0.2.10:8001      TCP, dual-stack listener on [::]:8001
                                                (the accepted socket is IPv6, v4-mapped)
    [2001:db8:6::66]:40005 -> [2001:db8:5::10]:8000   TCP
    198.51.100.66:40006 -> 192.0.2.10:53        UDP (conntrack only)

and writes, for each dump, one file of hex lines: the request it sent first, then every
datagram the kernel answered, in order, up to and including the one with NLMSG_DONE:

    sock_diag_v4.hex, sock_diag_v6.hex     NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY,
                                           all TCP states but LISTEN and CLOSE
    conntrack_v4.hex, conntrack_v6.hex     NETLINK_NETFILTER, IPCTNL_MSG_CT_GET dump

The requests are built here independently of the agent's encoder, which the tests compare
with them.
"""
import os, socket, struct, subprocess, sys, time

NS = "sipflows-capture"
NLM_F_REQUEST_DUMP = 0x301
NLMSG_DONE, NLMSG_ERROR = 3, 2
SOCK_DIAG_BY_FAMILY = 20
TCP_STATES = 0x1ffe & ~(1 << 7) & ~(1 << 10)  # ESTABLISHED..NEW_SYN_RECV but CLOSE, LISTEN
CT_GET = (1 << 8) | 1  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_GET

def sh(*args):
    subprocess.run(args, check=True)

def sock_diag_request(family):
    body = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, TCP_STATES) + bytes(48)
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST_DUMP, 1, 0) + body

def conntrack_request(family):
    body = struct.pack("=BBH", family, 0, 0)
    return struct.pack("=IHHII", 16 + len(body), CT_GET, NLM_F_REQUEST_DUMP, 1, 0) + body

def dump(protocol, request):
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
    s.bind((0, 0))
    s.settimeout(5)
    s.send(request)
    datagrams = []
    while True:
        d = s.recv(1 << 20)
        datagrams.append(d)
        kinds, i = [], 0
        while i + 16 <= len(d):
            length, kind = struct.unpack_from("=IH", d, i)
            kinds.append(kind)
            i += (length + 3) & ~3
        if NLMSG_DONE in kinds or NLMSG_ERROR in kinds:
            return datagrams

def inside(outdir):
    v4, v6 = socket.AF_INET, socket.AF_INET6
    keep = []

    def listen(family, addr, port):
        s = socket.socket(family, socket.SOCK_STREAM)
        if family == v6 and addr == "::":
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind((addr, port))
        s.listen()
        keep.append(s)
        return s

    def connect(family, src, sport, dst, dport, listener):
        c = socket.socket(family, socket.SOCK_STREAM)
        c.bind((src, sport))
        c.connect((dst, dport))
        keep.append(c)
        keep.append(listener.accept()[0])

    l4 = listen(v4, "192.0.2.10", 8000)
    other = listen(v4, "198.51.100.67", 9000)
    dual = listen(v6, "::", 8001)
    l6 = listen(v6, "2001:db8:5::10", 8000)
    connect(v4, "198.51.100.66", 40001, "192.0.2.10", 8000, l4)
    connect(v4, "198.51.100.66", 40002, "192.0.2.10", 8000, l4)
    connect(v4, "198.51.100.66", 40003, "198.51.100.67", 9000, other)
    connect(v4, "198.51.100.66", 40004, "192.0.2.10", 8001, dual)
    connect(v6, "2001:db8:6::66", 40005, "2001:db8:5::10", 8000, l6)
    u = socket.socket(v4, socket.SOCK_DGRAM)
    u.bind(("198.51.100.66", 40006))
    u.sendto(b"x", ("192.0.2.10", 53))
    keep.append(u)
    time.sleep(0.2)

    for name, protocol, request in [
        ("sock_diag_v4", 4, sock_diag_request(v4)),
        ("sock_diag_v6", 4, sock_diag_request(v6)),
        ("conntrack_v4", 12, conntrack_request(v4)),
        ("conntrack_v6", 12, conntrack_request(v6)),
    ]:
        with open(os.path.join(outdir, name + ".hex"), "w") as f:
            f.write(request.hex() + "\n")
            for d in dump(protocol, request):
                f.write(d.hex() + "\n")

def main():
    if sys.argv[1] == "--inside":
        return inside(sys.argv[2])
    outdir = os.path.abspath(sys.argv[1])
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    sh("ip", "netns", "add", NS)
    try:
        x = ["ip", "netns", "exec", NS]
        sh(*x, "ip", "link", "set", "lo", "up")
        sh(*x, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
        for a in ["192.0.2.10/32", "198.51.100.66/32", "198.51.100.67/32",
                  "2001:db8:5::10/128", "2001:db8:6::66/128"]:
            sh(*x, "ip", "addr", "add", a, "dev", "lo")
        sh(*x, "nft", "add table inet t; add chain inet t c { type filter hook output "
           "priority 0; }; add rule inet t c ct state new counter")
        sh(*x, sys.executable, os.path.abspath(__file__), "--inside", outdir)
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)

if __name__ == "__main__":
    main()
