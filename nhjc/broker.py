"""``nhjc broker``: accounts on a secure Mosquitto (config/mosquitto/secure.conf,
docs/operations.md).

* ``nhjc broker add-gateway CREDIT_CODE``: the account of one enterprise's gateways.  The
  account name is the enterprise's credit code, and one pattern ACL (``%u``) lets every
  such account write only under ``nhjc/v1/<its code>/...``: adding an enterprise is one
  password line, with nothing per enterprise in the ACL to get wrong.
* ``nhjc broker add-service [NAME]``: the pipeline's own account, which reads every
  enterprise's topics (shared subscriptions too) and writes nothing.

The password is read from standard input (the first line; asked twice, without echo, on
a terminal), never from the command line, and is never printed.  It is hashed as
Mosquitto's PBKDF2-SHA512 (``$7$``) by ``mosquitto_passwd`` when it is installed (fed on
its standard input), otherwise here with hashlib in the same format.  Running the
command again replaces that account's password; the ACL lines are written once.  The
broker reads both files again on SIGHUP (``systemctl reload mosquitto``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import getpass
import grp
import hashlib
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TextIO

from config.settings import Settings
from ingest.credit_code import ALPHABET, check_character, is_valid

__all__ = ["GATEWAY_ACL", "BrokerError", "configure_broker", "ensure_gateway_acl", "ensure_service_acl",
           "main_broker", "pbkdf2_entry", "set_password"]

DEFAULT_PASSWORD_FILE = Path("/etc/mosquitto/nhjc/passwd")
DEFAULT_ACL_FILE = Path("/etc/mosquitto/nhjc/acl")
DEFAULT_SERVICE = "nhjc-pipeline"

GATEWAY_ACL = (
    "# Gateways: one account per enterprise, named by its credit code (nhjc broker add-gateway);",
    "# each writes only under its own prefix, for any of its gateways.",
    "pattern write nhjc/v1/%u/+/readings",
    "pattern write nhjc/v1/%u/+/items",
    "pattern write nhjc/v1/%u/+/status",
)
SERVICE_ACL = ("topic read nhjc/v1/#", "topic read $share/+/nhjc/v1/#")

_PBKDF2_ITERATIONS = 101  # what mosquitto_passwd writes; the broker reads the count from the entry
_SALT_BYTES = 12
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_MAX_PASSWORD = 1000  # under mosquitto_passwd's line buffer


class BrokerError(RuntimeError):
    """The account could not be added; the message names the problem (never the password)."""


# ------------------------------------------------------------------------- the command


def configure_broker(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    gw = sub.add_parser("add-gateway", help="add or re-key the account of one enterprise's gateways",
                        description="The password is read from standard input.")
    gw.add_argument("credit_code", metavar="CREDIT_CODE", help="the enterprise's 18-character credit code")
    svc = sub.add_parser("add-service", help="add or re-key the pipeline's own account (reads everything)",
                         description="The password is read from standard input.")
    svc.add_argument("name", nargs="?", default=None, metavar="NAME",
                     help=f"account name (default: mqtt.username, else {DEFAULT_SERVICE})")
    for q in (gw, svc):
        q.add_argument("--password-file", type=Path, default=DEFAULT_PASSWORD_FILE, metavar="FILE",
                       help=f"the broker's password_file (default {DEFAULT_PASSWORD_FILE})")
        q.add_argument("--acl-file", type=Path, default=DEFAULT_ACL_FILE, metavar="FILE",
                       help=f"the broker's acl_file (default {DEFAULT_ACL_FILE})")


def main_broker(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.action == "add-gateway":
            user = args.credit_code
            problem = credit_code_problem(user)
            if problem:
                print(f"nhjc broker: {user[:40]!r} is not a GB 32100 credit code: {problem}", file=sys.stderr)
                return 2
        else:
            user = args.name or settings.mqtt.username or DEFAULT_SERVICE
            if not _NAME.match(user) or is_valid(user):
                print(f"nhjc broker: account name {user[:70]!r}: use 1-64 letters, digits, '.', '_' or '-', "
                      "not a credit code (those are the enterprises' accounts)", file=sys.stderr)
                return 2
        password = read_password(sys.stdin)
        replaced = set_password(args.password_file, user, password)
        if args.action == "add-gateway":
            acl = ensure_gateway_acl(args.acl_file)
            what = f"may write nhjc/v1/{user}/<gateway>/readings|items|status"
        else:
            acl = ensure_service_acl(args.acl_file, user)
            what = "may read nhjc/v1/# (shared subscriptions too)"
    except BrokerError as exc:
        print(f"nhjc broker: {exc}", file=sys.stderr)
        return 1
    print(f"nhjc broker: account {user} {'re-keyed' if replaced else 'added'} in {args.password_file}; "
          f"{what} ({args.acl_file} {'updated' if acl else 'unchanged'}). "
          "Reload the broker to apply: systemctl reload mosquitto (or SIGHUP).")
    return 0


def credit_code_problem(code: str) -> str:
    """Why code is not a valid credit code ("" when it is one)."""
    if len(code) != 18:
        return f"{len(code)} characters, not 18"
    bad = sorted({c for c in code if c not in ALPHABET})
    if bad:
        return f"characters outside the code alphabet (0-9 and capitals but I, O, S, V, Z): {''.join(bad)!r}"
    if not is_valid(code):
        return f"check character {code[17]!r}, expected {check_character(code[:17])!r}"
    return ""


def read_password(stream: TextIO) -> str:
    if stream.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("password again: ") != password:
            raise BrokerError("the two passwords differ")
    else:
        password = stream.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise BrokerError("no password on standard input (give it as the first line)")
    if len(password) > _MAX_PASSWORD or any(ord(c) < 32 for c in password):
        raise BrokerError(f"the password must be one line of at most {_MAX_PASSWORD} characters "
                          "without control characters")
    return password


# ------------------------------------------------------------------------- the files


def pbkdf2_entry(user: str, password: str, salt: bytes | None = None) -> str:
    """A password-file line in Mosquitto's PBKDF2-SHA512 format (as mosquitto_passwd writes)."""
    salt = salt if salt is not None else secrets.token_bytes(_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS, 64)
    b64 = base64.b64encode
    return f"{user}:$7${_PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"


def _users(path: Path) -> list[str]:
    if not path.exists():
        return []
    return [ln.split(":", 1)[0] for ln in _read(path).splitlines() if ":" in ln]


def set_password(path: Path, user: str, password: str, use_tool: bool = True) -> bool:
    """Sets user's password in the password file (created if missing); True when the
    account was there before.  With use_tool, by mosquitto_passwd when it is installed."""
    tool = shutil.which("mosquitto_passwd") if use_tool else None
    existed = user in _users(path)
    _prepare(path)
    if tool:
        args = [tool, *([] if path.exists() else ["-c"]), str(path), user]
        # On its standard input (asked twice), so the password is on no command line.
        r = subprocess.run(args, input=f"{password}\n{password}\n", capture_output=True, text=True,
                           check=False)
        if r.returncode != 0:
            said = [ln for ln in (r.stderr + r.stdout).splitlines() if "assword:" not in ln and ln.strip()]
            raise BrokerError(f"mosquitto_passwd could not write {path}: {said[-1] if said else r.returncode}")
    else:
        lines = [ln for ln in _read(path).splitlines() if ln.split(":", 1)[0] != user] if path.exists() else []
        _write(path, "".join(f"{ln}\n" for ln in [*lines, pbkdf2_entry(user, password)]))
    _protect(path)  # mosquitto_passwd -c creates it world-readable
    return existed


def ensure_gateway_acl(path: Path) -> bool:
    """The per-enterprise pattern lines at the top of the ACL file; True when written."""
    text = _read(path) if path.exists() else ""
    have = {ln.strip() for ln in text.splitlines()}
    if all(ln in have for ln in GATEWAY_ACL if not ln.startswith("#")):
        return False
    head = "\n".join(ln for ln in GATEWAY_ACL if ln not in have)
    _prepare(path)
    _write(path, f"{head}\n\n{text}" if text else f"{head}\n")
    return True


def ensure_service_acl(path: Path, user: str) -> bool:
    """A ``user`` block that lets the account read all of nhjc's topics; True when written."""
    text = _read(path) if path.exists() else ""
    if f"user {user}" in (ln.strip() for ln in text.splitlines()):
        return False
    block = "\n".join(["# The pipeline: reads every enterprise's topics, writes none (nhjc broker add-service).",
                       f"user {user}", *SERVICE_ACL])
    _prepare(path)
    _write(path, f"{text.rstrip()}\n\n{block}\n" if text.strip() else f"{block}\n")
    return True


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise BrokerError(f"cannot read {path}: {exc}") from None


def _prepare(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BrokerError(f"cannot create {path.parent}: {exc}") from None


def _write(path: Path, text: str) -> None:
    """Replaces the file in one step, so the broker never reads half of it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        _protect(Path(tmp))
        os.replace(tmp, path)
    except OSError as exc:
        raise BrokerError(f"cannot write {path}: {exc}") from None


def _protect(path: Path) -> None:
    """Readable by its owner and the broker's group only (Mosquitto reads it as `mosquitto`)."""
    try:
        os.chmod(path, 0o640)
        if os.geteuid() == 0:
            with contextlib.suppress(KeyError):
                os.chown(path, 0, grp.getgrnam("mosquitto").gr_gid)
    except OSError as exc:
        raise BrokerError(f"cannot set the permissions of {path}: {exc}") from None
