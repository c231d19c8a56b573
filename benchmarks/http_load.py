"""HTTP load on loopback: `medclassify serve` in its own process, N client threads (keep-alive)
posting real chest X-rays to /v1/predict for a fixed time, with a cap on the request count. The
server's memory (VmRSS, summed over its processes) is sampled every second.

    python benchmarks/http_load.py [--run RUN] [--clients 8] [--seconds 30]

Targets (issue 5): 0 errors, p50 <= 30 ms, p99 <= 100 ms, RSS growth <= 10% from the 5th second to
the end. Only 127.0.0.1 is ever contacted. Writes benchmarks/results/http_load.json."""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from serving_run import ROOT, SHARED, ensure_backend, exported_run, write_result

MAX_REQUESTS = 100_000  # a bound on top of the time limit


def model_ceiling(run: Path, paths: list[Path], backend: str) -> dict:
    """What the 2 cores can do for this model with no HTTP at all: ONNX Runtime images/s at batch 1
    and 32 (decode and preprocessing included), in one stream using every core. With N closed-loop
    clients, Little's law gives latency = N / throughput: N / (these images/s) is what the HTTP p50
    would be if the server were one such stream; its parallel single-threaded workers can do better."""
    from medclassify.inference.predictor import Predictor

    pred = Predictor(run, backend=backend)
    files = [str(p) for p in paths]
    pred.predict_paths(files[:32])  # warm-up
    t = time.perf_counter()
    for f in files:
        pred.predict_file(f)
    single = len(files) / (time.perf_counter() - t)
    t = time.perf_counter()
    pred.predict_paths(files * 2)
    batch = 2 * len(files) / (time.perf_counter() - t)
    return {"batch1_images_per_s": single, "batch32_images_per_s": batch, "image_size": pred.prep.image_size}


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (a multi-process server's workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def tree_rss_mb(pid: int) -> float:
    total = 0.0
    for p in process_tree(pid):
        try:
            total += rss_mb(p)
        except OSError:
            pass
    return total


def multipart(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = "medclassify-load-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--workers", type=int, default=2, help="server --workers")
    ap.add_argument("--processes", type=int, default=2, help="server --processes")
    ap.add_argument("--tta", action="store_true", help="server --tta (default --no-tta: one forward pass per request)")
    ap.add_argument("--backend", default="onnx", choices=["onnx", "onnx-int8"],
                    help="server --backend; onnx-int8 quantises the run first (export --int8)")
    args = ap.parse_args()
    xrays = sorted((SHARED / "chest_xray" / "test").rglob("*.jpeg"))[:64]
    if not xrays:
        print(f"SKIP: {SHARED / 'chest_xray'} not found.")
        return 0
    import httpx

    run, origin = exported_run(args.run)
    ensure_backend(run, args.backend)
    ceiling = model_ceiling(run, xrays, args.backend)
    floor_ms = 1e3 * args.clients / max(ceiling["batch1_images_per_s"], ceiling["batch32_images_per_s"])
    print(f"model alone ({ceiling['image_size']} px, {args.backend}, no HTTP): {ceiling['batch1_images_per_s']:.0f} img/s one by one, "
          f"{ceiling['batch32_images_per_s']:.0f} img/s in batches of 32 -> with {args.clients} closed-loop clients "
          f"would see p50 of about {floor_ms:.0f} ms from one such stream")
    payloads = [(p.name, p.read_bytes()) for p in xrays]
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    server = subprocess.Popen([sys.executable, "-c", "import sys; from medclassify.cli import main; sys.exit(main(sys.argv[1:]))",
                               "serve", str(run), "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
                               "--processes", str(args.processes), "--tta" if args.tta else "--no-tta",
                               "--backend", args.backend],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("server did not start:", server.stderr.read().decode()[-2000:] if server.poll() is not None else "timeout")
                return 1
            time.sleep(0.2)
        with httpx.Client() as c:  # warm-up
            for name, data in payloads[:8]:
                c.post(f"{base}/v1/predict", files={"file": (name, data)})
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds
        count = [0]

        bodies = [multipart(name, data) for name, data in payloads]

        def client(k: int):
            # http.client with pre-encoded bodies: the generator shares the server's 2 cores, so it
            # must cost as little CPU per request as possible.
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            i = k
            while time.monotonic() < stop_at:
                with lock:
                    if count[0] >= MAX_REQUESTS:
                        break
                    count[0] += 1
                body, ctype = bodies[i % len(bodies)]
                i += args.clients
                t = time.perf_counter()
                try:
                    conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                    r = conn.getresponse()
                    text = r.read()
                    ok = r.status == 200
                    msg = f"HTTP {r.status}: {text[:100]!r}"
                except (OSError, http.client.HTTPException) as e:
                    ok, msg = False, f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                dt = (time.perf_counter() - t) * 1e3
                with lock:
                    latencies.append(dt) if ok else errors.append(msg)
            conn.close()

        rss: list[tuple[float, float]] = []
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        t0 = time.monotonic()
        cpu0 = time.process_time()
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):
            rss.append((time.monotonic() - t0, tree_rss_mb(server.pid)))
            time.sleep(1.0)
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        client_cpu = time.process_time() - cpu0
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    lat = np.array(latencies)
    after5 = [m for s, m in rss if s >= 5.0]
    growth = (after5[-1] - after5[0]) / after5[0] if len(after5) >= 2 else float("nan")
    result = {
        "run": str(run), "origin": origin, "clients": args.clients, "seconds": wall, "server_workers": args.workers, "server_processes": args.processes, "tta": args.tta, "backend": args.backend,
        "requests": int(len(lat) + len(errors)), "errors": len(errors), "first_errors": errors[:5],
        "requests_per_s": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)), "p90_ms": float(np.percentile(lat, 90)),
        "p99_ms": float(np.percentile(lat, 99)), "rss_mb_at_5s": after5[0] if after5 else None,
        "rss_mb_end": after5[-1] if after5 else None, "rss_growth_from_5s": growth, "rss_samples": rss,
        "load_generator_cpu_s": client_cpu, "model_alone": ceiling, "one_stream_closed_loop_p50_ms": floor_ms,
        "targets": {"errors": 0, "p50_ms": 30, "p99_ms": 100, "rss_growth": 0.10},
        "met": {"errors": not errors, "p50": float(np.percentile(lat, 50)) <= 30, "p99": float(np.percentile(lat, 99)) <= 100,
                "rss": growth <= 0.10},
    }
    print(f"{result['requests']} requests in {wall:.1f} s from {args.clients} clients ({result['requests_per_s']:.0f}/s), "
          f"{len(errors)} errors (load generator used {client_cpu:.1f} CPU-s); p50 {result['p50_ms']:.1f} ms, p90 {result['p90_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms; "
          + (f"server RSS {after5[0]:.0f} -> {after5[-1]:.0f} MB ({100 * growth:+.1f}%) from the 5th second"
             if len(after5) >= 2 else "too short to judge memory"))
    print(f"written to {write_result('http_load' + ('' if args.backend == 'onnx' else '-' + args.backend), result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
