"""Command line: `python -m app serve [--model NAME] [--host] [--port] [--device] [--dtype] [--device-map]`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from app.config import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="HeadScope attention-head inspector")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start the web server (flags override HEADSCOPE_* variables)")
    serve.add_argument("--model", help="registry name (models/registry.toml), local directory, or hub id")
    serve.add_argument("--host", help="bind address (default 127.0.0.1)")
    serve.add_argument("--port", type=int)
    serve.add_argument("--device", help="auto, cpu, cuda, cuda:1, …")
    serve.add_argument("--dtype", help="auto, float32, bfloat16, float16")
    serve.add_argument("--device-map", dest="device_map", help="'auto' spreads a large model over several GPUs")
    serve.add_argument("--max-tokens", dest="max_tokens", type=int)
    prep = sub.add_parser("prepare", help="prepare a registry model's cached weights and exit")
    prep.add_argument("--model", help="registry name (default: the registry's default)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = {k: v for k, v in vars(args).items() if k != "command" and v is not None}
    settings = Settings(**overrides)
    from app.inspect import loading

    if args.command == "prepare":
        name, path = loading.resolve(settings.model)
        logging.getLogger("app").info("%s ready at %s", name, path)
        return 0
    try:
        loading.check(settings.model)  # unsupported architecture or unknown model: fail now, with a message
    except (loading.ModelNotFound, ValueError) as exc:
        logging.getLogger("app").error("%s", exc)
        return 2

    import uvicorn

    from app.main import create_app

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
