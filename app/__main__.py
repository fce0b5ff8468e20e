"""Command line: `python -m app serve [--model NAME] [--host] [--port] [--device] [--dtype] [--device-map]`,
`python -m app prepare [--model NAME]`, `python -m app atlas --job ID --out DIR [--model NAME]`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from pydantic import ValidationError

from app.atlas import build as atlas_build
from app.config import Settings
from app.corpus.datasets import DatasetStore
from app.corpus.jobstore import JobStore
from app.errors import ServiceError
from app.inspect import loading
from app.main import create_app

log = logging.getLogger("app")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="HeadScope attention-head inspector")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the web server (flags override HEADSCOPE_* variables)")
    serve.add_argument("--model", help="registry name (models/registry.toml), local directory, or hub id")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--device", help="auto, cpu, mps, cuda, cuda:1, …")
    serve.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    serve.add_argument("--device-map", dest="device_map", help="'auto' spreads a large model over several GPUs")
    serve.add_argument("--max-tokens", dest="max_tokens", type=int)
    prep = sub.add_parser("prepare", help="prepare a registry model's cached weights and exit")
    prep.add_argument("--model", help="registry name (default: HEADSCOPE_MODEL, else smollm2-135m)")
    atlas = sub.add_parser("atlas", help="write a finished corpus job's static atlas: index.html and a page per head")
    atlas.add_argument("--job", required=True, help="a job id (GET /api/jobs) in HEADSCOPE_DATA_DIR")
    atlas.add_argument("--out", required=True, type=Path, help="the folder to write (created)")
    atlas.add_argument("--model", help="the model the job ran on (default: HEADSCOPE_MODEL)")
    atlas.add_argument("--device", help="auto, cpu, cuda, …")
    return parser


def write_atlas(settings: Settings, job_id: str, out: Path) -> int:
    """Load the model, write the job's atlas into `out`, say where and how big; 2 when the job cannot have one."""
    loaded = loading.load(settings.model, settings.device, settings.dtype)
    datasets, store = DatasetStore(settings.data_dir, settings.max_dataset_texts), JobStore(settings.data_dir)
    try:
        written = atlas_build.build(loaded, datasets, store, job_id, out)
    except ServiceError as exc:
        log.error("no atlas: %s", exc)
        return 2
    finally:
        datasets.close()
        store.close()
    log.info("%s", atlas_build.summary(job_id, written))
    return 0


def setting_name(field: str) -> str:
    """How an operator spells a setting: its environment variable and, where there is one, its flag."""
    return f"HEADSCOPE_{field.upper()} (--{field.replace('_', '-')})"


def checked_settings(overrides: dict[str, Any], serving: bool = True) -> Settings | None:
    """Settings from the environment and flags, every value checked; None (after logging why) if one is bad.

    The model is resolved (registry weights prepared if needed) and its architecture and the device checked
    here, so a bad setting stops the process at start with a message naming it, not later in the background.
    """
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        for error in exc.errors():
            field = ".".join(str(p) for p in error["loc"])
            log.error("invalid setting %s: %s (got %r)", setting_name(field), error["msg"], error.get("input"))
        return None
    checks: list[tuple[str, Callable[[str], object]]] = [("model", loading.check)]
    if serving:
        checks.append(("device", loading.pick_device))
    for field, check in checks:
        try:
            log.debug("%s resolves to %s", field, check(getattr(settings, field)))
        except ValueError as exc:  # ModelNotFound and UnsupportedArchitecture are ValueErrors too
            log.error("invalid setting %s: %s", setting_name(field), exc)
            return None
    return settings


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    local = {"command", "job", "out"}  # what is not a setting
    overrides = {k: v for k, v in vars(args).items() if k not in local and v is not None}
    settings = checked_settings(overrides, serving=args.command == "serve")
    if settings is None:
        return 2
    if args.command == "prepare":
        log.info("%s ready", settings.model)
        return 0
    if args.command == "atlas":
        return write_atlas(settings, args.job, args.out)

    # uvicorn drains in-flight requests on SIGTERM, then re-raises the signal through the handler that was
    # installed before it started. A graceful drain is a clean exit, so that handler does nothing: exit 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    # The model thread runs Python too (encoding large responses). With the default 5 ms GIL switch
    # interval every GIL hand-off to the event loop can wait 5 ms, several times per request; 1 ms keeps
    # /api/health and admission prompt while a big response is being built.
    sys.setswitchinterval(0.001)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level="info", timeout_graceful_shutdown=30
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
