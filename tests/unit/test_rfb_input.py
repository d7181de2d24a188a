"""Which bytes from a VNC viewer are a person's input (berth.agent.desktop.rfb_input), and the idle rules naming
that input (berth.agent.monitor input stamp, berth.agent.idle)."""

from __future__ import annotations

import struct
import time

from berth.agent.desktop.rfb_input import RfbInputMeter
from berth.agent.idle import IdleTracker
from berth.agent.monitor import SessionSampler
from berth.agent.session_services import touch_input
from berth.metrics import MetricSample

HANDSHAKE = b"RFB 003.008\n" + b"\x01" + b"\x01"  # version, security None, ClientInit (shared)
KEY = struct.pack("!BBxxI", 4, 1, 0x61)                 # KeyEvent down 'a'
POINTER = struct.pack("!BBHH", 5, 1, 10, 20)            # PointerEvent, button 1
UPDATE = struct.pack("!BBHHHH", 3, 1, 0, 0, 1280, 800)  # FramebufferUpdateRequest
ENCODINGS = struct.pack("!BxH", 2, 3) + struct.pack("!iii", 0, 7, -223)
PIXEL_FORMAT = b"\x00" + bytes(3) + bytes(16)
FENCE = struct.pack("!BxxxIB", 248, 0, 4) + b"abcd"
DESKTOP_SIZE = struct.pack("!BxHHBx", 251, 1920, 1080, 1) + struct.pack("!IHHHHI", 0, 0, 0, 1920, 1080, 0)


def cut_text(text: bytes) -> bytes:
    return struct.pack("!Bxxxi", 6, len(text)) + text


def meter() -> RfbInputMeter:
    m = RfbInputMeter()
    assert m.feed(HANDSHAKE) is False
    return m


def test_the_handshake_is_not_input_even_when_it_looks_like_a_key():
    m = RfbInputMeter()
    assert m.feed(b"RFB 003.008\n") is False
    assert m.feed(b"\x01") is False  # security type 1 (None)
    assert m.feed(b"\x04") is False  # ClientInit "shared" byte 4: still the handshake, not a KeyEvent
    assert m.feed(UPDATE) is False


def test_handshake_and_first_message_in_one_chunk():
    assert RfbInputMeter().feed(HANDSHAKE + KEY) is True
    assert RfbInputMeter().feed(HANDSHAKE + UPDATE) is False


def test_keys_pointer_and_clipboard_are_input():
    m = meter()
    assert m.feed(KEY) is True
    assert m.feed(POINTER) is True
    assert m.feed(cut_text(b"pasted")) is True
    assert m.feed(struct.pack("!BBHI", 255, 0, 1, 0x61) + bytes(4)) is True  # QEMU extended key event


def test_viewer_traffic_is_not_input():
    m = meter()
    for message in (UPDATE, ENCODINGS, PIXEL_FORMAT, FENCE, DESKTOP_SIZE,
                    struct.pack("!BBHI", 150, 1, 0, 0) + bytes(2)):  # EnableContinuousUpdates
        assert m.feed(message) is False, message[0]
    assert m.feed(UPDATE * 5 + ENCODINGS + FENCE) is False


def test_messages_split_anywhere():
    m = meter()
    stream = UPDATE + ENCODINGS + KEY + UPDATE
    seen = [m.feed(stream[i:i + 1]) for i in range(len(stream))]
    key_end = len(UPDATE) + len(ENCODINGS) + len(KEY)
    assert seen.index(True) >= len(UPDATE) + len(ENCODINGS)  # nothing before the key's bytes
    assert not any(seen[key_end:])
    m = meter()
    assert m.feed(ENCODINGS[:3]) is False and m.feed(ENCODINGS[3:] + POINTER[:2]) is True  # a pointer begun is input
    assert m.feed(POINTER[2:] + UPDATE) is True  # its rest is too
    assert m.feed(UPDATE[:4]) is False and m.feed(UPDATE[4:]) is False


def test_a_long_paste_in_pieces_is_input_as_it_arrives():
    m = meter()
    message = cut_text(b"x" * 10000)
    assert m.feed(message[:100]) is True
    assert m.feed(message[100:5000]) is True  # each piece as it arrives: a long upload keeps it alive
    assert m.feed(message[5000:]) is True
    assert m.feed(UPDATE) is False  # in step after it
    assert m.feed(KEY) is True


def test_extended_clipboard_length_is_its_absolute_value():
    m = meter()
    body = bytes(12)
    assert m.feed(struct.pack("!Bxxxi", 6, -len(body)) + body) is True
    assert m.feed(UPDATE) is False


def test_an_unknown_message_type_counts_everything_after_as_input():
    m = meter()
    assert m.feed(bytes([99, 1, 2, 3])) is True
    assert m.feed(UPDATE) is True  # lost step: better kept alive than stopped under someone typing


def test_the_input_stamp_is_desktop_input_for_the_idle_rules(tmp_path):
    sampler = SessionSampler(session_id="no-such-session-" + str(time.time()), gpus=False)
    assert sampler.last_input() == (None, "ssh")
    sampler.watch_input_stamp(tmp_path)
    assert sampler.last_input() == (None, "ssh")  # no stamp yet
    touch_input(tmp_path)
    at, source = sampler.last_input()
    assert source == "desktop" and time.time() - at < 2 and sampler.last_input_at() == at
    sampler.note_input()  # newer SSH input wins the name
    assert sampler.last_input()[1] == "ssh"

    tracker = IdleTracker(3600, input_window_s=60)
    quiet = MetricSample(ts=time.time(), cpu=0.0, mem_bytes=0)
    state = tracker.update(quiet, at, at + 5, "desktop")
    assert not state.idle and state.kept_alive_by == ["desktop input 5 s ago"]
    assert tracker.update(quiet, at, at + 61, "desktop").idle  # idle counts from the input itself
