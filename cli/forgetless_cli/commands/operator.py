"""`forgetless operator`: run the Kubernetes operator (kopf) that reconciles FineTuneJobs.

kopf and the operator package are imported inside `main` only, so the rest of the CLI does not
pay for them (and the trainer image need not ship them).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

from forgetless import exit_codes, contract

NAME = "operator"
HELP = "run the FineTuneJob operator against the cluster in $KUBECONFIG or the pod's service account"


def configure(parser: argparse.ArgumentParser) -> None:
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; globs like team-* allowed)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace")
    parser.add_argument("--metrics-port", type=int, default=8080,
                        help="port of /metrics, /healthz and /readyz (default 8080)")
    parser.add_argument("--metrics-host", default="0.0.0.0", help="address to bind the metrics server to")
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument("--peering", metavar="NAME", default=None,
                         help="kopf peering name: several replicas, one active (needs the KopfPeering CRDs)")
    peering.add_argument("--standalone", action="store_true", help="one replica, no peering (the default)")
    parser.add_argument("--trainer-image", default=os.environ.get(contract.TRAINER_IMAGE_ENV),
                        help="default trainer image for stage pods (env FORGETLESS_TRAINER_IMAGE)")
    parser.add_argument("--resync-seconds", type=float, default=30.0,
                        help="re-check every job this often (deadlines, TTL, missed events); default 30")
    parser.add_argument("--progress-seconds", type=float, default=15.0,
                        help="read running stages' progress into status.trainerStatus this often (0: never); "
                             "default 15")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")


def main(args: argparse.Namespace) -> int:
    if not args.namespace and not args.all_namespaces:
        namespace = os.environ.get(contract.NAMESPACE_ENV) or os.environ.get("POD_NAMESPACE")
        if not namespace:
            print("forgetless operator: choose --namespace NS (repeatable) or --all-namespaces", file=sys.stderr)
            return exit_codes.USAGE
        args.namespace = [namespace]
    if args.progress_seconds < 0:
        print(f"--progress-seconds {args.progress_seconds:g}: use 0 (off) or a positive number of seconds",
              file=sys.stderr)
        return exit_codes.USAGE
    if not 0 < args.metrics_port < 65536:
        print(f"--metrics-port {args.metrics_port}: use a port between 1 and 65535", file=sys.stderr)
        return exit_codes.USAGE
    import asyncio
    import logging

    from forgetless_operator.finetunejob.children import OperatorConfig
    from forgetless_operator.handlers import Options, run_operator

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = OperatorConfig(trainer_image=args.trainer_image) if args.trainer_image else OperatorConfig()
    options = Options(
        namespaces=list(args.namespace),
        all_namespaces=args.all_namespaces,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        peering=args.peering,
        resync_seconds=args.resync_seconds,
        progress_seconds=args.progress_seconds,
        config=config,
        instance=os.environ.get("POD_NAME") or socket.gethostname(),
    )
    try:
        asyncio.run(run_operator(options))
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED
    return exit_codes.OK
