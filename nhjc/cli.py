"""The ``nhjc`` command.  Each subcommand lives in the module that owns it: for a
command ``foo-bar`` the module exposes ``configure_foo_bar(parser)`` (optional) to add
its options and ``main_foo_bar(args, settings) -> int``."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import NoReturn

from config.settings import SettingsError, load_settings

__all__ = ["main"]

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("nhjc.service", "run the service until SIGTERM/SIGINT"),
    "migrate": ("nhjc.admin", "create or upgrade the database schema"),
    "items": ("nhjc.admin", "manage the data-item registry (items load FILE)"),
    "enterprises": ("nhjc.admin", "manage the enterprise registry (enterprises load FILE, enterprises list)"),
    "meters": ("nhjc.meters_admin",
               "the measuring-instrument registry (meters load FILE, meters list [--enterprise CODE],"
               " meters report [--enterprise CODE] [--format table|json|csv],"
               " meters replace --enterprise CODE --data-code CODE --time T --old-final X --new-initial Y)"),
    "uplink": ("nhjc.uplink_admin",
               "records the platforms refused (uplink rejected [--target NAME] [--limit N],"
               " uplink resend --target NAME --enterprise CODE)"),
    "quality": ("nhjc.quality", "the platforms' scorecard (quality report [--enterprise CODE] [--month YYYY-MM]"
                                " [--format table|json|csv])"),
    "simulate": ("nhjc.simulate", "publish realistic readings for pilot enterprises"),
    "mock-platform": ("tools.platform.mock", "run a local provincial/national platform"),
    "demo": ("nhjc.demo", "everything together on this machine, with a live summary"),
    "broker": ("nhjc.broker", "accounts on a secure broker (broker add-gateway CREDIT_CODE, broker add-service)"),
}


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (start-up errors are one line), still exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    # Two passes, so only the chosen command's module is imported: one command's
    # dependencies never slow down or break another's start.
    parser = _Parser(prog="nhjc", description="NHJC energy-consumption monitoring pipeline")
    parser.add_argument("--config", help="TOML settings file (the NHJC_ environment wins over it)")
    parser.add_argument("--log-level", default="INFO", type=str.upper, choices=LOG_LEVELS,
                        help=", ".join(LOG_LEVELS) + " (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    args, rest = parser.parse_known_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    command = _Parser(prog=f"nhjc {args.command}", description=COMMANDS[args.command][1])
    configure = getattr(module, f"configure_{args.command.replace('-', '_')}", None)
    if configure is not None:
        configure(command)
    return command.parse_args(rest, namespace=args)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = load_settings(args.config)
    except SettingsError as exc:
        print(f"nhjc: {exc}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[args.command][0])
    return int(getattr(module, f"main_{args.command.replace('-', '_')}")(args, settings) or 0)


if __name__ == "__main__":
    sys.exit(main())
