# The fake internet's DNS server, one for the domain tests (Tests/net/fake-web.py) and the egress
# benchmark (Benchmarks/net-egress.py): an A answer (TTL 60) for each name `resolve` knows,
# NOERROR without an answer for its other question types, NXDOMAIN for every other name. A
# question it cannot parse gets no reply.
import socket, struct

def reply(query, resolve, note=None):
    """The reply to one query, or None; resolve(name) gives an IPv4 address or None."""
    try:
        i, labels = 12, []
        while query[i]:
            labels.append(query[i + 1:i + 1 + query[i]].decode().lower())
            i += 1 + query[i]
        qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
    except (IndexError, struct.error, UnicodeDecodeError):
        return None
    name = ".".join(labels)
    if note:
        note(name, qtype)
    address = resolve(name)
    answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton(address) if address and qtype == 1 else b""
    header = query[:2] + struct.pack(">HHHHH", 0x8180 if address else 0x8183, 1, 1 if answer else 0, 0, 0)
    return header + query[12:i + 5] + answer

def serve(sock, resolve, note=None):
    """Answers the questions that reach the UDP socket `sock`, for ever."""
    while True:
        query, peer = sock.recvfrom(4096)
        r = reply(query, resolve, note)
        if r:
            sock.sendto(r, peer)
