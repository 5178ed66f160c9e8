"""The `switchboard` command: serve (headless), scan."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from app import __version__
from app.core.config import Config, ConfigError


def _server_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1; others need an API key)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8642)")
    parser.add_argument("--model-dir", action="append", default=[], metavar="DIR",
                        help="another folder to search for GGUF models (repeatable)")
    parser.add_argument("--no-discovery", action="store_true",
                        help="do not scan the usual places; serve the default model and --model-dir folders")
    parser.add_argument("--api-key", help="require this key as 'Authorization: Bearer KEY' (or SWITCHBOARD_API_KEY)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchboard", description="Local LLM model manager and request router.")
    parser.add_argument("--version", action="version", version=f"switchboard {__version__}")
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the OpenAI-compatible server without a window")
    _server_options(serve)
    scan = commands.add_parser("scan", help="list the GGUF models found on this machine, and the problems")
    scan.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scan.add_argument("paths", nargs="*", metavar="PATH", help="scan only these files or folders")
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = Config.load()
    if getattr(args, "host", None):
        config.host = args.host
    if getattr(args, "port", None) is not None:
        config.port = args.port
    if getattr(args, "api_key", None):
        config.api_key = args.api_key
    if getattr(args, "no_discovery", False):
        config.discovery = False
    config.model_dirs = [*config.model_dirs, *getattr(args, "model_dir", [])]
    return config


def _scan(args: argparse.Namespace, config: Config) -> int:
    from app.core.discovery import report
    from app.core.discovery.scan import scan, scan_paths

    result = scan_paths(args.paths) if args.paths else scan(extra_dirs=config.model_dirs)
    if args.json:
        print(json.dumps(report.to_json(result), indent=2))
    else:
        print(report.format_table(result))
    return 0


def _serve(config: Config) -> int:
    from app.server.run import StartupError, run

    try:
        run(config)
    except StartupError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"switchboard: {exc}", file=sys.stderr)
        return 2
    if args.command == "scan":
        return _scan(args, config)
    # No command: the desktop app once it lands; until then the server.
    return _serve(config)


if __name__ == "__main__":
    sys.exit(main())
