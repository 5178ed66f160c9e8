"""The `switchboard` command: serve (headless), scan."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

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
    route = commands.add_parser("route", help="show which model a prompt would be routed to (a dry run)")
    route.add_argument("prompt", help="the user message")
    route.add_argument("--explain", action="store_true", help="show every candidate's score and filter reason")
    route.add_argument("--json", action="store_true", help="print the decision as JSON")
    route.add_argument("--model", default="auto", help="a model id or alias (default: auto)")
    route.add_argument("--capability", action="append", default=[], metavar="NAME",
                       help="a capability the model must have (repeatable)")
    route.add_argument("--system", help="a system message")
    route.add_argument("--session", help="a session key (as the x-session-id header)")
    route.add_argument("--url", help="the running server (default http://127.0.0.1:PORT from the config)")
    route.add_argument("--api-key", help="the server's API key (or SWITCHBOARD_API_KEY)")
    return parser


def _route(args: argparse.Namespace, config: Config) -> int:
    """Ask the running server (its router holds the live state); without one, decide from the saved state."""
    import asyncio

    import httpx

    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    body: dict[str, Any] = {"model": args.model, "messages": [*messages, {"role": "user", "content": args.prompt}]}
    if args.capability:
        body["capabilities"] = args.capability
    url = (args.url or f"http://127.0.0.1:{config.port}").rstrip("/")
    headers = {"x-session-id": args.session} if args.session else {}
    if config.api_key:
        headers["authorization"] = f"Bearer {config.api_key}"
    source = f"server at {url}"
    try:
        response = httpx.post(f"{url}/api/route", json=body, headers=headers, timeout=10)
        decision = response.json()
        if response.status_code != 200:
            print(f"switchboard: {decision.get('error', {}).get('message', response.text)}", file=sys.stderr)
            return 1
    except httpx.ConnectError:
        from app.core.engine import Engine
        from app.core.errors import SwitchboardError
        from app.core.query import translate
        from app.core.router import RouteRequest

        source = "saved state (no server running)"
        engine = Engine(config)
        try:
            asyncio.run(engine.rescan())
            request = RouteRequest("chat", args.model, tuple(args.capability), translate("chat", body),
                                   session_key=args.session)
            decision = engine.route(request).explain()
        except SwitchboardError as exc:
            print(f"switchboard: {exc.message}", file=sys.stderr)
            return 1
        finally:
            engine.store.close()
    if args.json:
        print(json.dumps(decision, indent=2))
    elif not args.explain:
        print(decision["model_id"])
    else:
        print(f"{decision['model_id']}  ({decision['strategy']}: {decision['reason']}; from the {source})")
        width = max(len(c["model_id"]) for c in decision["candidates"]) + 4
        for c in decision["candidates"]:
            name = c["model_id"] + (f"#{c['replica']}" if c.get("replica") else "")
            state = "filtered" if c["filtered"] else f"{c['score']:.3f}"
            print(f"  {name:<{width}}{state:>9}  {c['reason']}")
    return 0


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
    if args.command == "route":
        return _route(args, config)
    # No command: the desktop app once it lands; until then the server.
    return _serve(config)


if __name__ == "__main__":
    sys.exit(main())
