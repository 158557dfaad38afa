"""Limits every receiver applies to wire bytes before and while it decodes them.

msgspec decodes recursively and has no depth option: a 2 KB message nested 2,000 deep makes
it raise ``RecursionError`` (not a ``DecodeError``), and a message nested a few hundred deep
decodes into objects that blow the stack of whoever walks them next. So every receiver
(the control socket, an agent's call loop, a caller's reply path) decodes through ``decode``,
which bounds the depth and turns ANY failure into a ``WireError`` the receiver answers its
sender with, never into an exception that ends its loop.

The depth check is cheap for ordinary messages: one C-speed ``bytes.translate`` counts the
bytes that could open a container (fixmap, fixarray, array16/32, map16/32). A message with no
more such bytes than ``MAX_DEPTH`` cannot nest deeper, whatever they mean; only a message with
more is walked, once decoded (msgspec's own guard stops at ~1000 levels with a RecursionError,
turned into the same refusal), level by level, to measure its real depth.
"""

from __future__ import annotations

import ctypes
import time
from typing import Any, Callable

import msgspec
import zmq

MAX_DEPTH = 100  # containers open at once, the message's own included: plenty for any real call
MAX_CALL_BYTES = 16 << 20  # 16 MiB: the most a call or a reply may weigh on the wire (ZMQ_MAXMSGSIZE of agents)
MAX_CALL_ITEMS = 1_000_000  # containers a call or a reply may hold; past it, values of any kind too
MAX_TEXT_CHARS = 80  # of a user's string echoed in an error message (``shorten``)

_CONTAINER_HEADS = bytes([*range(0x80, 0xA0), *range(0xDC, 0xE0)])
_NOT_CONTAINER_HEADS = bytes(b for b in range(256) if b not in _CONTAINER_HEADS)


class WireError(ValueError):
    """Bytes a receiver refuses: undecodable, too deep, or over a size limit. The message says why."""


def candidate_heads(data: bytes | bytearray | memoryview, limit: int = MAX_DEPTH) -> int:
    """How many bytes of ``data`` could open a container; 0 when ``data`` is too short to nest
    deeper than ``limit`` at all. At most this many containers are open at once."""
    if len(data) <= limit:
        return 0  # every container takes at least one byte
    raw = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    return len(raw.translate(None, _NOT_CONTAINER_HEADS))


def decode(decoder: msgspec.msgpack.Decoder, data: Any, limit: int = MAX_DEPTH,
           max_items: int = MAX_CALL_ITEMS) -> Any:
    """``decoder.decode(data)``, with every failure (``DecodeError``, ``RecursionError``,
    ``MemoryError``, ...) as one ``WireError`` whose message says what was wrong, and a message
    nested deeper than ``limit`` or holding too many items (``over_items``) refused before it
    costs its decoding. Messages with at most ``limit`` candidate container bytes (nearly all)
    cost one ``bytes.translate``; only the others are walked."""
    heads = candidate_heads(data, limit)
    if heads > max_items and over_items(data, max_items):
        raise WireError(f"holds more than {max_items} containers and values, the most a message may")
    try:
        message = decoder.decode(data)
    except RecursionError:  # msgspec's own guard, at Python's recursion limit (~1000)
        raise WireError(f"nested deeper than {limit} levels") from None
    except Exception as exc:  # any type: the receiver's loop must survive whatever the bytes are
        raise WireError(describe(exc)) from None
    if heads > limit and deeper_than(message, limit):
        raise WireError(f"nested deeper than {limit} levels")
    return message


def encode(encoder: msgspec.msgpack.Encoder, message: Any, limit: int = MAX_DEPTH) -> bytes:
    """``encoder.encode(message)``; ``WireError`` when it fails (any exception type) or when
    ``message`` nests deeper than ``limit``, which the receiver would refuse."""
    try:
        data = encoder.encode(message)
    except RecursionError:
        raise WireError(f"nested deeper than {limit} levels") from None
    except Exception as exc:
        raise WireError(describe(exc)) from None
    if candidate_heads(data, limit) > limit and deeper_than(message, limit):
        raise WireError(f"nested deeper than {limit} levels")
    return data


_SCALARS = frozenset({str, int, float, bool, type(None), bytes, bytearray})


def deeper_than(message: Any, limit: int) -> bool:
    """True when ``message`` (decoded: dicts, lists, tuples, Structs, scalars) has more than
    ``limit`` levels of containers, itself included. Level by level, iteratively: only
    containers are kept, so its cost is about 0.3 us per container."""
    level, depth = [message], 1
    while level:
        if depth > limit:
            return True
        below = []
        for item in level:
            kind = type(item)
            if kind is dict:
                values = item.values()
                for key in item:
                    if type(key) is tuple:  # an array as a key decodes as a tuple
                        below.append(key)
            elif kind is list or kind is tuple:
                values = item
            else:
                values = [getattr(item, name) for name in item.__struct_fields__]
            for value in values:
                kind = type(value)
                if kind in _SCALARS:
                    continue
                if kind is dict or kind is list or kind is tuple or isinstance(value, msgspec.Struct):
                    below.append(value)
        level, depth = below, depth + 1
    return False


class Complaints:
    """Says why a message was refused, at most ``burst`` lines per ``window`` seconds: a sender
    that floods bad messages must not flood the log too. The next line counts the ones left out."""

    def __init__(self, say: Callable[[str], None], burst: int = 10, window: float = 60.0) -> None:
        self.say, self.burst, self.window = say, burst, window
        self.since, self.told, self.left_out = 0.0, 0, 0

    def __call__(self, line: str) -> None:
        now = time.monotonic()
        if now - self.since > self.window:
            self.since, self.told = now, 0
        if self.told >= self.burst:
            self.left_out += 1
            return
        self.told += 1
        if self.left_out:
            line, self.left_out = f"{line} ({self.left_out} more refused, not logged)", 0
        try:
            self.say(line)
        except Exception:
            pass  # a closed stderr must not end a loop either


class Frames:
    """One message's frames, read from a ROUTER without waiting once its first frame is in:
    ZeroMQ delivers a multipart message whole, so the rest is queued already. At most
    ``max_frames`` frames are kept, and only while the frames after the first total at most
    ``max_bytes``; the others are read and dropped at once, uncopied. ``count`` and ``size``
    (bytes after the first frame) tell what the message was.

    Why: the node awaited one asyncio ``recv`` per frame (~80 us each), and empty frames weigh
    nothing: 100k of them (200 KB on the wire) held its loop 8.6 s. Read here: ~2 us each."""

    def __init__(self, first: zmq.Frame, max_frames: int, max_bytes: int) -> None:
        self.kept, self.count, self.size = [first], 1, 0
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.more = first.more

    def read(self, sock: zmq.Socket, at_most: int = -1) -> bool:
        """Read the next frames (``at_most`` of them, if >= 0) from ``sock``, a synchronous
        socket (or a shadow of the asyncio one); True once the message's last frame is in."""
        recv, kept = sock.recv, self.kept
        while self.more and at_most != 0:
            try:
                frame = recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:  # cannot happen (a message arrives whole); never spin on it
                self.more = False
                break
            self.count += 1
            self.size += len(frame)
            if self.count <= self.max_frames and self.size <= self.max_bytes:
                kept.append(frame)
            self.more, at_most = frame.more, at_most - 1
        return not self.more


def trim_memory() -> None:
    """Give the heap's free pages back to the system (glibc's ``malloc_trim``): after a big
    message is refused, its buffers must not stay in the receiver's RSS. A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def return_big_buffers() -> None:
    """Make glibc give big buffers back to the system when they are freed (a fixed mmap
    threshold, 256 KiB). Its default threshold grows to the size of the biggest block freed,
    so after a flood of 1 MiB frames the node kept ~1 GiB of RSS for good; now it returns to its
    size. Process-wide: for the node only (an agent's program may allocate big blocks often,
    and did not keep the flood anyway). A no-op without glibc."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 256 * 1024)
    except (OSError, AttributeError):
        pass


def describe(exc: BaseException, limit: int = 500) -> str:
    """``Type: message`` on one line, at most ``limit`` characters. Never raises: the exception
    is a user's object, whose ``__str__`` may raise or return anything (every place that tells
    of an exception goes through here, so one evil exception cannot end the loop that tells)."""
    try:
        name = type(exc).__name__
        name = name if type(name) is str else "exception"
    except BaseException:
        name = "exception"
    try:
        text = str(exc)
        text = text[:limit * 4] if type(text) is str else ""  # a str subclass can do anything
    except BaseException:
        text = "(its message could not be read: str() raised)"
    try:
        return " ".join(f"{name}: {text}".split() if text else [name])[:limit]
    except BaseException:
        return name[:limit]


def shorten(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """``text`` (a user's: a name, an id) to echo in an error message: ``repr``-quoted, at most
    ``limit`` characters of it, with an ellipsis when cut; a 100k-char name makes a short line."""
    text = str(text)
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def clip(message: str, limit: int = 4 * MAX_TEXT_CHARS) -> str:
    """An error message that may echo user strings, at most ``limit`` characters (an ellipsis
    when cut): the last guard, where the echoing code did not ``shorten`` them itself."""
    return message if len(message) <= limit else message[:limit] + "..."


# --- the walk -----------------------------------------------------------------------------
# Each head byte: (children, fixed bytes after the head, length bytes, extra bytes after the length).
# children: items a container holds per unit of its count (1 array, 2 map), 0 for a scalar;
# -1 marks the byte msgpack never uses (the walk stops: the decoder will report it).


def _heads() -> list[tuple[int, int, int, int]]:
    table: list[tuple[int, int, int, int]] = [(0, 0, 0, 0)] * 256
    for b in range(0x80, 0x90):
        table[b] = (2, b & 0x0F, 0, 0)  # fixmap: the fixed field holds the count
    for b in range(0x90, 0xA0):
        table[b] = (1, b & 0x0F, 0, 0)  # fixarray
    for b in range(0xA0, 0xC0):
        table[b] = (0, b & 0x1F, 0, 0)  # fixstr
    table[0xC1] = (-1, 0, 0, 0)
    table[0xC4], table[0xC5], table[0xC6] = (0, 0, 1, 0), (0, 0, 2, 0), (0, 0, 4, 0)  # bin
    table[0xC7], table[0xC8], table[0xC9] = (0, 0, 1, 1), (0, 0, 2, 1), (0, 0, 4, 1)  # ext
    table[0xCA], table[0xCB] = (0, 4, 0, 0), (0, 8, 0, 0)  # float
    for b, size in zip(range(0xCC, 0xD4), (1, 2, 4, 8, 1, 2, 4, 8)):
        table[b] = (0, size, 0, 0)  # uint, int
    for b, size in zip(range(0xD4, 0xD9), (2, 3, 5, 9, 17)):
        table[b] = (0, size, 0, 0)  # fixext: type byte + data
    table[0xD9], table[0xDA], table[0xDB] = (0, 0, 1, 0), (0, 0, 2, 0), (0, 0, 4, 0)  # str
    table[0xDC], table[0xDD] = (1, 0, 2, 0), (1, 0, 4, 0)  # array16/32: the length is the count
    table[0xDE], table[0xDF] = (2, 0, 2, 0), (2, 0, 4, 0)  # map16/32
    return table


_HEADS = _heads()


def call_id_of(payload) -> int:
    """The ``call_id`` of a message that does not decode as a whole (0 if none can be read), so
    that its sender's call fails at once rather than at its deadline."""
    call_id = top_level_int(payload, "call_id")
    return call_id if call_id is not None and call_id > 0 else 0


def top_level_int(data: bytes | bytearray | memoryview, key: str) -> int | None:
    """The int at ``key`` of the msgpack map ``data``, read without decoding (nor recursing into)
    the other values: a message refused as a whole still names its call. None if absent."""
    raw = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    try:
        head = raw[0]
        if 0x80 <= head <= 0x8F:
            pairs, pos = head & 0x0F, 1
        elif head in (0xDE, 0xDF):
            width = 2 if head == 0xDE else 4
            pairs, pos = int.from_bytes(raw[1:1 + width], "big"), 1 + width
        else:
            return None
        wanted = msgspec.msgpack.encode(key)
        for _ in range(pairs):
            end = _skip(raw, pos)
            found = raw[pos:end] == wanted
            pos, end = end, _skip(raw, end)
            if found:
                value = msgspec.msgpack.decode(raw[pos:end])
                return value if isinstance(value, int) and not isinstance(value, bool) else None
            pos = end
    except (IndexError, ValueError, msgspec.DecodeError):
        return None
    return None


def over_items(data: bytes | bytearray | memoryview, max_items: int) -> bool:
    """True when the message ``data`` holds more than ``max_items`` items (containers and values),
    counted on its bytes, without decoding: at most ``max_items`` steps (~0.33 us each).

    Why: decoding costs ~1 us and ~80 bytes per container, so a 1 MiB message of 500k ``[[]]``
    cost a second of the receiver's loop and ~80x its size in memory. ``decode`` walks only a
    message with more candidate container bytes than ``max_items``: nearly all pass on one
    ``bytes.translate``. Bytes that are not msgpack are left to the decoder to refuse."""
    raw = data if isinstance(data, (bytes, bytearray)) else bytes(data)
    try:
        _skip(raw, 0, max_items)
    except _TooMany:
        return True
    except ValueError:
        return False
    return False


class _TooMany(Exception):
    pass


def _skip(data: bytes | bytearray, pos: int, max_items: int = -1) -> int:
    """Where the item at ``pos`` ends, walked iteratively (ValueError when the bytes run out);
    ``_TooMany`` once it has met more than ``max_items`` items, if that is >= 0."""
    left = 1
    size = len(data)
    while left:
        if pos >= size:
            raise ValueError("truncated")
        children, fixed, length_bytes, extra = _HEADS[data[pos]]
        pos += 1
        left -= 1
        max_items -= 1
        if max_items == -1:
            raise _TooMany
        if children < 0:
            raise ValueError("invalid byte")
        length = int.from_bytes(data[pos:pos + length_bytes], "big") if length_bytes else 0
        pos += length_bytes
        if children:
            left += (length if length_bytes else fixed) * children
        else:
            pos += fixed + extra + length
    return pos
