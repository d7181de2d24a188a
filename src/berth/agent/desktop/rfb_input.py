"""Which bytes from a VNC viewer are a person's input (keys, pointer, clipboard) rather than the viewer's own
traffic (update requests, encodings, fences), so an open but unused desktop tab does not keep a session alive.

Reads the client side of RFB 3.8 after the handshake (RFC 6143 §7.5 and the common extensions noVNC sends).
An unknown message type stops the parsing, and from then on any byte counts as input: better kept alive
than stopped under someone typing.
"""

from __future__ import annotations

import struct

HANDSHAKE = 12 + 1 + 1  # ProtocolVersion, the chosen security type (None), ClientInit
INPUT_TYPES = {4, 5, 6}  # KeyEvent, PointerEvent, ClientCutText


def _length(buf: bytes | bytearray) -> int | None:
    """Length of the message at the start of `buf`, or None when more bytes are needed; -1 when unknown."""
    kind = buf[0]
    fixed = {0: 20, 3: 10, 4: 8, 5: 6, 150: 10, 250: 4}
    if kind in fixed:
        return fixed[kind]
    if kind == 2:  # SetEncodings: count at offset 2
        return None if len(buf) < 4 else 4 + 4 * struct.unpack_from("!H", buf, 2)[0]
    if kind == 6:  # ClientCutText: length at offset 4 (negative: extended clipboard, its absolute value)
        return None if len(buf) < 8 else 8 + abs(struct.unpack_from("!i", buf, 4)[0])
    if kind == 248:  # ClientFence: payload length at offset 8
        return None if len(buf) < 9 else 9 + buf[8]
    if kind == 251:  # SetDesktopSize: screen count at offset 6
        return None if len(buf) < 7 else 8 + 16 * buf[6]
    if kind == 255:  # QEMU: key event (subtype 0) is 12 bytes
        return None if len(buf) < 2 else (12 if buf[1] == 0 else -1)
    return -1


class RfbInputMeter:
    """Feed the viewer's bytes in order; ``feed`` says whether they carried input."""

    def __init__(self) -> None:
        self._skip = HANDSHAKE
        self._buf = bytearray()
        self._lost = False

    def feed(self, data: bytes) -> bool:
        if self._lost:
            return True
        if self._skip:
            taken = min(self._skip, len(data))
            self._skip -= taken
            data = data[taken:]
        self._buf += data
        found = False
        while self._buf:
            size = _length(self._buf)
            if size is None:
                break
            if size < 0:
                self._lost, self._buf = True, bytearray()
                return True
            if len(self._buf) < size:
                if self._buf[0] in INPUT_TYPES or (self._buf[0] == 255 and len(self._buf) > 1 and self._buf[1] == 0):
                    found = True  # a long paste arriving in pieces is input already
                break
            if self._buf[0] in INPUT_TYPES or self._buf[0] == 255:
                found = True
            del self._buf[:size]
        return found
