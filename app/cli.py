"""The `switchboard` command: the desktop app (gui), serve (headless), scan, route, pull, keys."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app import __version__
from app.core.config import Config, ConfigError

if TYPE_CHECKING:
    from app.core.keys import ApiKey


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
    gui = commands.add_parser("gui", help="open the desktop app (window, tray and the server in one process)")
    _server_options(gui)
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
    pull = commands.add_parser("pull", help="download a GGUF model from the Hugging Face hub into its cache")
    pull.add_argument("model", help="owner/repo or owner/repo:quant (Q4_K_M, else the smallest, when left out)")
    pull.add_argument("--url", help="the running server (default http://127.0.0.1:PORT from the config)")
    pull.add_argument("--api-key", help="the server's API key (or SWITCHBOARD_API_KEY)")
    _keys_parser(commands.add_parser("keys", help="add, list and revoke the API keys clients send"))
    return parser


def _keys_parser(keys: argparse.ArgumentParser) -> None:
    from app.core.keys import SCOPES, KeySpec

    field = KeySpec.model_fields
    actions = keys.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="create a key and print its secret (shown this once only)")
    add.add_argument("name", help=field["name"].description)
    add.add_argument("--scope", choices=SCOPES, default=field["scope"].default, help=field["scope"].description)
    add.add_argument("--tokens-per-hour", type=int, metavar="N", help=field["tokens_per_hour"].description)
    add.add_argument("--requests-per-hour", type=int, metavar="N", help=field["requests_per_hour"].description)
    listing = actions.add_parser("list", help="the keys: name, scope, created, last used, quotas (never a secret)")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    revoke = actions.add_parser("revoke", help="delete a key: requests sending it get 401 at once")
    revoke.add_argument("name")


def _keys(args: argparse.Namespace, config: Config) -> int:
    """Works on the store itself, so it needs no running server (and a running one sees the change at once)."""
    from app.core import paths
    from app.core.errors import SwitchboardError
    from app.core.keys import KeyRing, KeySpec
    from app.core.routing.quota import QuotaManager
    from app.core.storage.store import Store

    store = Store(paths.database_path())
    ring = KeyRing(store, QuotaManager(store), config)
    try:
        if args.action == "add":
            key, secret = ring.add(KeySpec.parse(name=args.name, scope=args.scope,
                                                 tokens_per_hour=args.tokens_per_hour,
                                                 requests_per_hour=args.requests_per_hour))
            print(f"Created the {key.scope} key '{key.name}'. Its secret, shown this once only:", file=sys.stderr)
            print(secret)
        elif args.action == "revoke":
            ring.revoke(args.name)
            print(f"Revoked the key '{args.name}'")
        elif args.json:
            print(json.dumps(ring.report(), indent=2))
        else:
            print(_keys_table(ring.all()))
    except SwitchboardError as exc:
        print(f"switchboard: {exc.message}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return 0


def _keys_table(keys: list[ApiKey]) -> str:
    if not keys:
        return "No API keys are stored (switchboard keys add NAME creates one)"

    def when(t: float | None) -> str:
        return "never" if t is None else time.strftime("%Y-%m-%d %H:%M", time.localtime(t))

    rows = [("NAME", "SCOPE", "CREATED", "LAST USED", "TOKENS/H", "REQUESTS/H")]
    rows += [(k.name, k.scope, when(k.created), when(k.last_used), str(k.limits.tokens_per_hour or "-"),
              str(k.limits.requests_per_hour or "-")) for k in keys]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def _route(args: argparse.Namespace, config: Config) -> int:
    """Ask the running server (its router holds the live state); without one, decide from the saved state."""
    import asyncio

    import httpx

    messages = ([{"role": "system", "content": args.system}] if args.system else [])
    body: dict[str, Any] = {"model": args.model, "messages": [*messages, {"role": "user", "content": args.prompt}]}
    if args.capability:
        body["capabilities"] = args.capability
    url, headers = _server(args, config)
    if args.session:
        headers["x-session-id"] = args.session
    source = f"server at {url}"
    try:
        response = httpx.post(f"{url}/api/route", json=body, headers=headers, timeout=10)
        decision = response.json()
        if response.status_code != 200:
            print(f"switchboard: {decision.get('error', {}).get('message', response.text)}", file=sys.stderr)
            return 1
    except httpx.ConnectError:
        from app.core.errors import SwitchboardError
        from app.core.routing.needs import translate
        from app.core.routing.request import RouteRequest
        from app.core.services import Services

        source = "saved state (no server running)"
        services = Services.create(config)
        try:
            asyncio.run(services.models.rescan())
            request = RouteRequest("chat", args.model, tuple(args.capability), translate("chat", body),
                                   session_key=args.session)
            decision = services.routing.route(request).explain()
        except SwitchboardError as exc:
            print(f"switchboard: {exc.message}", file=sys.stderr)
            return 1
        finally:
            services.close_store()
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


def _server(args: argparse.Namespace, config: Config) -> tuple[str, dict[str, str]]:
    """Where the running server listens, and the headers that let this command in."""
    url = (args.url or f"http://127.0.0.1:{config.port}").rstrip("/")
    return url, ({"authorization": f"Bearer {config.api_key}"} if config.api_key else {})


def _pull(args: argparse.Namespace, config: Config) -> int:
    """Through the running server (its registry gets the model at once); without one, here, into the same cache
    and store. Progress on stderr, the new model's id on stdout."""
    import httpx

    url, headers = _server(args, config)
    try:
        with httpx.stream("POST", f"{url}/api/models/pull", json={"model": args.model}, headers=headers,
                          timeout=httpx.Timeout(30, read=None)) as response:
            if response.status_code != 200:
                response.read()
                try:
                    message = response.json().get("error", {}).get("message", response.text)
                except ValueError:
                    message = response.text
                print(f"switchboard: {message}", file=sys.stderr)
                return 1
            for line in response.iter_lines():
                code = _show_pull(json.loads(line[5:])) if line.startswith("data:") else None
                if code is not None:
                    return code
        print("\nswitchboard: the server ended the pull without a result", file=sys.stderr)
        return 1
    except httpx.ConnectError:
        return _pull_here(args.model, config)
    except KeyboardInterrupt:  # closing the stream cancels the server's pull
        print("\nswitchboard: pull cancelled", file=sys.stderr)
        return 130


def _pull_here(spec: str, config: Config) -> int:
    import asyncio

    from app.core.errors import SwitchboardError
    from app.core.services import Services

    services = Services.create(config)

    async def pulled() -> int:
        pull = await services.library.pull(spec)
        try:
            async for event in pull.events():
                code = _show_pull(event)
                if code is not None:
                    return code
            return 1  # unreachable: the events end with done or error
        finally:
            pull.cancel()  # a no-op once it ended; on Ctrl-C, stops the download thread

    try:
        return asyncio.run(pulled())
    except SwitchboardError as exc:
        print(f"switchboard: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nswitchboard: pull cancelled", file=sys.stderr)
        return 130
    finally:
        services.close_store()


def _show_pull(event: dict[str, Any]) -> int | None:
    """One progress line, rewritten in place; at the end the model id (stdout) or the error, and the exit code."""
    kind = event.get("event")
    if kind == "start":
        print(f"Pulling {event['repo']}: {', '.join(event['files'])}", file=sys.stderr)
    elif kind == "progress":
        done, total = event["done"], max(1, event["total"])
        print(f"\r  {done / 2**20:,.1f} / {total / 2**20:,.1f} MiB  {100 * done // total:3d}%", end="",
              file=sys.stderr, flush=True)
    elif kind == "done":
        print(file=sys.stderr)
        print(event["model"])
        return 0
    elif kind == "error":
        print(f"\nswitchboard: {event.get('message')}", file=sys.stderr)
        return 1
    return None


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
    from app.core.catalog.discovery import report
    from app.core.catalog.discovery.scan import scan, scan_paths

    result = scan_paths(args.paths, check_architectures=True) if args.paths else \
        scan(extra_dirs=config.model_dirs, check_architectures=True)
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


def has_display() -> bool:
    """Whether a window can open: a display server, or a Qt platform chosen explicitly (offscreen, xcb...)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return any(os.environ.get(name) for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"))


def _gui(config: Config, *, fallback: bool) -> int:
    """The desktop app; with `fallback` (no command given), the headless server when Qt cannot start."""
    try:
        from app.ui.app import run_gui
    except ImportError as exc:
        if not fallback:
            print(f"switchboard: the desktop app cannot start: {exc}", file=sys.stderr)
            return 2
        print(f"switchboard: no desktop app ({exc}); serving without a window", file=sys.stderr)
        return _serve(config)
    return run_gui(config)


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
    if args.command == "pull":
        return _pull(args, config)
    if args.command == "keys":
        return _keys(args, config)
    if args.command == "serve":
        return _serve(config)
    if args.command == "gui":
        return _gui(config, fallback=False)
    # No command: the desktop app where a window can open, else the headless server.
    return _gui(config, fallback=True) if has_display() else _serve(config)


if __name__ == "__main__":
    sys.exit(main())
