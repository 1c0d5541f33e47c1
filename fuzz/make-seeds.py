#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/seeds/<target>/.

The seeds give the fuzzer a head start: for the parsers, protocol lines listed here plus every
line a client sends in tests/transcripts/ and every server line in tests/snapshots/; for
the structured targets, byte strings laid out the way chatd::fuzzing reads them (arbitrary's
Unstructured: a u8 range takes one byte, value = byte % width + start; lengths of `bytes`
come from the end). Run it from anywhere; it is deterministic, and its output is checked in.
"""

import glob
import os
import random
import re
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

T = "2026-11-21T10:04:05.123Z"

# ---- command lines, as a client sends them -------------------------------------------------------
COMMAND_LINES = [
    "REGISTER alice wonderland1",
    "@1 LOGIN alice wonderland1",
    "LOGIN Bob wrong",
    "LOGOUT",
    "QUIT",
    "QUIT  gone fishing ",
    "HELP",
    "help msg",
    "PING",
    "PING x",
    "PING " + "t" * 65,
    "MSG bob hello there",
    "MSG bob  two spaces",
    "msg bob \ttab",
    "MSG 1bob hi",
    "MSG bob \x07",
    "GROUP a,b,C hello",
    "GROUP a,,b hi",
    "GROUP a,B,b hi",
    "@q.1 ALL everyone",
    "ALL    ",
    "USERS",
    "USERS now",
    "HISTORY bob",
    "HISTORY * 3 BEFORE 10",
    "history bob 500 after 0",
    "HISTORY bob 0",
    "HISTORY bob BEFORE 99999999999999999999",
    "HISTORY bob 5 SINCE 3",
    "FRIEND ADD bob",
    "FRIEND accept bob",
    "FRIEND DENY bob",
    "FRIEND REMOVE bob",
    "FRIEND LIST",
    "FRIEND HUG bob",
    "FRIEND",
    "@ MSG a b",
    "@bad!label PING",
    "@x",
    "DANCE",
    "   ",
    "",
    "  @7   MSG   bob   spaced",
]

# ---- server lines, as the server sends them ------------------------------------------------------
SERVER_LINES = [
    "HELLO chatd 0.1.0 Welcome! Type HELP for commands; REGISTER <name> <password> then LOGIN <name> <password>.",
    "OK REGISTER alice",
    "OK @1 LOGIN alice",
    "OK MSG 42 DELIVERED",
    "OK MSG 1 KEPT",
    "OK GROUP 5 DELIVERED 1 KEPT 1",
    "OK ALL 6 DELIVERED 3",
    "OK USERS 2",
    "OK HISTORY bob 2 BEFORE 3 AFTER -",
    "OK FRIEND ADD bob REQUESTED",
    "FAIL @7 MSG UNKNOWN_USER no such user: bob",
    "FAIL * LINE_TOO_LONG line exceeds 4096 bytes; it was discarded",
    "FAIL * BAD_ENCODING line is not valid UTF-8",
    "FAIL LOGIN BAD_CREDENTIALS wrong name or password",
    f"MESSAGE 1 {T} alice bob hello there",
    f"MESSAGE 2 {T} alice Bob,carol  two spaces",
    f"MESSAGE 3 {T} alice * everyone",
    f"HISTORY 4 {T} bob alice x",
    "BACKLOG-END 0",
    "PRESENCE bob ONLINE",
    "FRIENDSHIP bob WITHDRAWN",
    "BYE SLOW_CONSUMER you were not reading your messages; disconnected",
    "USER alice",
    "HELP MSG <name> <text> -- send a message to one user",
    "PONG",
    "PONG x",
    "FRIEND carol INCOMING",
]


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


ROOT = os.path.dirname(HERE)


def expand(s):
    """The escapes of tests/transcripts: {x*N} is N copies of x; \\xHH, \\n, \\r are bytes."""
    out = bytearray()
    i = 0
    while i < len(s):
        m = re.match(r"\{(.*)\*(\d+)\}", s[i:]) if s[i] == "{" else None
        if m and "}" not in m.group(1):
            out += m.group(1).encode() * int(m.group(2))
            i += m.end()
            continue
        if s[i] == "\\" and i + 1 < len(s):
            if s[i + 1] == "x" and re.fullmatch(r"[0-9A-Fa-f]{2}", s[i + 2:i + 4]):
                out.append(int(s[i + 2:i + 4], 16))
                i += 4
                continue
            if s[i + 1] in "nr":
                out += b"\n" if s[i + 1] == "n" else b"\r"
                i += 2
                continue
        out += s[i].encode()
        i += 1
    return bytes(out)


def transcript_lines():
    """Every line a client sends in tests/transcripts/*.txt, without its terminator."""
    lines = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "transcripts", "*.txt"))):
        for raw in open(path, encoding="utf-8").read().splitlines():
            m = re.match(r"^\w+> ?(.*)$", raw)
            if m:
                lines.append(expand(m.group(1)))
                continue
            m = re.match(r"^\w+: raw (.*)$", raw)
            if m:
                lines += [l.removesuffix(b"\r") for l in expand(m.group(1)).split(b"\n") if l]
    return lines


def snapshot_lines():
    """Every server line in tests/snapshots/*.snap, except those shortened for display."""
    lines = []
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "snapshots", "*.snap"))):
        for raw in open(path, encoding="utf-8", errors="replace").read().splitlines():
            m = re.match(r"^\w+< (.*)$", raw)
            if m and not re.search(r"\.\.\.\(\d+ bytes\)$", m.group(1)):
                lines.append(m.group(1).encode())
    return lines


def unique(items):
    seen = set()
    return [x for x in items if not (x in seen or seen.add(x))]


def command_parse():
    lines = unique([l.encode() for l in COMMAND_LINES] + transcript_lines())
    for i, line in enumerate(lines):
        write("command_parse", f"line-{i:03}", line)


def server_line():
    lines = unique([l.encode() for l in SERVER_LINES] + snapshot_lines())
    for i, line in enumerate(lines):
        # An even first byte: the rest is parsed as a line.
        write("server_line", f"line-{i:03}", b"\x00" + line)
    rng = random.Random(7)
    for i in range(16):
        # An odd first byte: the rest picks a line for the reply encoders to build.
        write("server_line", f"encoded-{i:02}", bytes([1, i]) + rng.randbytes(rng.randint(8, 96)))


def roundtrip():
    rng = random.Random(11)
    for i in range(24):
        write("roundtrip", f"random-{i:02}", rng.randbytes(rng.randint(16, 400)))


def line_framing():
    """[limit][stream][chunk choices][stream length], as check_line_framing reads them."""
    streams = [
        (4, b"ab\ncd\r\n\r\r\nef"),
        (4, b"abcd\r\nabcde\r\nabcd\rx\nok\n"),
        (3, b"abcdefgh\nabc\r\n\r\n\n"),
        (0, b"\n\r\n\r\r\nx\n"),
        (8, b"PING x\r\nMSG bob hi\n"),
    ]
    for i, (limit, stream) in enumerate(streams):
        chunks = bytes([1, 0, 2, 0, 3] * 4)
        body = stream + chunks
        # The length byte is read modulo (bytes left + 1), the stream length when it is smaller.
        write("line_framing", f"model-{i:02}", bytes([limit]) + body + bytes([len(stream)]))
    # The real limit: a line of exactly 4096 bytes with CRLF, then one of 4097.
    stream = b"x" * 4096 + b"\r\n" + b"y" * 4097 + b"\nz\n"
    body = stream + bytes([200, 17, 5])
    n = len(stream)
    # Over 256 bytes left: the length takes two bytes from the end (big-endian, modulo the rest).
    write("line_framing", "limit-4096", bytes([0xFF]) + body + n.to_bytes(2, "big"))


def inflate():
    """[mode][repeat][text][cuts][text length], as check_inflate reads them."""
    texts = [
        (0, 0, b"PING a\nMSG bob hi\r\nHISTORY bob 50\n"),
        (1, 80, b"xxxxxxxxxxxxxxxx"),
        (0, 3, b"LOGIN alice wonderland1\nPING\n"),
        (2, 1, b"PING one\nPING two\nPING three\n"),
        (3, 0, bytes([0xFF, 0xFF]) + b"PING\n"),
        (3, 0, bytes([0x03, 0x00]) + b"PING\n"),
    ]
    for i, (mode, repeat, text) in enumerate(texts):
        cuts = bytes([3, 1, 7, 2, 200, 9, 4, 4, 1] * 3)
        write("inflate", f"stream-{i:02}", bytes([mode, repeat]) + text + cuts + bytes([len(text)]))


# ---- core: operations in the layout check_core reads ---------------------------------------------
VERBS = ["REGISTER", "LOGIN", "LOGIN", "LOGOUT", "QUIT", "HELP", "PING", "MSG", "MSG", "GROUP",
         "ALL", "USERS", "HISTORY", "HISTORY", "FRIEND", "DANCE", "", "TOKEN", "RESUME", "RESUME",
         "TOKENS", "REVOKE", "PASSWORD", "UNREGISTER", "BLOCK", "BLOCK", "UNBLOCK", "BLOCKS", "DMS",
         "AWAY", "WHOIS", "JOIN", "JOIN", "PART", "ROOMS", "MEMBERS", "TOPIC", "INVITE", "KICK",
         "BAN", "UNBAN", "ROLE", "ROOM", "ROOM", "READ"]
NAMES = ["a", "b", "c", "d", "A", "Bee", "zed", "9x"]
ROOMS = ["#r", "#R", "#s", "#t", "#bad!", "r"]
FRIEND_SUBS = ["ADD", "ACCEPT", "deny", "REMOVE", "LIST", "HUG", ""]
ROOM_SUBS = ["INFO", "PRIVATE", "private", "PUBLIC", "DELETE", "SHOW"]
ROLES = ["OWNER", "op", "MEMBER", "ADMIN"]
NO, YES = 1, 0  # ratio(1, d) is true for a byte of 0, false for 1
# ratio(2, d) reads a byte b as b % d + 1 <= 2: true for 0, false for 2
NO2 = 2


def n(name):
    return bytes([NAMES.index(name)])


def text(kind):
    """0 two spaces, 1 tab, 2 emoji, 3 blank, 4 bell, 5 2048 bytes, 'hi' a short one."""
    if kind == "hi":
        return bytes([6, 7])
    if kind == 5:
        return bytes([5, 0])
    return bytes([kind])


def line(verb, args=b"", label=True):
    return bytes([4 if label else 0, NO, VERBS.index(verb), NO]) + args


def register(name, right=True):
    return line("REGISTER", n(name) + bytes([4 if right else 1]))


def login(name, right=True):
    return line("LOGIN", n(name) + bytes([4 if right else 0]))


def r(room):
    return bytes([ROOMS.index(room)])


def msg(to, kind="hi"):
    if to.startswith("#"):
        return line("MSG", bytes([YES]) + r(to) + text(kind))
    return line("MSG", bytes([NO2]) + n(to) + text(kind))


def group(names, kind="hi"):
    return line("GROUP", bytes([len(names) - 1]) + b"".join(n(x) for x in names) + text(kind))


def history(target, count=1):
    """count is an index into the counts: 0 none, 1 " 1", 2 " 3"."""
    if target == "*":
        head = bytes([0])
    elif target.startswith("#"):
        head = bytes([1]) + r(target)
    else:
        head = bytes([2]) + n(target)
    return line("HISTORY", head + bytes([count, 0]))  # no cursor


def friend(sub, name=None):
    args = bytes([FRIEND_SUBS.index(sub)])
    if sub != "LIST":
        args += bytes([0]) + n(name)
    return line("FRIEND", args)


def join(room):
    return line("JOIN", r(room))


def part(room):
    return line("PART", r(room) + bytes([1]))  # " bye"


def topic(room, which=1):
    """which: 0 show, 1 " a topic", 2 " -"."""
    return line("TOPIC", r(room) + bytes([which]))


def on_member(verb, room, name, suffix=None):
    """INVITE, UNBAN (no suffix), KICK, BAN (suffix 0: none, 1: " go away")."""
    args = r(room) + n(name)
    if suffix is not None:
        args += bytes([suffix])
    return line(verb, args)


def role(room, name, which):
    return line("ROLE", bytes([ROLES.index(which)]) + r(room) + n(name))


def room_cmd(sub, room):
    return line("ROOM", bytes([ROOM_SUBS.index(sub)]) + r(room))


def read(target, which=2):
    """which: 0 none, 1 " 1", 2 " 3", 3 " 99"."""
    if target.startswith("#"):
        head = bytes([YES]) + r(target)
    else:
        head = bytes([NO2]) + n(target)
    return line("READ", head + bytes([which]))


def simple(verb):
    extra = {"QUIT": bytes([0]), "HELP": bytes([0]), "PING": bytes([1]), "MEMBERS": r("#r")}.get(verb, b"")
    return line(verb, extra)


def connect(c):
    return bytes([c, 0])


def disconnect(c):
    return bytes([c, 1])


def send(c, *lines, crlf=False):
    assert 1 <= len(lines) <= 3
    return bytes([c, 5, len(lines) - 1, YES if crlf else NO]) + b"".join(lines) + bytes([NO])


def raw(c, data):
    return bytes([c, 3, len(data)]) + data + bytes([len(data)])


def queue(c, line_bytes):
    """A line handed to the server with no job run (op 16)."""
    return bytes([c, 16]) + line_bytes


def step():
    return bytes([0, 18])


def drop(c):
    """Closes a connection with no job run (op 19)."""
    return bytes([c, 19])


def advance(ms):
    return bytes([0, 2]) + (ms - 1).to_bytes(3, "big")


def core():
    chat = b"".join([
        connect(0), connect(1),
        send(0, register("a"), login("a")),
        send(1, register("b"), login("b"), register("c")),
        send(0, msg("b", "hi"), msg("b", 0), group(["a", "b"], 2)),
        send(1, history("a"), line("ALL", text(1)), simple("USERS")),
        advance(61_000),
        send(1, simple("LOGOUT")),
        send(0, msg("b", "hi"), group(["b", "c"], "hi")),
        send(1, login("b"), friend("ADD", "a")),
        send(0, friend("ACCEPT", "b"), friend("LIST"), history("*")),
        disconnect(1),
        send(0, simple("HELP"), simple("PING"), simple("QUIT")),
    ])
    write("core", "chat", chat)

    pipelined = b"".join([
        connect(2),
        send(2, register("Bee"), login("Bee"), msg("Bee", 1), crlf=True),
        connect(3),
        send(3, login("a", right=False), register("A", right=False), msg("a", "hi")),
        send(3, register("d"), login("d"), group(["Bee", "d", "zed"], "hi")),
        send(2, friend("ADD", "d"), friend("REMOVE", "d"), simple("LOGOUT")),
        send(3, line("DANCE"), line(""), simple("QUIT")),
        send(3, simple("PING")),
        connect(3),
        send(3, login("d"), friend("deny", "Bee"), msg("Bee", "hi")),
        send(2, login("Bee"), history("d")),
    ])
    write("core", "pipelined", pipelined)

    framing = b"".join([
        connect(0),
        raw(0, b"REGISTER a pw-a-se"),
        raw(0, b"cret\r\nLOGIN a pw-a-secret\n\xff\xfe\n   \n"),
        bytes([0, 4, 2, 1]) + (4097 + 2).to_bytes(2, "big"),  # 4097 bytes + CRLF (a bool byte of 1), in one write
        bytes([0, 4, 1, 1]) + (1000).to_bytes(2, "big"),  # 4096 bytes + CRLF, cut after 1000
        send(0, msg("a", 5), simple("USERS"), line("PING", bytes([4]))),  # a token with a CR
        raw(0, b"MSG a partial line, never ended"),
        disconnect(0),
    ])
    write("core", "framing", framing)

    # A login whose connection leaves while its backlog is read; a MSG whose sender leaves before
    # its commit; a recipient who leaves while a message to it commits.
    races = b"".join([
        connect(0), connect(1),
        send(0, register("a"), register("b"), register("c")),
        send(0, login("a"), msg("b", "hi"), msg("c", "hi")),
        queue(1, login("b")),
        step(),
        drop(1),
        connect(1),
        send(1, login("b")),
        queue(1, msg("a", "hi")),
        drop(1),
        connect(2),
        send(2, login("c")),
        queue(0, group(["b", "c"], "hi")),
        drop(2),
        step(),
        connect(2),
        send(2, login("c"), history("a")),
    ])
    write("core", "races", races)

    # A moderated private room: invitations, a ban and its lift, a kick, roles, history, read
    # markers; then the same room deleted and created again.
    rooms = b"".join([
        connect(0), connect(1), connect(2),
        send(0, register("a"), register("b"), register("c")),
        send(0, login("a"), join("#r"), msg("#r", "hi")),
        send(0, room_cmd("PRIVATE", "#r"), msg("#r", 0), on_member("INVITE", "#r", "b")),
        send(1, login("b"), join("#R"), history("#r", 2)),
        send(0, on_member("BAN", "#r", "c", 1), msg("#r", "hi"), role("#r", "b", "op")),
        send(2, login("c"), join("#r"), msg("#r", "hi")),
        send(1, on_member("UNBAN", "#r", "c"), on_member("INVITE", "#r", "c"), read("#r")),
        send(2, join("#r"), history("#r"), part("#r")),
        send(1, on_member("KICK", "#r", "a", 0), topic("#r"), simple("ROOMS")),
        send(0, room_cmd("INFO", "#r"), line("MEMBERS", r("#r")), room_cmd("DELETE", "#r")),
        send(2, join("#r"), msg("#r", "hi"), read("a", 3)),
    ])
    write("core", "rooms", rooms)

    # A message to a private room committed while someone joins, and one committed while its
    # room is deleted.
    room_races = b"".join([
        connect(0), connect(1),
        send(0, register("a"), register("b"), login("a")),
        send(0, join("#s"), room_cmd("PRIVATE", "#s"), on_member("INVITE", "#s", "b")),
        send(1, login("b")),
        queue(0, msg("#s", "hi")),
        queue(1, join("#s")),
        step(),
        queue(1, history("#s")),
        queue(0, room_cmd("DELETE", "#s")),
        queue(1, msg("#s", "hi")),
        step(),
        send(1, join("#s"), msg("#s", "hi")),
    ])
    write("core", "room-races", room_races)


def main():
    if os.path.isdir(SEEDS):
        shutil.rmtree(SEEDS)
    command_parse()
    server_line()
    roundtrip()
    line_framing()
    core()
    inflate()


if __name__ == "__main__":
    main()
