"""`serve --processes N`: N uvicorn worker processes on one port, each building the app from the
spec the serve command leaves in the environment."""

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from medclassify.cli import main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for stat in os.listdir("/proc"):
        if stat.isdigit():
            try:
                with open(f"/proc/{stat}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(stat))
            except OSError:
                pass
    return out


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to see the worker processes")
def test_two_processes_serve_one_port_and_stop_together(tiny_run, uploads):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-c", "import sys; from medclassify.cli import main; sys.exit(main(sys.argv[1:]))",
                               "serve", str(tiny_run), "--port", str(port), "--processes", "2", "--workers", "2"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.3)
        workers = _children(server.pid)
        assert len(workers) >= 2  # uvicorn's supervisor spawns one process per --processes
        with httpx.Client(timeout=30) as c:
            answers = [c.post(f"{base}/v1/predict", files={"file": ("scan.png", uploads["png"])}) for _ in range(6)]
        assert all(r.status_code == 200 for r in answers)
        assert len({r.json()["label"] for r in answers}) == 1
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            raise
    time.sleep(0.5)
    assert not [p for p in workers if os.path.exists(f"/proc/{p}") and open(f"/proc/{p}/stat").read().split()[2] != "Z"]


def test_more_processes_than_workers_is_a_one_line_error(tiny_run, capsys):
    assert main(["serve", str(tiny_run), "--processes", "3", "--workers", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--processes 3" in err[0]
