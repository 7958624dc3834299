"""`feddistill deploy …` and `feddistill cluster`: deployment files and a one-machine cluster.

`simulations/cli.py` calls `register(subparsers)`; `python -m deploy.cli …` runs the same
subcommands on their own.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from simulations.cli import resolve_config
from simulations.launcher import APP_DIR


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `deploy` and `cluster` subcommands to the `feddistill` parser."""
    deploy = subparsers.add_parser(
        "deploy", help="create certificates and keys for a SuperLink/SuperNode deployment"
    )
    deploy_commands = deploy.add_subparsers(dest="deploy_command", required=True)

    certs = deploy_commands.add_parser(
        "certs",
        help="CA, SuperLink TLS certificate and (optionally) SuperNode key pairs",
        description="Write ca.crt/ca.key, server.pem/server.key and, with --nodes N, "
        "supernodes/supernode-<i>.key/.pub into --out. Private keys get mode 0600; "
        "existing files are never overwritten.",
    )
    certs.add_argument("--out", required=True, type=Path, help="output directory")
    certs.add_argument(
        "--san",
        action="append",
        default=[],
        metavar="HOST",
        help="IP or DNS name SuperNodes use to reach the SuperLink (repeatable; "
        "127.0.0.1, ::1 and localhost are always included)",
    )
    certs.add_argument("--nodes", type=int, default=0, help="SuperNode key pairs to create")
    certs.add_argument("--days", type=int, default=365, help="certificate validity in days")
    certs.set_defaults(handler=_cmd_certs)

    node_key = deploy_commands.add_parser(
        "node-key",
        help="one SuperNode authentication key pair (run it on the SuperNode's host)",
    )
    node_key.add_argument("--out", required=True, type=Path, help="output directory")
    node_key.add_argument("--name", required=True, help="key name: writes NAME.key, NAME.pub")
    node_key.set_defaults(handler=_cmd_node_key)

    identity = deploy_commands.add_parser(
        "node-identity",
        help="a node's own SecAgg+ identity (run it on the SuperNode's host)",
        description="Write NAME.secagg.key (0600: it never leaves this host) and "
        "NAME.secagg.pub (send it to the operator, who builds the roster from such files).",
    )
    identity.add_argument("--out", required=True, type=Path, help="output directory")
    identity.add_argument("--name", required=True, help="the node's roster name")
    identity.set_defaults(handler=_cmd_node_identity)

    roster = deploy_commands.add_parser(
        "roster",
        help="the SecAgg+ roster from the nodes' public identity files, and its fingerprint",
        description="Write the roster (public keys only) and print its SHA-256 fingerprint: "
        "every node operator compares it out of band and pins it in their node config "
        "(secagg-roster-sha256), so no node accepts a roster the server alone made.",
    )
    roster.add_argument("--out", required=True, type=Path, help="roster file to write")
    roster.add_argument("public", nargs="+", type=Path, help="NAME.secagg.pub files")
    roster.set_defaults(handler=_cmd_roster)

    app_key = deploy_commands.add_parser(
        "app-key",
        help="an Ed25519 key pair that signs app bundles (FABs) SuperNodes may run",
        description="Write NAME.key (0600) and NAME.pub into --out. Whoever reviews the app "
        "(each data owner, or someone they trust) holds the private key; SuperNodes list the "
        ".pub in their --trusted-entities file.",
    )
    app_key.add_argument("--out", required=True, type=Path, help="output directory")
    app_key.add_argument("--name", required=True, help="key name: writes NAME.key, NAME.pub")
    app_key.set_defaults(handler=_cmd_app_key)

    trust = deploy_commands.add_parser(
        "trusted-entities",
        help="the --trusted-entities file of a SuperNode: the app-signing keys it accepts",
    )
    trust.add_argument("--out", required=True, type=Path, help="YAML file to create")
    trust.add_argument("public_keys", nargs="+", type=Path, metavar="KEY.pub")
    trust.set_defaults(handler=_cmd_trusted_entities)

    sign = deploy_commands.add_parser(
        "sign-app",
        help="build the app's FAB and sign it",
        description="Build the FAB of --app (deterministic: the same sources give the same "
        "bytes) into --out, and write a signature file beside it. Review the sources first: "
        "SuperNodes that trust this key will run this code on their data.",
    )
    sign.add_argument("--key", required=True, type=Path, help="app-signing private key")
    sign.add_argument("--out", required=True, type=Path, help="directory for .fab and .sig.json")
    sign.add_argument("--app", type=Path, default=APP_DIR, help="app directory (this repo)")
    sign.set_defaults(handler=_cmd_sign_app)

    serve = deploy_commands.add_parser(
        "serve-apps",
        help="serve signed FABs to a SuperLink (an app registry on a private network)",
        description="Serve the FAB with its signatures until Ctrl-C. Start the SuperLink with "
        "FLWR_SUPERGRID_API_URL=http://HOST:PORT and launch with "
        "`flwr run @publisher/name==VERSION CONNECTION`.",
    )
    serve.add_argument("--fab", required=True, type=Path, help="the .fab file")
    serve.add_argument(
        "--signature",
        required=True,
        action="append",
        type=Path,
        metavar="SIG.json",
        help="a signature file of that FAB (repeatable: one per signer)",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=9095, help="port to listen on")
    serve.set_defaults(handler=_cmd_serve_apps)

    run_config = deploy_commands.add_parser(
        "run-config",
        help="write the full run config for `flwr run --run-config FILE` on a deployment",
    )
    run_config.add_argument("--config", default="default", help="named config or TOML path")
    run_config.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run_config.add_argument(
        "--out", required=True, help="absolute results directory on the SuperLink host"
    )
    run_config.add_argument("--file", type=Path, help="write here instead of to stdout")
    run_config.set_defaults(handler=_cmd_run_config)

    data = deploy_commands.add_parser(
        "data",
        help="split a config's data into one folder per host (server/, node-<i>/)",
        description="Write the ServerApp host's public and test sets and, per node, its "
        "private partition and its own public copy, each in its own folder, and print the "
        "run-config keys and the --node-config of every SuperNode.",
    )
    data.add_argument("--config", default="default", help="named config or TOML path")
    data.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    data.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    data.add_argument("--out", type=Path, required=True, help="folder to write into")
    data.set_defaults(handler=_cmd_data)

    cluster = subparsers.add_parser(
        "cluster",
        help="run on a real SuperLink + SuperNodes on this machine (TLS + node auth)",
        description="Start a SuperLink with TLS and SuperNode authentication and N "
        "authenticated SuperNodes on free loopback ports, run one experiment with "
        "`flwr run`, collect the run directory and stop everything.",
    )
    cluster.add_argument(
        "--nodes",
        type=int,
        help="number of SuperNodes, node i serving partition i from its own files (default 3)",
    )
    cluster.add_argument(
        "--node-config",
        action="append",
        default=[],
        metavar="'KEY=VALUE ...'",
        help="one SuperNode per use, with this node config, e.g. \"data-path='/d/a.npz'\" "
        "(instead of --nodes)",
    )
    cluster.add_argument("--config", default="default", help="named config or TOML path")
    cluster.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    cluster.add_argument("--out", help="results directory (default runs/<timestamp>)")
    cluster.add_argument("--timeout", type=float, help="seconds before the run is abandoned")
    cluster.add_argument(
        "--workdir",
        type=Path,
        help="keep certificates, keys and Flower state here (default: a temporary directory)",
    )
    cluster.add_argument(
        "--insecure",
        action="store_true",
        help="LOCAL DEMO ONLY: no TLS and no SuperNode authentication",
    )
    cluster.set_defaults(handler=_cmd_cluster)


def _cmd_certs(args: argparse.Namespace) -> int:
    from deploy.certs import generate_deployment_files

    files = generate_deployment_files(args.out, args.san, nodes=args.nodes, days=args.days)
    server = files.server
    print(f"feddistill: wrote to {args.out.resolve()}")
    print(f"  CA certificate      {server.ca_cert}  (give to every SuperNode and flwr user)")
    print(f"  CA private key      {server.ca_key}  (operator only; keep offline)")
    print(f"  SuperLink cert/key  {server.server_cert}, {server.server_key}")
    print(f"  SANs                {', '.join(server.sans)}")
    for pair in files.nodes:
        print(f"  {pair.name:<19} {pair.private_key} (node only), {pair.public_key} (register)")
    return 0


def _cmd_node_identity(args: argparse.Namespace) -> int:
    from common.secagg.identity import create_node_identity

    private, public = create_node_identity(args.out, args.name)
    print(f"feddistill: SecAgg+ identity {private} (this host only, node config secagg-identity)")
    print(f"feddistill: public identity {public} (send it to the operator)")
    return 0


def _cmd_roster(args: argparse.Namespace) -> int:
    from common.secagg.identity import Roster

    if args.out.exists():
        raise ValueError(f"refusing to overwrite {str(args.out)!r}")
    roster = Roster.from_public_files(args.public)
    roster.save(args.out)
    print(f"feddistill: roster of {len(roster)} members written to {args.out}")
    print(f"secagg-roster-sha256={roster.fingerprint()}")
    print("Every node operator compares this fingerprint out of band before pinning it.")
    return 0


def _cmd_node_key(args: argparse.Namespace) -> int:
    from deploy.certs import generate_node_key

    pair = generate_node_key(args.out, args.name)
    print(f"feddistill: private key {pair.private_key} (stays on this host, mode 0600)")
    print(f"feddistill: public key  {pair.public_key} (send to the SuperLink operator)")
    return 0


def _cmd_app_key(args: argparse.Namespace) -> int:
    from deploy.app_signing import generate_app_signing_key

    key = generate_app_signing_key(args.out, args.name)
    print(f"feddistill: app-signing key {key.private_key} (its holder signs apps; mode 0600)")
    print(f"feddistill: public key      {key.public_key} (key id {key.key_id})")
    return 0


def _cmd_trusted_entities(args: argparse.Namespace) -> int:
    from deploy.app_signing import write_trusted_entities

    path = write_trusted_entities(args.out, args.public_keys)
    print(f"feddistill: wrote {path}; start the SuperNode with --trusted-entities {path}")
    return 0


def _cmd_sign_app(args: argparse.Namespace) -> int:
    import hashlib

    from deploy.app_signing import app_spec, build_app, sign_app

    fab = build_app(args.app.resolve())
    digest = hashlib.sha256(fab).hexdigest()
    spec = app_spec(fab)
    stem = spec.removeprefix("@").replace("/", ".").replace("==", ".") + f".{digest[:8]}"
    fab_path = args.out / f"{stem}.fab"
    if fab_path.exists() and fab_path.read_bytes() != fab:
        raise ValueError(f"{fab_path} exists with other contents; refusing to overwrite it")
    signature = sign_app(fab, args.key)
    sig_path = args.out / f"{stem}.{signature.public_key_id}.sig.json"
    args.out.mkdir(parents=True, exist_ok=True)
    fab_path.write_bytes(fab)
    sig_path.write_text(signature.to_json() + "\n")
    print(f"feddistill: {spec}, FAB SHA-256 {digest}")
    print(f"feddistill: FAB {fab_path}\nfeddistill: signature {sig_path}")
    return 0


def _cmd_serve_apps(args: argparse.Namespace) -> int:
    from deploy.app_registry import REGISTRY_URL_ENV, AppRegistry
    from deploy.app_signing import AppSignature

    registry = AppRegistry()
    signatures = [AppSignature.from_json(path.read_text()) for path in args.signature]
    spec = registry.publish(args.fab.read_bytes(), signatures)
    with _sigterm_as_exit(), registry.serve(args.host, args.port) as url:
        print(f"feddistill: serving {spec} with {len(signatures)} signature(s) at {url}")
        print(f"feddistill: start the SuperLink with {REGISTRY_URL_ENV}={url}, then")
        print(f"feddistill: flwr run {spec} CONNECTION --run-config run.toml --stream")
        print("feddistill: Ctrl-C stops", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from deploy.cluster import node_config_arg
    from deploy.data_files import write_deployment_data

    config = resolve_config(args.config, args.set, None)
    data = write_deployment_data(config, args.out.resolve(), args.nodes)
    keys = " ".join(f"{key}='{value}'" for key, value in data.run_config_changes().items())
    print(f"ServerApp host: add to the run config: {keys}")
    for i, node_config in enumerate(data.node_configs()):
        print(f'node {i}: flower-supernode ... --node-config "{node_config_arg(node_config)}"')
    print(f"feddistill: each party's files are under {args.out.resolve()}")
    return 0


def _cmd_run_config(args: argparse.Namespace) -> int:
    from simulations.launcher import run_config_toml

    if not Path(args.out).is_absolute():
        raise ValueError(f"--out must be an absolute path on the SuperLink host, got {args.out!r}")
    text = run_config_toml(resolve_config(args.config, args.set, args.out))
    if args.file is None:
        sys.stdout.write(text)
    else:
        args.file.write_text(text)
        print(f"feddistill: run config written to {args.file}", file=sys.stderr)
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from common.data import load_splits
    from deploy.cluster import NodeConfigValue, parse_node_config, run_cluster

    if args.nodes is not None and args.node_config:
        raise ValueError("give either --nodes or --node-config (one per SuperNode), not both")
    nodes: int | list[dict[str, NodeConfigValue]] = 3 if args.nodes is None else args.nodes
    if args.node_config:
        nodes = [parse_node_config(text) for text in args.node_config]
    config = resolve_config(args.config, args.set, args.out)
    if isinstance(nodes, int) and config.num_clients != nodes:
        print(
            f"feddistill: the config has num_clients={config.num_clients}; deploying {nodes} "
            "SuperNodes, one partition each",
            flush=True,
        )
    print(f"feddistill: preparing data ({config.dataset}) …", flush=True)
    load_splits(config)  # generate/cache once, before the SuperNodes start
    with _sigterm_as_exit():
        try:
            result = run_cluster(
                config,
                nodes=nodes,
                insecure=args.insecure,
                workdir=args.workdir.resolve() if args.workdir else None,
                timeout=args.timeout,
                stream_to=sys.stdout,
                progress=lambda text: print(text, flush=True),
            )
        except TimeoutError as error:
            raise RuntimeError(str(error)) from error
    summary = result.summary
    print(
        f"feddistill: done in {summary['wall_seconds']:.0f}s — "
        f"{summary['rounds_completed']}/{summary['rounds']} rounds, student accuracy "
        f"{summary.get('student_accuracy', float('nan')):.4f}\n"
        f"results: {result.out_dir}\nlogs: {result.logs_dir}",
        flush=True,
    )
    return 0


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    # SIGTERM would end Python without unwinding; as SystemExit, owned_processes stops the
    # SuperLink and SuperNodes first.
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run the deployment subcommands without the rest of `feddistill`."""
    parser = argparse.ArgumentParser(prog="python -m deploy.cli", description=__doc__)
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, RuntimeError) as error:
        print(f"feddistill: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
