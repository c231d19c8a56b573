"""The server under abuse, on loopback only: `medclassify serve` in its own process (20 MB cap), probed
as an attacker and as careless clients would.

    python benchmarks/abuse.py [--run RUN] [--clients 50] [--seconds 60]

1. A 1 GiB chunked upload (no Content-Length): answered 413 after the server read at most the cap
   plus one chunk (its own count, in the answer); the server's temporary folder and RSS grow <= 25 MB.
2. A server with an API key, a client without one: 401 with at most one 64 KiB chunk offered.
3. DNS rebinding: `Host: evil.example` gets 400.
4. Mixed load: N keep-alive clients for S seconds mixing valid images (JPEG, 16-bit PNG, DICOM, a PNG
   named ".") with malformed ones (DICOM with text in WindowCenter / NumberOfFrames, a non-image, a
   truncated JPEG, a 64-megapixel PNG over the pixel cap). Targets: 0 x 5xx, 0 connection resets,
   every valid request 200 (or 503 with Retry-After), RSS growth <= 10% from the 10th second.

Without --run, a tiny seed_cnn run is trained on generated images (its answers mean nothing; the
point is the server). Writes benchmarks/results/abuse.json."""

from __future__ import annotations

import argparse
import http.client
import io
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np

from http_load import free_port, multipart, tree_rss_mb
from serving_run import ROOT, write_result

SCRATCH = Path("/tmp/medclassify-abuse-bench")
CHUNK = 64 * 1024
GIB = 1 << 30
SERVER_PIECE = 64 * 1024 + 256 * 1024


def tiny_run() -> Path:
    from medclassify.config import TrainConfig
    from medclassify.data.synthetic import generate_dataset
    from medclassify.reporting import Reporter
    from medclassify.training.fit import train

    out = SCRATCH / "run"
    if (out / "model.safetensors").is_file():
        return out
    data = generate_dataset(SCRATCH / "data", per_class=20, size=64, splits={"train": 0.7, "test": 0.3})
    cfg = TrainConfig(data=str(data), out=str(out), model="seed_cnn", image_size=64, epochs=1, time_budget=None,
                      batch_size=16, normalize="fixed")
    return train(cfg, reporter=Reporter(quiet=True), overwrite=True).run_dir


# ---- payloads -------------------------------------------------------------------------------------

def _encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _dicom(arr: np.ndarray, replace: tuple[str, str] | None = None) -> bytes:
    """12-bit MONOCHROME2 DICOM; `replace` = (tag, text): that tag holds text where a number belongs."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "OT", "BENCH"
    ds.Rows, ds.Columns = arr.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    placeholder = None
    if replace:
        placeholder = {"WindowCenter": "1357", "NumberOfFrames": "86"}[replace[0]]
        setattr(ds, replace[0], placeholder)
        if replace[0] == "WindowCenter":
            ds.WindowWidth = "400"
    ds.PixelData = arr.astype(np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    if not placeholder:
        return data
    head = {"WindowCenter": b"\x28\x00\x50\x10DS", "NumberOfFrames": b"\x28\x00\x08\x00IS"}[replace[0]]
    size = len(placeholder).to_bytes(2, "little")  # explicit VR little endian: tag, VR, 2-byte length, value
    assert len(replace[1]) == len(placeholder) and data.count(head + size + placeholder.encode()) == 1
    return data.replace(head + size + placeholder.encode(), head + size + replace[1].encode())


def _big_png(width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\0" * (width + 1)
    body = b"".join(comp.compress(row * 500) for _ in range(height // 500)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def payloads() -> list[tuple[str, str, bytes, bool]]:
    """(kind, filename, bytes, valid)."""
    from medclassify.data.synthetic import synthetic_image

    rng = np.random.default_rng(0)
    grey = synthetic_image(rng, 256, 1)
    jpeg = _encode(grey, "JPEG")
    png = _encode(grey, "PNG")
    dcm_pixels = (grey.astype(np.uint16) * 16)[:128, :128]
    return [
        ("jpeg", "xray.jpeg", jpeg, True),
        ("png16", "xray.png", _encode((grey.astype(np.uint16) * 200 + 500).astype(np.uint16), "PNG"), True),
        ("dicom", "scan.dcm", _dicom(dcm_pixels), True),
        ("dot_name", ".", png, True),
        ("dicom_bad_window", "bad1.dcm", _dicom(dcm_pixels, ("WindowCenter", "oops")), False),
        ("dicom_bad_frames", "bad2.dcm", _dicom(dcm_pixels, ("NumberOfFrames", "xy")), False),
        ("not_image", "/", b"patient notes, not an image\n" * 20, False),
        ("truncated", "cut.jpeg", jpeg[: len(jpeg) // 2], False),
        ("too_many_pixels", "huge.png", _big_png(8000, 8000), False),
    ]


# ---- the server -----------------------------------------------------------------------------------

def start_server(run: Path, port: int, tmpdir: Path, key_file: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""), TMPDIR=str(tmpdir))
    env.pop("MEDCLASSIFY_API_KEY", None)
    cmd = [sys.executable, "-c", "import sys; from medclassify.cli import main; sys.exit(main(sys.argv[1:]))", "serve",
           str(run), "--port", str(port), "--max-upload-mb", "20", "--no-tta"]
    if key_file:
        cmd += ["--api-key-file", str(key_file)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    while True:
        if server.poll() is not None:
            raise SystemExit("server did not start: " + server.stderr.read().decode()[-2000:])
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            server.kill()
            raise SystemExit("server did not start in 90 s")
        time.sleep(0.3)


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()


def folder_mb(path: Path) -> float:
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total / 1e6


class Sampler(threading.Thread):
    """Peak size of the server's temporary folder, every 0.05 s (its peak RSS comes from the kernel)."""

    def __init__(self, tmpdir: Path):
        super().__init__(daemon=True)
        self.tmpdir, self.peak_tmp, self.running = tmpdir, 0.0, True

    def run(self):
        while self.running:
            self.peak_tmp = max(self.peak_tmp, folder_mb(self.tmpdir))
            time.sleep(0.05)


def reset_peak_rss(pid: int) -> bool:
    """Reset the kernel's high-water mark of the process's RSS (VmHWM), so it measures from now."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        got = sock.recv(65536)
        if not got:
            break
        data += got
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", 0))
    while len(body) < length:
        got = sock.recv(65536)
        if not got:
            break
        body += got
    return int(lines[0].split()[1]), headers, body


def chunked_upload(port: int, total: int, headers: str = "", wait_first: bool = False, limit_s: float = 120) -> dict:
    """Stream a chunked multipart body of up to `total` bytes; stop when the server answers.
    wait_first: send one chunk, then only wait for the answer."""
    import json

    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(("POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                  f"Content-Type: multipart/form-data; boundary=x\r\n{headers}\r\n").encode())
    chunk = b"%x\r\n" % CHUNK + b"\0" * CHUNK + b"\r\n"
    sent, reset, t0 = 0, None, time.monotonic()
    try:
        while sent < total and time.monotonic() - t0 < limit_s:
            sock.sendall(chunk)
            sent += CHUNK
            if wait_first or select.select([sock], [], [], 0)[0]:
                break
        status, hdrs, body = read_response(sock)
    except OSError as e:  # a reset, a broken pipe, or no answer in time
        reset = type(e).__name__
        try:
            status, hdrs, body = read_response(sock, 2)
        except OSError:
            status, hdrs, body = 0, {}, b""
    finally:
        sock.close()
    err = {}
    try:
        err = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        pass
    return {"status": status, "code": err.get("code"), "server_bytes_read": err.get("bytes_read"), "client_bytes_sent": sent,
            "seconds": time.monotonic() - t0, "connection": hdrs.get("connection"), "reset_before_answer": reset}


def mixed_load(port: int, server_pid: int, kinds: list, clients: int, seconds: float) -> dict:
    bodies = [(kind, *multipart(name, data), valid) for kind, name, data, valid in kinds]
    lock = threading.Lock()
    valid_ms: list[float] = []
    counts: dict[str, dict[int, int]] = {}
    problems = {"5xx": 0, "resets": 0, "valid_not_200_or_503": 0, "503_without_retry_after": 0, "invalid_not_4xx": 0}
    examples: list[str] = []
    stop_at = time.monotonic() + seconds

    def client(k: int):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = k
        while time.monotonic() < stop_at:
            kind, body, ctype, valid = bodies[i % len(bodies)]
            i += 1
            t = time.perf_counter()
            try:
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                text = r.read()
                status, retry = r.status, r.getheader("Retry-After")
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    problems["resets"] += 1
                    if len(examples) < 10:
                        examples.append(f"{kind}: {type(e).__name__}: {e}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            dt = (time.perf_counter() - t) * 1e3
            with lock:
                counts.setdefault(kind, {}).setdefault(status, 0)
                counts[kind][status] += 1
                bad = None
                if status >= 500 and status != 503:
                    problems["5xx"] += 1
                    bad = "5xx"
                if valid:
                    if status == 200:
                        valid_ms.append(dt)
                    elif status == 503:
                        if not retry:
                            problems["503_without_retry_after"] += 1
                            bad = "503 without Retry-After"
                    else:
                        problems["valid_not_200_or_503"] += 1
                        bad = "valid not answered 200"
                elif not 400 <= status < 500 and status != 503:
                    problems["invalid_not_4xx"] += 1
                    bad = "malformed not answered 4xx"
                if bad and len(examples) < 10:
                    examples.append(f"{kind}: {bad}: HTTP {status} {text[:120]!r}")
            if status == 503:
                time.sleep(0.05)  # a polite client backs off (its Retry-After is 1 s)
        conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    rss: list[tuple[float, float]] = []
    t0 = time.monotonic()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append((time.monotonic() - t0, tree_rss_mb(server_pid)))
        time.sleep(1.0)
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    after10 = [m for s, m in rss if s >= 10.0]
    growth = (after10[-1] - after10[0]) / after10[0] if len(after10) >= 2 else None
    lat = np.array(valid_ms) if valid_ms else np.array([float("nan")])
    total = sum(sum(c.values()) for c in counts.values())
    return {"clients": clients, "seconds": wall, "requests": total + problems["resets"], "requests_per_s": total / wall,
            "by_kind": {k: {str(s): n for s, n in sorted(c.items())} for k, c in counts.items()}, **problems,
            "first_problems": examples, "valid_200": len(valid_ms), "valid_p50_ms": float(np.percentile(lat, 50)),
            "valid_p99_ms": float(np.percentile(lat, 99)), "rss_mb_at_10s": after10[0] if after10 else None,
            "rss_mb_end": after10[-1] if after10 else None, "rss_growth_from_10s": growth, "rss_samples": rss}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--upload-gib", type=float, default=1.0, help="size of the chunked upload offered")
    args = ap.parse_args()
    run = Path(args.run) if args.run else tiny_run()
    kinds = payloads()
    result: dict = {"run": str(run), "origin": args.run or "tiny seed_cnn run on generated images (server figures only)"}
    with tempfile.TemporaryDirectory(prefix="abuse-") as scratch:
        scratch = Path(scratch)
        tmp = scratch / "server-tmp"
        tmp.mkdir()
        port = free_port()
        server = start_server(run, port, tmp)
        try:
            # warm up, so the model's first-use memory is not counted as the upload's
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            for kind, name, data, _valid in kinds[:4]:
                body, ctype = multipart(name, data)
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                conn.getresponse().read()
            conn.close()
            time.sleep(1.0)
            sampler = Sampler(tmp)
            rss0 = tree_rss_mb(server.pid)
            exact_peak = reset_peak_rss(server.pid)
            sampler.start()
            up = chunked_upload(port, int(args.upload_gib * GIB))
            time.sleep(1.0)
            sampler.running = False
            sampler.join()
            up.update({"offered_bytes": int(args.upload_gib * GIB), "cap_bytes": 20_000_000 + 64_000, "chunk": CHUNK,
                       "rss_mb_before": rss0, "rss_mb_peak": peak_rss_mb(server.pid) if exact_peak else None, "rss_mb_after": tree_rss_mb(server.pid),
                       "tmp_mb_peak": sampler.peak_tmp})
            up["rss_growth_mb"] = max(up["rss_mb_peak"] or 0, up["rss_mb_after"]) - rss0
            up["over_cap_bytes"] = (up["server_bytes_read"] or 0) - up["cap_bytes"]
            result["chunked_upload"] = up
            print(f"chunked {args.upload_gib:g} GiB upload: HTTP {up['status']} {up['code']} after the server read "
                  f"{up['server_bytes_read']:,} bytes (cap {up['cap_bytes']:,} + {up['over_cap_bytes']:,}: the one piece that "
                  f"crossed it); client sent "
                  f"{up['client_bytes_sent'] / 1e6:.1f} MB in {up['seconds']:.2f} s; server temp folder peak "
                  f"{up['tmp_mb_peak']:.1f} MB, RSS {rss0:.0f} -> peak {up['rss_mb_peak'] or float('nan'):.0f} (VmHWM) -> "
                  f"{up['rss_mb_after']:.0f} MB")

            big = _big_png(7000, 7000)  # 49 megapixels, under the 50-megapixel cap: decoded in full
            rss_big0 = tree_rss_mb(server.pid)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            statuses = []
            for _ in range(3):
                body, ctype = multipart("big.png", big)
                conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": ctype})
                r = conn.getresponse()
                r.read()
                statuses.append(r.status)
            conn.close()
            time.sleep(0.5)
            result["large_decode"] = {"megapixels": 49, "statuses": statuses, "rss_mb_before": rss_big0,
                                      "rss_mb_after": tree_rss_mb(server.pid)}
            result["large_decode"]["rss_growth_mb"] = result["large_decode"]["rss_mb_after"] - rss_big0
            print(f"3 x 49-megapixel PNG: HTTP {statuses}; RSS {rss_big0:.0f} -> {result['large_decode']['rss_mb_after']:.0f} MB "
                  "after (memory handed back)")

            sock_host = socket.create_connection(("127.0.0.1", port))
            sock_host.sendall(b"GET /health HTTP/1.1\r\nHost: evil.example\r\n\r\n")
            status, _, body = read_response(sock_host)
            sock_host.close()
            result["rebinding"] = {"status": status, "body": body.decode()[:200]}
            print(f"Host: evil.example -> HTTP {status}")

            result["mixed_load"] = mixed_load(port, server.pid, kinds, args.clients, args.seconds)
            m = result["mixed_load"]
            print(f"mixed load, {args.clients} clients for {m['seconds']:.0f} s: {m['requests']} requests "
                  f"({m['requests_per_s']:.0f}/s); {m['5xx']} x 5xx, {m['resets']} connection resets, "
                  f"{m['valid_not_200_or_503']} valid requests not answered 200/503, {m['503_without_retry_after']} "
                  f"503s without Retry-After, {m['invalid_not_4xx']} malformed not 4xx; valid p50 {m['valid_p50_ms']:.1f} ms, "
                  f"p99 {m['valid_p99_ms']:.1f} ms; RSS {m['rss_mb_at_10s'] or 0:.0f} -> {m['rss_mb_end'] or 0:.0f} MB from the 10th s "
                  f"({100 * (m['rss_growth_from_10s'] or 0):+.1f}%)")
            for kind, c in m["by_kind"].items():
                print(f"  {kind:18s} {c}")
            for line in m["first_problems"]:
                print("  problem:", line)
        finally:
            stop(server)

        key_file = scratch / "key"
        key_file.write_text("bench-key\n")
        port = free_port()
        keyed = start_server(run, port, tmp, key_file)
        try:
            nokey = chunked_upload(port, GIB, wait_first=True)
            result["keyed_no_key"] = nokey
            print(f"keyed server, no key: HTTP {nokey['status']} {nokey['code']} with {nokey['client_bytes_sent']:,} bytes "
                  "of body offered")
        finally:
            stop(keyed)

    up, m = result["chunked_upload"], result["mixed_load"]
    result["met"] = {
        # uvicorn hands the app what it has buffered: up to its 64 KiB high-water mark plus one socket
        # read (256 KiB), so "one chunk" as the server receives it is at most 320 KiB.
        "chunked_413_within_cap_plus_one_piece": up["status"] == 413 and up["server_bytes_read"] is not None
        and up["over_cap_bytes"] <= SERVER_PIECE,
        "chunked_tmp_le_25mb": up["tmp_mb_peak"] <= 25, "chunked_rss_le_25mb": up["rss_growth_mb"] <= 25,
        "no_key_401_within_64kib": result["keyed_no_key"]["status"] == 401 and result["keyed_no_key"]["client_bytes_sent"] <= CHUNK,
        "rebinding_400": result["rebinding"]["status"] == 400,
        "mixed_0_5xx": m["5xx"] == 0, "mixed_0_resets": m["resets"] == 0,
        "mixed_valid_200_or_503": m["valid_not_200_or_503"] == 0 and m["503_without_retry_after"] == 0,
        "mixed_rss_le_10pct": m["rss_growth_from_10s"] is not None and m["rss_growth_from_10s"] <= 0.10,
    }
    print("targets met:", ", ".join(f"{k}={v}" for k, v in result["met"].items()))
    print(f"written to {write_result('abuse', result)}")
    return 0 if all(result["met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
