#!/usr/bin/env python3
"""A 1-node and a 3-node chatd cluster side by side, on loopback (docs/SCALING.md).

usage: bench/cluster/run.py [--nodes 0,1,3] [--workloads W2b,W3] [--chatd PATH] [--loadgen PATH]

For each node count: a fresh nats-server with JetStream (a temporary store directory), N chatd
nodes (`--cluster`), loadgen with its sessions spread over the nodes (`--also`), and the CPU time
(utime + stime from /proc) of every chatd node and of nats-server over the measured run. Prints one
line per run; everything it starts it stops (by PID). `--nodes 0` is the embedded single server (no
--cluster, no NATS used), measured the same way for comparison.

W2b: fanout -n 1000 -s 1 -m 1000 --window 100 (a room of 1000; the room is created on node 0 before
the run, so that the set-up measures JOINs of a room, not the race for its name). W3: pairs -n 1000
-m 200 --window 10.
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORK = {
    "W2b": ["fanout", "-n", "1000", "-s", "1", "-m", "1000", "--window", "100"],
    "W3": ["pairs", "-n", "1000", "-m", "200", "--window", "10"],
}
LIMITS = ["--exempt", "127.0.0.1", "--msgs-per-minute", "0", "--stored-kib-per-day", "0",
          "--inbox-share", "0", "--max-per-address", "0", "--registrations-per-hour", "0",
          "--hash-per-address", "0", "--max-connections", "20000",
          # setup (1000 REGISTER + LOGIN) is not measured; cheap hashing keeps it short
          "--scrypt-log-n", "4", "--log-level", "warn"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_s(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port, what):
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"{what} did not start")


def line_client(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    return s


def call(s, line, want):
    s.sendall((line + "\n").encode())
    buf = b""
    while want.encode() not in buf:
        buf += s.recv(65536)


def run(nodes, wid, chatd, loadgen):
    tmp = tempfile.mkdtemp(prefix="chatd-cluster-bench-")
    nport = free_port()
    procs = []
    try:
        nats = subprocess.Popen(["nats-server", "-js", "-a", "127.0.0.1", "-p", str(nport), "-sd",
                                 f"{tmp}/js"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(nats)
        wait_port(nport, "nats-server")
        ports = []
        for i in range(max(nodes, 1)):
            p = free_port()
            ports.append(p)
            # nodes=0: the embedded single server (no --cluster), for comparison
            cluster = ["--cluster", f"nats://127.0.0.1:{nport}"] if nodes else []
            procs.append(subprocess.Popen(
                [chatd] + cluster + ["--db", f"{tmp}/n{i}.redb", "--listen", f"127.0.0.1:{p}"]
                + LIMITS, stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/n{i}.log", "w")))
            wait_port(p, f"chatd node {i}")
        prefix = "c%d%s" % (nodes, wid[1:].lower())
        if wid == "W2b":
            # loadgen's chatd rooms are named #bench-<prefix>
            s = line_client(ports[0])
            call(s, "REGISTER roomkeeper pw-roomkeeper", "OK REGISTER")
            call(s, "LOGIN roomkeeper pw-roomkeeper", "BACKLOG-END")
            call(s, f"JOIN #bench-{prefix}", "OK JOIN")
            for p in ports[1:]:   # a write on each node: it has applied the room's creation
                c = line_client(p)
                call(c, "REGISTER sync%d pw-sync-node" % p, "OK REGISTER")
                c.close()
        chatd_pids = [pr.pid for pr in procs[1:]]
        before = {pid: cpu_s(pid) for pid in [nats.pid] + chatd_pids}
        cmd = [loadgen, "--adapter", "chatd", "--addr", f"127.0.0.1:{ports[0]}", "--json",
               "--server-pid", str(chatd_pids[0]), "--prefix", prefix,
               "--timeout", "240", "--label", f"{wid}-{nodes}node"]
        for p in ports[1:]:
            cmd += ["--also", f"127.0.0.1:{p}"]
        t0 = time.time()
        out = subprocess.run(cmd + WORK[wid], capture_output=True, text=True, timeout=300)
        wall = time.time() - t0
        after = {pid: cpu_s(pid) for pid in before}
        try:
            res = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            print(out.stderr[-2000:], file=sys.stderr)
            raise
        deliveries = res.get("deliveries") or res.get("measured", {}).get("deliveries")
        chatd_cpu = sum(after[p] - before[p] for p in chatd_pids)
        nats_cpu = after[nats.pid] - before[nats.pid]
        return res, deliveries, chatd_cpu, nats_cpu, wall
    finally:
        for pr in reversed(procs):
            pr.terminate()
        for pr in procs:
            try:
                pr.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pr.kill()
        subprocess.run(["rm", "-rf", tmp])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", default="1,3")
    ap.add_argument("--workloads", default="W2b,W3")
    ap.add_argument("--chatd", default=f"{ROOT}/target/release/chatd")
    ap.add_argument("--loadgen", default=f"{ROOT}/bench/irc-bench/loadgen/target/release/loadgen")
    a = ap.parse_args()
    print("uptime:", open("/proc/loadavg").read().strip())
    for wid in a.workloads.split(","):
        for n in [int(x) for x in a.nodes.split(",")]:
            res, deliveries, chatd_cpu, nats_cpu, wall = run(n, wid, a.chatd, a.loadgen)
            lat = res.get("latency") or {}
            node0 = res.get("server_cpu_us_per_delivery")
            print(f"{wid} nodes={n}: deliveries={res.get('deliveries')}/{res.get('expected')} "
                  f"lost={res.get('lost')} deliveries_per_s={res.get('deliveries_per_s', 0):,.0f} "
                  f"p50_ms={lat.get('p50_ms', 0):.2f} p99_ms={lat.get('p99_ms', 0):.2f} "
                  f"node0_cpu_us_per_delivery={node0 or 0:.2f} | whole run (setup included): "
                  f"chatd_cpu_s={chatd_cpu:.2f} nats_cpu_s={nats_cpu:.2f} wall_s={wall:.1f}")
    print("uptime:", open("/proc/loadavg").read().strip())


if __name__ == "__main__":
    main()
