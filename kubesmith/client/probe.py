"""`python -m kubesmith.client.probe`: GET a path of the API server with a kubeconfig.

Exits 0 when the answer is 200 and prints the body; used by the deploy to wait for
/readyz, and handy for an operator on a host with no kubectl.
"""
from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from kubesmith.client import kubeconfig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kubesmith.client.probe")
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--server", help="override the kubeconfig's server URL")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("path", nargs="?", default="/readyz")
    args = parser.parse_args(argv)
    config = kubeconfig.load(args.kubeconfig)
    url = (args.server or config.server).rstrip("/") + args.path
    request = urllib.request.Request(url)
    if config.token:
        request.add_header("Authorization", f"Bearer {config.token}")
    try:
        with urllib.request.urlopen(request, timeout=args.timeout,
                                    context=config.ssl_context) as answer:
            sys.stdout.write(answer.read().decode(errors="replace"))
            return 0
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code}: {exc.read()[:500].decode(errors='replace')}",
              file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"{url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
