"""The `mmserve` command. The only module that exits the process."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from mmserve import __version__
from mmserve.config import Settings, load_settings
from mmserve.errors import ConfigError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"mmserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the server")
    serve.add_argument(
        "--config",
        type=Path,
        help="YAML config file (default: $MMSERVE_CONFIG, else the built-in models)",
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    config = args.config or (Path(p) if (p := os.environ.get("MMSERVE_CONFIG")) else None)
    overrides = {"host": args.host, "port": args.port, "log_level": args.log_level}
    return load_settings(config, os.environ, overrides)


def serve(settings: Settings) -> None:
    import uvicorn

    from mmserve.api.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ConfigError as exc:
        print(f"mmserve: config error: {exc.message}", file=sys.stderr)
        return 2
    serve(settings)
    return 0
