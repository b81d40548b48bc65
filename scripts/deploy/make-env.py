#!/usr/bin/env python3
"""Write .env for the compose stacks: .env.example with every CHANGE-ME replaced by a secret.

Usage: python3 scripts/deploy/make-env.py [--example .env.example] [--output .env] [--force]

Plain standard library (no authsvc install needed). Secrets are 32 random bytes as hex, which is
safe inside URLs, JSON and Keycloak's realm file; AUTHSVC_UPLOAD_TOKEN_KEYS and
AUTHSVC_SHARE_TOKEN_KEYS get authsvc's key ring form ``kid:base64url`` with a 32-byte key. The
output file is created with mode 0600 and an existing one is never overwritten without --force
(its secrets are in use).
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import sys
from pathlib import Path

PLACEHOLDER = "CHANGE-ME"
REPO = Path(__file__).resolve().parent.parent.parent


def secret_for(name: str) -> str:
    """Return a fresh secret suited to the variable."""
    if name in ("AUTHSVC_UPLOAD_TOKEN_KEYS", "AUTHSVC_SHARE_TOKEN_KEYS"):
        key = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        return f"k{secrets.token_hex(4)}:{key}"
    return secrets.token_hex(32)


def fill(example: str) -> str:
    """Return the example text with each ``NAME=CHANGE-ME`` line given a fresh secret."""
    out = []
    for line in example.splitlines():
        name, sep, value = line.partition("=")
        if sep and not line.lstrip().startswith("#") and value.strip() == PLACEHOLDER:
            line = f"{name}={secret_for(name.strip())}"
        out.append(line)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the .env file; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=REPO / ".env.example")
    parser.add_argument("--output", type=Path, default=REPO / ".env")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.force:
        print(f"make-env: {args.output} exists (use --force to replace it)", file=sys.stderr)
        return 1
    text = fill(args.example.read_text(encoding="utf-8"))
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    fd = os.open(args.output, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    print(f"make-env: wrote {args.output} (mode 0600); keep it out of version control")
    return 0


if __name__ == "__main__":
    sys.exit(main())
