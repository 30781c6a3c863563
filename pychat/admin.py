"""``pychat admin``: accounts, operators and bans in the router's accounts file, from the shell.

The router keeps accounts, bans, room owners and topics in ``accounts.sqlite3`` in its data
folder (router/accounts.py). This program opens that file from another process, while the
router runs or not: SQLite's locks (WAL mode) keep the two apart, every change is one committed
transaction, and the router reads operator flags and bans from the file when it needs them, so
``pychat admin op alice`` counts at once. The subcommands are declared once, in ``SUBCOMMANDS``
(name, help, its own arguments, handler).

Invariants:

- the data folder is the router's: ``--data-dir`` and ``PYCHAT_DATA_DIR`` come from the row of
  the option table that ``pychat serve`` and ``pychat router`` are built from, so their
  defaults can never disagree; the pepper (``reset-password``) is the router's
  ``--password-pepper-file`` row, read by the router's own ``read_pepper``;
- nothing is created: a missing folder or file is "no accounts file in DIR" (exit 1), since
  every subcommand acts on accounts or bans that only the router makes;
- a password never appears on the command line: ``PYCHAT_PASSWORD``, else a prompt without echo
  asked twice; what ``/register`` would refuse is refused;
- an error is one line on stderr and exit status 1 (2: a usage error), never a traceback.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import ipaddress
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from pychat.options import by_variable
from pychat.router.accounts import (
    FILENAME,
    SERVER,
    Account,
    AccountsError,
    AccountStore,
    Ban,
    account_target,
    address_target,
)
from pychat.router.passwords import Passwords
from pychat.wire.commands import password_problem

PASSWORD_ENV = "PYCHAT_PASSWORD"  # reset-password reads the new password from it when set
BUSY_MS = 5000  # how long a write waits for the router's transaction to end


class AdminError(Exception):
    """What the operator is told on one line of stderr (exit status 1)."""


# ---- how things are shown ------------------------------------------------------------------------

def utc(stamp: float) -> str:
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def columns(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines, every column but the last padded to its widest cell."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return ["  ".join([c.ljust(w) for c, w in zip(r[:-1], widths, strict=True)] + [r[-1]]).rstrip()
            for r in rows]


def account_json(a: Account) -> dict:
    return {"name": a.name, "operator": a.operator, "created": utc(a.created)}


def ban_json(b: Ban) -> dict:
    return {"target": b.target, "room": b.room or None, "until": utc(b.until) if b.until else None,
            "reason": b.reason, "by": b.by, "created": utc(b.created)}


def ban_cells(b: Ban) -> list[str]:
    until = f"until {utc(b.until)}" if b.until else "until unban"
    end = f"by {b.by}" + (f"  reason: {b.reason}" if b.reason else "")
    return [b.target, b.room if b.room != SERVER else "server", until, end]


# ---- the subcommands -----------------------------------------------------------------------------

def known(store: AccountStore, name: str) -> Account:
    account = store.get(name)
    if account is None:
        raise AdminError(f"no account {name!r} in {store.path}")
    return account


def run_op(store: AccountStore, args: argparse.Namespace) -> int:
    account = known(store, args.name)
    if not store.set_operator(account.name, True):  # deleted meanwhile
        raise AdminError(f"no account {args.name!r} in {store.path}")
    print(f"{account.name} is an operator")
    return 0


def run_deop(store: AccountStore, args: argparse.Namespace) -> int:
    account = known(store, args.name)
    if not store.set_operator(account.name, False):
        raise AdminError(f"no account {args.name!r} in {store.path}")
    print(f"{account.name} is not an operator")
    return 0


def run_accounts(store: AccountStore, args: argparse.Namespace) -> int:
    accounts = store.accounts()
    if args.json:
        print(json.dumps([account_json(a) for a in accounts], indent=2))
        return 0
    for line in columns([[a.name, "operator" if a.operator else "-", utc(a.created)]
                         for a in accounts]):
        print(line)
    if not accounts:
        print(f"no accounts in {store.path}", file=sys.stderr)
    return 0


def run_bans(store: AccountStore, args: argparse.Namespace) -> int:
    bans = store.bans(time.time())  # those in force (the ended ones are forgotten)
    if args.json:
        print(json.dumps([ban_json(b) for b in bans], indent=2))
        return 0
    for line in columns([ban_cells(b) for b in bans]):
        print(line)
    if not bans:
        print(f"no bans in force in {store.path}", file=sys.stderr)
    return 0


def ban_targets(store: AccountStore, text: str) -> tuple[str, set[str]]:
    """(the target as shown, the targets stored for it) of ``account:NAME``, ``address:IP``,
    a bare IP address or a bare account name (names hold no ``.`` or ``:``)."""
    kind, colon, value = text.partition(":")
    if colon and kind == "account":
        account = known(store, value)
        return f"account:{account.name}", {account_target(account.id)}
    said_address = bool(colon) and kind == "address"
    address = value if said_address else text
    try:
        usual = str(ipaddress.ip_address(address))
    except ValueError:
        if said_address:
            raise AdminError(f"not an IP address: {address!r}") from None
        account = known(store, text)
        return f"account:{account.name}", {account_target(account.id)}
    # as given, and in the address's usual spelling (what the router stores)
    return f"address:{usual}", {address_target(address), address_target(usual)}


def run_unban(store: AccountStore, args: argparse.Namespace) -> int:
    shown, targets = ban_targets(store, args.target)
    lifted = sum(store.unban(t) for t in sorted(targets))
    if not lifted:
        raise AdminError(f"{shown} is not banned")
    print(f"{shown}: {lifted} ban{'s' if lifted > 1 else ''} lifted")
    return 0


def has_terminal() -> bool:
    """Whether getpass can ask without echo: a controlling terminal (POSIX), a console."""
    if os.name != "posix":
        return sys.stdin.isatty()
    try:
        with open("/dev/tty", "rb"):
            return True
    except OSError:
        return False


def new_password() -> str:
    """From PYCHAT_PASSWORD, else asked twice without echo; never a command-line word."""
    password = os.environ.get(PASSWORD_ENV, "")
    if password:
        return password
    if not has_terminal():  # getpass would read stdin, echoed, after a warning
        raise AdminError(f"no password: set {PASSWORD_ENV} or run it in a terminal")
    try:
        password = getpass.getpass("new password: ")
        again = getpass.getpass("the same again: ")
    except EOFError:
        raise AdminError(f"no password: set {PASSWORD_ENV} or run it in a terminal") from None
    if password != again:
        raise AdminError("the two passwords differ; nothing changed")
    return password


def run_reset_password(store: AccountStore, args: argparse.Namespace) -> int:
    account = known(store, args.name)
    from pychat.router.__main__ import read_pepper  # the router's own: the same bytes
    pepper = read_pepper(args.password_pepper_file)
    password = new_password()
    # what /register refuses (its parser's check is stricter: no DEL or C1 controls either)
    problem = password_problem(password)
    if problem:
        raise AdminError(f"{problem}; nothing changed")
    store.set_hash(account.id, Passwords(pepper).hash(password))
    print(f"{account.name}: password reset; its resume tokens no longer work")
    return 0


def confirmed(question: str) -> bool:
    sys.stderr.write(f"{question} [y/N] ")
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def run_delete(store: AccountStore, args: argparse.Namespace) -> int:
    account = known(store, args.name)
    if not args.yes and not confirmed(
            f"delete account {account.name} (its bans, offline messages and room ownership go; "
            f"the name is free for anyone)?"):
        raise AdminError(f"{account.name} not deleted")
    if not store.delete(account.name):
        raise AdminError(f"no account {args.name!r} in {store.path}")
    print(f"{account.name}: deleted; the name is free (its history stays)")
    return 0


# ---- the table of subcommands --------------------------------------------------------------------

def name_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", help="the account's name (any case)")


def json_switch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON [env: none]")


def pepper_option(p: argparse.ArgumentParser) -> None:
    name_argument(p)
    row = by_variable("PYCHAT_PASSWORD_PEPPER_FILE")
    replace(row, help="the router's --password-pepper-file: the new password is hashed with "
                      "it (without it, a router that has one would refuse the password)"
            ).add_to(p)
    p.add_argument("--pepper-file", dest=row.dest, default=argparse.SUPPRESS,
                   help="the same as --password-pepper-file")


def delete_arguments(p: argparse.ArgumentParser) -> None:
    name_argument(p)
    p.add_argument("--yes", action="store_true", help="do not ask first [env: none]")


def unban_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="account:NAME, address:IP, or a bare NAME or IP")


Handler = Callable[[AccountStore, argparse.Namespace], int]


@dataclass(frozen=True)
class Subcommand:
    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Handler


SUBCOMMANDS: tuple[Subcommand, ...] = (
    Subcommand("op", "make an account an operator (counts at once on a running router)",
               name_argument, run_op),
    Subcommand("deop", "make an operator an ordinary account again", name_argument, run_deop),
    Subcommand("accounts", "list the accounts: name, operator or -, created (UTC)", json_switch,
               run_accounts),
    Subcommand("bans", "list the bans in force: target, room or server, end, by, reason",
               json_switch, run_bans),
    Subcommand("unban", "lift every ban of an account or an address", unban_argument,
               run_unban),
    Subcommand("reset-password", f"set a new password (from ${PASSWORD_ENV}, else asked twice "
                                 f"without echo); the account's resume tokens stop working",
               pepper_option, run_reset_password),
    Subcommand("delete", "delete an account: its name is free again, its history stays",
               delete_arguments, run_delete),
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pychat admin",
        description="Accounts, operators and bans in the router's accounts file "
                    "(accounts.sqlite3 in its --data-dir); works while the router runs.")
    row = replace(by_variable("PYCHAT_DATA_DIR"),  # the router's row: its default, its variable
                  help="the router's data folder, which holds accounts.sqlite3")
    row.add_to(p)
    # after the subcommand too (pychat admin op alice --data-dir DIR); given there, it wins
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(row.flag, dest=row.dest, default=argparse.SUPPRESS, metavar="DATA_DIR",
                        help=f"{row.help} [env {row.env}; default {row.default_value()!r}]")
    subs = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for sub in SUBCOMMANDS:
        sp = subs.add_parser(sub.name, parents=[common], help=sub.help, description=sub.help)
        sub.arguments(sp)
        sp.set_defaults(run=sub.run)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    path = os.path.join(args.data_dir, FILENAME)
    if not os.path.isfile(path):  # nothing to act on: the router makes the file
        print(f"pychat admin: no accounts file in {args.data_dir} (the router makes {FILENAME} "
              f"there when it starts with --accounts sqlite)", file=sys.stderr)
        return 1
    store = AccountStore(path, busy_ms=BUSY_MS)
    try:
        store.open()
        return int(args.run(store, args))
    except (AdminError, AccountsError) as e:
        print(f"pychat admin: {e}", file=sys.stderr)
        return 1
    except sqlite3.Error as e:  # a lock held past BUSY_MS, a disk error
        print(f"pychat admin: accounts file {path}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("", file=sys.stderr)
        return 130
    finally:
        store.close()


if __name__ == "__main__":
    sys.exit(main())
