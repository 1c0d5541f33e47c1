#!/usr/bin/env python3
"""Make the accounts and device tokens of a chatd RESUME run (W1 with --adapter chatd-resume).

usage:
  ip netns exec bench scripts/chatd_tokens.py ADDR PREFIX N FILE [--password PW] [--conns C]

For i in 0..N-1 it registers <PREFIX><i> (an existing account is fine if the password is right),
logs in, asks for a device token (TOKEN), and writes `<PREFIX><i> <token>` to FILE, one line per
user in order, mode 0600. Accounts are spread over C connections (default 8), each pipelining its
users' commands, so the password hashing runs on every hashing thread. This is setup, not measured:
run it before the measured run, with the same PREFIX given to loadgen (--prefix PREFIX
--tokens FILE). Tokens are secrets: FILE is for a benchmark server only."""
import argparse
import os
import socket
import sys
import threading


def worker(addr, prefix, users, password, results, errors):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=60)
    f = s.makefile("rwb", buffering=0)
    f.readline()  # HELLO
    for i in users:
        name = f"{prefix}{i}"
        s.sendall(f"REGISTER {name} {password}\nLOGIN {name} {password}\nTOKEN bench\nLOGOUT\n".encode())
        token = None
        finals = 0
        while finals < 4:
            line = f.readline().decode().rstrip("\n")
            if not line:
                errors.append(f"{name}: connection closed")
                return
            word = line.split(" ", 1)[0]
            if word not in ("OK", "FAIL"):
                continue  # pushes after LOGIN
            finals += 1
            if line.startswith("FAIL REGISTER NAME_TAKEN"):
                continue
            if word == "FAIL":
                errors.append(f"{name}: {line}")
                return
            if line.startswith("OK TOKEN "):
                token = line.split(" ")[3]
        results[i] = token
    s.sendall(b"QUIT\n")
    s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("addr")
    ap.add_argument("prefix")
    ap.add_argument("n", type=int)
    ap.add_argument("file")
    ap.add_argument("--password", default="bench-password-1")
    ap.add_argument("--conns", type=int, default=8)
    a = ap.parse_args()
    results = [None] * a.n
    errors = []
    conns = max(1, min(a.conns, a.n))
    threads = [threading.Thread(target=worker,
                                args=(a.addr, a.prefix, range(k, a.n, conns), a.password, results, errors))
               for k in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors or any(t is None for t in results):
        sys.exit("error: " + "; ".join(errors[:5] or ["some users got no token"]))
    fd = os.open(a.file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        for i, t in enumerate(results):
            out.write(f"{a.prefix}{i} {t}\n")
    print(f"{a.n} tokens for {a.prefix}0..{a.prefix}{a.n - 1} in {a.file}", file=sys.stderr)


if __name__ == "__main__":
    main()
