#!/usr/bin/env python3
"""Drive each server with wrk on loopback and print throughput, latency, errors, memory and CPU.

Run through bench/model-server.sh, which installs everything and passes the paths in. Standard
library only. Every server listens on 127.0.0.1 and is stopped before the next one starts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
BODY = b'{"features":[5.1,3.5,1.4,0.2]}'


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None


@dataclass
class Result:
    server: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    rss_mib: float
    cpu_s_per_100k: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree(pid: int) -> list[int]:
    """pid and all its descendants (gunicorn and BentoML fork workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def sum_over(pids: list[int], read) -> float:
    """Sum read(pid) over processes, skipping those that exited meanwhile."""
    total = 0.0
    for p in pids:
        try:
            total += read(p)
        except (OSError, IndexError, ValueError):
            pass
    return total


def rss_bytes(pids: list[int]) -> float:
    def one(p: int) -> int:
        with open(f"/proc/{p}/statm") as f:
            return int(f.read().split()[1]) * PAGE

    return sum_over(pids, one)


def cpu_seconds(pids: list[int]) -> float:
    def one(p: int) -> int:
        with open(f"/proc/{p}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks

    return sum_over(pids, one) / CLK_TCK


def wait_until_answering(port: int, timeout: float, expect: int) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/predict", data=BODY, headers={"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                answer = json.loads(r.read())
                if answer.get("prediction") == expect:
                    return
                last = answer
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = e
        time.sleep(0.2)
    raise SystemExit(f"server did not answer on port {port} within {timeout}s: {last}")


def parse_ms(value: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value)
    if not m:
        raise ValueError(value)
    n, unit = float(m.group(1)), m.group(2)
    return n * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def run_wrk(wrk: str, script: str, port: int, connections: int, seconds: int) -> dict:
    out = subprocess.run(
        [wrk, "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script, f"http://127.0.0.1:{port}/predict"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(x) for x in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors += int(m.group(1))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": parse_ms(lat["50"]),
        "p99_ms": parse_ms(lat["99"]),
        "requests": requests,
        "errors": errors,
        "raw": out,
    }


def bench_server(
    server: Server, wrk: str, script: str, conns: list[int], seconds: int, warmup: int, expect: int
) -> list[Result]:
    port = free_port()
    argv = [a.replace("{port}", str(port)) for a in server.argv]
    env = {**os.environ, **server.env}
    proc = subprocess.Popen(
        argv, env=env, cwd=server.cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    results = []
    try:
        wait_until_answering(port, timeout=120, expect=expect)
        for c in conns:
            run_wrk(wrk, script, port, c, warmup)
            pids = tree(proc.pid)
            peak = [rss_bytes(pids)]
            stop = threading.Event()

            def sample() -> None:
                while not stop.wait(0.25):
                    peak.append(rss_bytes(tree(proc.pid)))

            sampler = threading.Thread(target=sample, daemon=True)
            cpu_before = cpu_seconds(tree(proc.pid))
            sampler.start()
            w = run_wrk(wrk, script, port, c, seconds)
            stop.set()
            sampler.join()
            cpu = cpu_seconds(tree(proc.pid)) - cpu_before
            results.append(
                Result(
                    server=server.name,
                    connections=c,
                    rps=w["rps"],
                    p50_ms=w["p50_ms"],
                    p99_ms=w["p99_ms"],
                    errors=w["errors"],
                    requests=w["requests"],
                    rss_mib=max(peak) / 2**20,
                    cpu_s_per_100k=cpu / max(w["requests"], 1) * 100_000,
                )
            )
            print(f"  {server.name:<24} c={c:<3} {w['rps']:>10.0f} req/s  p99 {w['p99_ms']:.2f} ms", file=sys.stderr)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return results


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--wrk", default="wrk")
    p.add_argument("--script", required=True)
    p.add_argument("--python-bin", required=True, help="the bench venv's bin/ directory")
    p.add_argument("--model-server", required=True)
    p.add_argument("--model-path", help="an ONNX model for model-server (default: its bundled iris)")
    p.add_argument("--expect", type=int, default=0, help="the class every server must answer for the body")
    p.add_argument("--joblib", required=True)
    p.add_argument("--reference-dir", required=True)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--connections", default="16,64")
    p.add_argument("--only", default="", help="comma-separated server names to run (default all)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()

    conns = [int(c) for c in args.connections.split(",")]
    ref_env = {"IRIS_JOBLIB": args.joblib, "BENTOML_DO_NOT_TRACK": "true", "PYTHONDONTWRITEBYTECODE": "1"}
    gunicorn = os.path.join(args.python_bin, "gunicorn")
    servers = [
        Server("flask+gunicorn sync", [gunicorn, "-w", "2", "-b", "127.0.0.1:{port}", "flask_app:app"], ref_env, args.reference_dir),
        Server(
            "flask+gunicorn gthread",
            [gunicorn, "-w", "2", "-k", "gthread", "--threads", "8", "-b", "127.0.0.1:{port}", "flask_app:app"],
            ref_env,
            args.reference_dir,
        ),
        Server(
            "bentoml",
            [os.path.join(args.python_bin, "bentoml"), "serve", "bento_service:Iris", "--host", "127.0.0.1", "--port", "{port}"],
            ref_env,
            args.reference_dir,
        ),
    ] + [
        Server(
            f"model-server {w} worker{'s' if w > 1 else ''}",
            [args.model_server, "--bind", "127.0.0.1", "--port", "{port}", "--log", "warn", "--drain-seconds", "0"]
            + (["--model-path", args.model_path] if args.model_path else []),
            {"MODEL_SERVER_WORKERS": str(w)},
        )
        for w in (1, 2)
    ]
    if args.only:
        wanted = set(args.only.split(","))
        servers = [s for s in servers if s.name in wanted]

    results: list[Result] = []
    for s in servers:
        results += bench_server(s, args.wrk, args.script, conns, args.seconds, args.warmup, args.expect)

    print(f"\n{args.seconds} s per run after {args.warmup} s warm-up, wrk -t2, 2 workers for the Python servers, loopback\n")
    print("| server | conns | req/s | p50 ms | p99 ms | errors | peak RSS MiB | CPU s / 100k req |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(
            f"| {r.server} | {r.connections} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} "
            f"| {r.rss_mib:.1f} | {r.cpu_s_per_100k:.2f} |"
        )

    ours: dict[int, Result] = {}
    for r in results:
        if r.server.startswith("model-server") and (r.connections not in ours or r.rps > ours[r.connections].rps):
            ours[r.connections] = r
    flask = [r for r in results if r.server.startswith("flask")]
    bento = {r.connections: r for r in results if r.server == "bentoml"}
    if ours and flask:
        print("\nRatios at each connection count: the best model-server configuration (by req/s) against the")
        print("best Flask + gunicorn value of each metric separately, sync or gthread, whichever is better")
        print("for Flask (targets: >= 20x req/s, <= 1/10 p99, <= 1/10 RSS)\n")
        print("| conns | model-server | req/s x | p99 fraction | RSS fraction | CPU/req fraction | vs bentoml req/s x |")
        print("| ---: | --- | ---: | ---: | ---: | ---: | ---: |")
        for c, o in sorted(ours.items()):
            same = [r for r in flask if r.connections == c]
            rps = max(r.rps for r in same)
            p99 = min(r.p99_ms for r in same)
            rss = min(r.rss_mib for r in same)
            cpu = min(r.cpu_s_per_100k for r in same)
            b = bento.get(c)
            print(
                f"| {c} | {o.server.removeprefix('model-server ')} | {o.rps / rps:.1f} | {o.p99_ms / p99:.3f} "
                f"| {o.rss_mib / rss:.3f} | {o.cpu_s_per_100k / cpu:.3f} | {f'{o.rps / b.rps:.1f}' if b else '-'} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in results], f, indent=1)


if __name__ == "__main__":
    main()
