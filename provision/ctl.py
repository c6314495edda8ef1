"""kubesmithctl: operator commands on the cluster state folder.

    kubesmithctl kubeconfig                 print the admin kubeconfig's path
    kubesmithctl state-dir                  print the cluster state folder
    kubesmithctl certs check-expiration     every certificate with its expiry

Settings come from group_data/all.py in this checkout, as for the deploy.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provision import pki
from provision.settings import SettingsError, settings_from_checkout

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubesmithctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("kubeconfig", help="print the path of the admin kubeconfig")
    sub.add_parser("state-dir", help="print the cluster state folder")
    certs = sub.add_parser("certs", help="certificate commands")
    certs_sub = certs.add_subparsers(dest="certs_command", required=True)
    certs_sub.add_parser("check-expiration", help="list every certificate and its expiry")
    args = parser.parse_args(argv)

    try:
        settings = settings_from_checkout(REPO)
    except SettingsError as exc:
        print(f"kubesmithctl: {exc}", file=sys.stderr)
        return 2
    state_dir = settings.state_dir

    if args.command == "state-dir":
        print(state_dir)
        return 0
    if args.command == "kubeconfig":
        path = state_dir / "kubeconfigs" / "admin.conf"
        if not path.exists():
            print(f"kubesmithctl: no admin kubeconfig at {path} yet; run the deploy first",
                  file=sys.stderr)
            return 1
        print(path)
        return 0
    if not (state_dir / "pki").is_dir():
        print(f"kubesmithctl: no PKI in {state_dir} yet; run the deploy first", file=sys.stderr)
        return 1
    print(pki.format_expiration_table(pki.check_expiration(state_dir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
