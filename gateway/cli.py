"""The ``mcp-auth-gateway`` command: serve, validate, demo."""

from __future__ import annotations

import argparse
import sys

from gateway import __version__
from gateway.config import ENV_VAR, ConfigError, load_config

DESCRIPTION = """\
An OAuth 2.1 resource server and Cedar authorization gateway for MCP servers.

It sits in front of one MCP server (usually as a sidecar in the same pod), checks every
request's access token, decides every MCP call with Cedar policies, and forwards what is
allowed, without ever passing the client's token on.
"""

EPILOG = f"""\
examples:
  mcp-auth-gateway demo                          try it: demo MCP server, issuer and gateway
  mcp-auth-gateway validate --config gateway.yaml   check a configuration, offline
  mcp-auth-gateway serve --config gateway.yaml      run the gateway
  mcp-auth-gateway config schema > gateway.schema.json   the JSON Schema editors validate gateway.yaml with

The configuration file may also be given in ${ENV_VAR}.
"""


def _add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", "-c", metavar="FILE",
        help=f"the gateway's YAML configuration (default: ${ENV_VAR})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcp-auth-gateway", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway", description="Run the gateway until SIGTERM.")
    _add_config_argument(serve)

    validate = commands.add_parser(
        "validate", help="check a configuration file without starting anything",
        description="Check the configuration (and the policies it names) offline. Lists every problem; "
        "exits 1 when there is any.",
    )
    _add_config_argument(validate)

    demo = commands.add_parser(
        "demo", help="run a self-contained demo on 127.0.0.1",
        description="Start a demo MCP server, a development issuer (for demonstration only) and the "
        "gateway in front of them, all on 127.0.0.1, and print a walkthrough.",
    )
    demo.add_argument("--port", type=int, default=8080, help="the gateway's port (default 8080)")

    config = commands.add_parser("config", help="work with the configuration file", description="Work with the configuration file.")
    config_commands = config.add_subparsers(dest="config_command", metavar="SUBCOMMAND")
    config_commands.add_parser(
        "schema", help="print the JSON Schema of gateway.yaml",
        description="Print the JSON Schema of gateway.yaml, generated from the configuration loader (the same as "
        "docs/gateway.schema.json). Editors validate with it: put `# yaml-language-server: $schema=<path or URL>` "
        "at the top of gateway.yaml.",
    )

    policy = commands.add_parser("policy", help="work with Cedar policies", description="Work with Cedar policies.")
    policy_commands = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND")
    explain = policy_commands.add_parser(
        "explain", help="show why a request would be allowed or denied",
        description="Evaluate one JSON-RPC request for a token with the given claims, offline, and print the "
        "decision, the deciding policies, the scopes, and the entities and context Cedar saw.",
        epilog="example:\n  mcp-auth-gateway policy explain --config gateway.yaml \\\n"
        "      --token-claims alice.json --request call.json\n\n"
        'alice.json: {"iss": "https://idp.example.com", "sub": "alice", "scope": "mcp", "groups": ["admins"]}\n'
        'call.json:  {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_argument(explain)
    explain.add_argument("--token-claims", required=True, metavar="FILE", help="a JSON object: the access token's claims")
    explain.add_argument("--request", required=True, metavar="FILE", help="a JSON-RPC request (or batch) as a client would POST it")
    return parser


def _validate(path: str | None) -> int:
    """Configuration, then the policies, schema and entities it names: every problem, no network."""
    from gateway.authz.cedar import PolicyLoadError, load_policies

    try:
        config = load_config(path)
    except ConfigError as error:
        return _report(error.problems)
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        policies = load_policies(config.authorization)
    except PolicyLoadError as error:
        return _report(error.problems)
    schema = "validated against the schema" if config.authorization.schema else "no schema given"
    print(f"{config.source}: ok ({policies.policy_count} policies, {schema})")
    return 0


def _explain(path: str | None, claims: str, request: str) -> int:
    import json
    from pathlib import Path

    from gateway.authz.cedar import PolicyLoadError
    from gateway.authz.explain import explain
    from gateway.errors import BadRequest

    try:
        report = explain(load_config(path), Path(claims), Path(request))
    except ConfigError as error:
        return _report(error.problems)
    except PolicyLoadError as error:
        return _report(error.problems)
    except BadRequest as error:
        return _report([f"{request}: {error.reason}: {error.detail}"])
    except (OSError, ValueError) as error:
        return _report([str(error)])
    print(json.dumps(report, indent=2))
    return 0 if report["result"] == "allow" else 3


def _report(problems: list[str]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(problems)} problem(s) found", file=sys.stderr)
    return 1


def _serve(path: str | None) -> int:
    from gateway.app import run, serve
    from gateway.observe.logs import configure_logging

    from gateway.authz.cedar import PolicyLoadError

    try:
        config = load_config(path)
    except ConfigError as error:
        return _report(error.problems)
    configure_logging(config.logging.level, config.logging.format)
    for warning in config.warnings:
        import logging

        logging.getLogger("gateway").warning("%s", warning)
    try:
        if config.server.workers > 1:  # P4
            from gateway.authz.cedar import load_policies
            from gateway.workers import run_workers

            load_policies(config.authorization)  # broken policies stop the start here, once, not per worker
            return run_workers(config)
        run(serve(config))  # on uvloop when installed (P1)
    except PolicyLoadError as error:  # Z2: a start with broken policies stops, naming file and line
        return _report(error.problems)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args.config)
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "config" and args.config_command == "schema":  # O5
        from gateway.config_schema import schema_text

        sys.stdout.write(schema_text())
        return 0
    if args.command == "policy" and args.policy_command == "explain":
        return _explain(args.config, args.token_claims, args.request)
    if args.command == "demo":
        from gateway.demo.run import run_demo

        return run_demo(port=args.port)
    parser.print_help()
    return 2
