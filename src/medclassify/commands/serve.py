"""`medclassify serve RUN|cascade.yaml`: the REST API and the web page."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from ..config import PredictOptions, predict_default
from .common import app, predict_options


@app.command()
def serve(
    target: Path = typer.Argument(..., help="Run directory, or a cascade YAML."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; anything but loopback needs an API key."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key_file: Optional[Path] = typer.Option(None, "--api-key-file", metavar="FILE", help="File holding the key clients send as "
                                                "X-API-Key (or set $MEDCLASSIFY_API_KEY). With a key, only /health "
                                                "answers without it."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="The key itself (visible to anyone running `ps`: "
                                          "prefer --api-key-file or $MEDCLASSIFY_API_KEY)."),
    allowed_host: list[str] = typer.Option([], "--allowed-host", metavar="NAME", help="Host name clients may use besides the loopback "
                                           "names and the --host address (repeatable; '*' for any). Anything else is "
                                           "answered 400 (DNS rebinding)."),
    max_upload_mb: float = typer.Option(20.0, "--max-upload-mb", help="Largest accepted upload."),
    max_megapixels: float = typer.Option(50.0, "--max-megapixels", help="Largest accepted image (decompression bombs)."),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds before a request is answered 504."),
    workers: int = typer.Option(2, "--workers", help="Requests computed at once (over all processes)."),
    processes: int = typer.Option(1, "--processes", help="Server processes sharing the port and the workers. Python "
                                  "serialises one process's request handling: on 2 cores, --processes 2 served about "
                                  "1.1-1.5x more requests (each process holds its own copy of the model)."),
    queue: int = typer.Option(32, "--queue", help="Requests allowed to wait; more are answered 503."),
    abstain_below: float = typer.Option(predict_default("abstain_below"), "--abstain-below",
                                        help=PredictOptions.model_fields["abstain_below"].description),
    backend: str = typer.Option(predict_default("backend"), help=PredictOptions.model_fields["backend"].description),
    tta: Optional[bool] = typer.Option(None, "--tta/--no-tta", help=PredictOptions.model_fields["tta"].description),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime threads per request (default: cores / workers)."),
):
    """Serve a run or a cascade over HTTP: REST API (/v1/predict, /v1/explain, /v1/model, /health) and a web page at /."""
    from ..errors import ConfigError
    from ..serve.app import ServeSettings, create_app, is_loopback

    key = _api_key(api_key, api_key_file)
    if not is_loopback(host) and not key:
        raise ConfigError(f"Refusing to bind {host} without an API key: anyone on the network could use the model.",
                          "pass --api-key-file FILE (or set MEDCLASSIFY_API_KEY), or keep the default --host 127.0.0.1.")
    for name, value in (("--workers", workers), ("--processes", processes), ("--max-upload-mb", max_upload_mb),
                        ("--max-megapixels", max_megapixels), ("--timeout", timeout)):
        if value <= 0:
            raise ConfigError(f"{name} must be positive (got {value}).", f"pass a positive {name}.")
    if processes > workers:
        raise ConfigError(f"--processes {processes} is more than --workers {workers}: each process needs a worker.",
                          f"pass --workers {processes} or more.")
    per_process = -(-workers // processes)
    settings = ServeSettings(max_upload_mb=max_upload_mb, max_megapixels=max_megapixels, timeout_s=timeout,
                             workers=per_process, queue=-(-queue // processes), api_key=key,
                             allowed_hosts=[*allowed_host, *([host] if host not in ("0.0.0.0", "::", "") else [])])
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    options = predict_options("serve", backend=backend, abstain_below=abstain_below, threads=threads, tta=tta)
    # Built here even with several processes: a bad run or cascade fails now, in one line, not in N children.
    application = create_app(target, settings, options)
    import uvicorn

    model = application.state.model
    typer.echo(f"Serving {model.kind} {target} (version {model.version}) on http://{host}:{port} with {processes} "
               f"process(es) - research use only, not a diagnosis. Ctrl+C stops.")
    if processes == 1:
        uvicorn.run(application, host=host, port=port, log_level="warning", timeout_keep_alive=5)
        return
    import dataclasses
    import json

    from ..serve.app import SPEC_ENV

    del application, model
    os.environ[SPEC_ENV] = json.dumps({"target": str(target), "settings": dataclasses.asdict(settings), "options": options.model_dump()})
    uvicorn.run("medclassify.serve.app:app_from_environment", factory=True, workers=processes, host=host, port=port,
                log_level="warning", timeout_keep_alive=5)


def _api_key(given: Optional[str], key_file: Optional[Path]) -> Optional[str]:
    from ..errors import ConfigError

    if given and key_file:
        raise ConfigError("Both --api-key and --api-key-file were given.", "pass only --api-key-file.")
    if given:
        typer.echo("warning: --api-key is visible to every user of this machine (ps, /proc); prefer --api-key-file "
                   "or $MEDCLASSIFY_API_KEY.", err=True)
        return given.strip() or None
    if key_file:
        try:
            key = key_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"Cannot read the API key file {key_file} ({getattr(e, 'strerror', None) or e}).",
                              "pass a readable text file holding the key on one line.") from None
        if not key:
            raise ConfigError(f"The API key file {key_file} is empty.", "write the key into it, on one line.")
        return key
    return os.environ.get("MEDCLASSIFY_API_KEY", "").strip() or None
