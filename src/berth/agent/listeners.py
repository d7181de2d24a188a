"""Who owns the TCP sockets listening on a port, asked of the kernel through sock_diag netlink.

The gateway's tunnel checks this before each stream to a port that the session user's own programs serve
(another user could have bound it first). Only listening sockets are dumped, so the answer costs about the
same however many connections the worker holds; /proc/net/tcp would list every socket, TIME_WAIT included.
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
TCP_LISTEN = 10
_NLMSG = struct.Struct("=IHHII")
_REQUEST = struct.Struct("=BBBBI48s")     # inet_diag_req_v2: family, protocol, ext, pad, states, sockid
_SPORT = struct.Struct("!H")              # inet_diag_msg: sockid.sport at offset 4, big-endian
_UID = struct.Struct("=I")                # inet_diag_msg.idiag_uid at offset 64


def listener_uids(port: int) -> set[int]:
    """Owners of the sockets listening on `port` (any address, IPv4 or IPv6)."""
    try:
        return _netlink_listeners(port)
    except OSError:  # no sock_diag (an old or restricted kernel): the slower full table
        return _proc_listeners(port)


def _netlink_listeners(port: int) -> set[int]:
    owners: set[int] = set()
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
        sock.settimeout(2)
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), 1):
            body = _REQUEST.pack(family, socket.IPPROTO_TCP, 0, 0, 1 << TCP_LISTEN, b"\0" * 48)
            sock.send(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body)
            done = False
            while not done:
                data = sock.recv(65536)
                offset = 0
                while offset + _NLMSG.size <= len(data):
                    length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
                    if length < _NLMSG.size:
                        return owners
                    if kind == NLMSG_DONE:
                        done = True
                        break
                    if kind == NLMSG_ERROR:
                        raise OSError("sock_diag refused the request")
                    msg = offset + _NLMSG.size
                    if _SPORT.unpack_from(data, msg + 4)[0] == port:
                        owners.add(_UID.unpack_from(data, msg + 64)[0])
                    offset += (length + 3) & ~3
    return owners


def _proc_listeners(port: int) -> set[int]:
    owners = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            # local address is HEXIP:HEXPORT; state 0A is LISTEN; field 7 is the owner's uid
            if len(fields) > 7 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                owners.add(int(fields[7]))
    return owners
