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
  mcp-auth-gateway policy test policies/            run the policies' YAML test cases
  mcp-auth-gateway pins accept --config gateway.yaml --tool 'NAME=sha256:...'   accept a changed tool
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

    test = policy_commands.add_parser(
        "test", help="run YAML policy test cases (A4)",
        description="Decide every case in DIR/tests/*.yaml (or the case files DIR names) with the policies, "
        "exactly as the gateway would, and report each case. Policies, schema and entities come from DIR "
        "(its .cedar files, mcp.cedarschema and entities.json) or from --config. "
        "Exit codes: 0 every case passed, 1 some case failed, 2 input that cannot be read (a case file, the "
        "policies, the configuration). See policies/README.md, section 'Testing policies'.",
        epilog="examples:\n  mcp-auth-gateway policy test policies/\n"
        "  mcp-auth-gateway policy test policies/examples/by-scope --schema policies/mcp.cedarschema\n"
        "  mcp-auth-gateway policy test policies/ --config gateway.yaml --junit policy-tests.xml\n"
        "  mcp-auth-gateway policy test policies/ --candidate policies-next/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument("dir", metavar="DIR", help="a policy folder (cases in DIR/tests/), a folder of case files, or one case file")
    test.add_argument("--config", "-c", metavar="FILE", help="take the policies, schema, entities, group claims, "
                      "server name and issuers from this gateway configuration (not read from $" + ENV_VAR + " here)")
    test.add_argument("--schema", metavar="FILE", help="the Cedar schema (default: DIR/mcp.cedarschema if present; not with --config)")
    test.add_argument("--entities", metavar="FILE", help="static entities (default: DIR/entities.json if present; not with --config)")
    test.add_argument("--candidate", metavar="DIR", help="a second policy folder: decide every case with it too and "
                      "print where the decisions differ (schema and entities as for the enforced set)")
    test.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML, for CI")
    explain.add_argument("--tools-list", metavar="FILE", help="a tools/list answer from the upstream: its annotations "
                         "and titles are learned first, as the gateway learns them (A1)")

    pins = commands.add_parser(
        "pins", help="accept tool definitions (authorization.tool_pins)",
        description="Work with the tool pins file (authorization.tool_pins): the tool definitions an operator "
        "has accepted. With authorization.tool_changes: deny, calls to a tool whose listed definition differs "
        "from its accepted one are refused until it is accepted here (the gateway reloads the file).",
    )
    pins_commands = pins.add_subparsers(dest="pins_command", metavar="SUBCOMMAND")
    accept = pins_commands.add_parser(
        "accept", help="accept tool definitions into the pins file",
        description="Write the given definitions into the pins file, keeping the other pins.",
        epilog="examples:\n  mcp-auth-gateway pins accept --config gateway.yaml --tool 'weather=sha256:9f2c...'\n"
        "      (the digest as the gateway's 'changed its definition' warning names it)\n"
        "  mcp-auth-gateway pins accept --config gateway.yaml --tools-list tools.json\n"
        "      (every tool of a tools/list answer, e.g. fetched from the upstream directly)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_config_argument(accept)
    accept.add_argument("--tool", action="append", default=[], metavar="NAME=DIGEST", help="one tool's definition digest")
    accept.add_argument("--tools-list", metavar="FILE", help="accept every tool of this tools/list answer")
    show = pins_commands.add_parser("show", help="print the pins file, or the digests of a tools/list answer",
                                    description="Print the pins in force, or with --tools-list the digest of each tool.")
    _add_config_argument(show)
    show.add_argument("--tools-list", metavar="FILE", help="print this answer's digests instead")
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
    from gateway.authz.candidates import candidate_config
    from gateway.authz.pins import PinsError, read_pins

    problems: list[str] = []
    try:
        policies = load_policies(config.authorization)
    except PolicyLoadError as error:
        problems.extend(error.problems)
    candidates = candidate_config(config.authorization)
    if candidates is not None:  # A5: refused at run time without stopping the gateway; a problem here
        try:
            load_policies(candidates)
        except PolicyLoadError as error:
            problems.extend(f"authorization.candidate_policies: {problem}" for problem in error.problems)
    if config.authorization.tool_pins is not None:
        try:
            read_pins(config.authorization.tool_pins)
        except PinsError as error:
            problems.append(f"authorization.tool_pins: {error}")
    if problems:
        return _report(problems)
    schema = "validated against the schema" if config.authorization.schema else "no schema given"
    print(f"{config.source}: ok ({policies.policy_count} policies, {schema})")
    return 0


def _explain(path: str | None, claims: str, request: str, tools_list: str | None = None) -> int:
    import json
    from pathlib import Path

    from gateway.authz.cedar import PolicyLoadError
    from gateway.authz.explain import explain
    from gateway.errors import BadRequest

    try:
        report = explain(load_config(path), Path(claims), Path(request), Path(tools_list) if tools_list else None)
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


def _pins(args: argparse.Namespace) -> int:
    """A2: ``pins accept`` writes accepted digests into authorization.tool_pins; ``pins show`` prints them."""
    import json
    from pathlib import Path

    from gateway.authz.explain import tools_of
    from gateway.authz.pins import DIGEST, PinsError, read_pins, write_pins
    from gateway.mcp.catalogue import definition_digest

    try:
        config = load_config(args.config)
    except ConfigError as error:
        return _report(error.problems)
    path = config.authorization.tool_pins
    listed: dict[str, str] = {}
    try:
        if args.tools_list:
            for tool in tools_of(json.loads(Path(args.tools_list).read_text(encoding="utf-8")), args.tools_list):
                if isinstance(tool, dict) and isinstance(tool.get("name"), str):
                    listed[tool["name"]] = definition_digest(tool)
        if args.pins_command == "show":
            shown = listed if args.tools_list else (read_pins(path) if path is not None else {})
            print(json.dumps({"tools": dict(sorted(shown.items()))}, indent=2, ensure_ascii=False))
            return 0
        if path is None:
            return _report([f"{config.source}: authorization.tool_pins: required to accept tool definitions"])
        for given in args.tool:
            name, _, digest = given.rpartition("=")
            if not name or not DIGEST.fullmatch(digest):
                return _report([f"--tool {given[:100]!r}: expected NAME=sha256:<64 hex digits>"])
            listed[name] = digest
        if not listed:
            return _report(["nothing to accept: give --tool NAME=DIGEST or --tools-list FILE"])
        pins = read_pins(path)
        pins.update(listed)
        write_pins(path, pins)
    except (OSError, ValueError) as error:  # PinsError is a ValueError
        return _report([str(error)])
    for name, digest in sorted(listed.items()):
        print(f"accepted {name}: {digest}")
    print(f"{path}: {len(pins)} tool(s) pinned; a running gateway reloads the file within a second")
    return 0


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
        return _explain(args.config, args.token_claims, args.request, args.tools_list)
    if args.command == "policy" and args.policy_command == "test":
        from gateway.authz.policytest import command

        return command(args.dir, config=args.config, schema=args.schema, entities=args.entities,
                       candidate=args.candidate, junit=args.junit)
    if args.command == "pins" and args.pins_command in ("accept", "show"):
        return _pins(args)
    if args.command == "demo":
        from gateway.demo.run import run_demo

        return run_demo(port=args.port)
    parser.print_help()
    return 2
