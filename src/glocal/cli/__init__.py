"""The ``glocal`` command line: one module per subcommand, each parsing into plain arguments of library calls."""

from __future__ import annotations

import logging
import sys

from glocal.backends import cpu as cpu_backend
from glocal.cli import attention, bench, convert, export, info, predict, routes, summary, train, validate, weights
from glocal.cli import eval as eval_cmd
from glocal.cli import list as list_cmd
from glocal.cli._args import Parser
from glocal.runtime import keep_freed_memory

__all__ = ["main"]

_COMMANDS = {"list": list_cmd, "info": info, "summary": summary, "convert": convert, "bench": bench}
_COMMANDS |= {"train": train, "eval": eval_cmd, "predict": predict, "export": export, "attention": attention}
_COMMANDS |= {"weights": weights, "validate": validate, "routes": routes}


def build_parser() -> Parser:
    parser = Parser(
        prog="glocal",
        description="Vision backbones joining local and global attention: ResNet (SE/GC/NL/SNL), BoTNet, Twins, "
        "VOLO, ViT and T2T-ViT, with their papers' figures.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages; tracebacks on errors")
    parser.add_argument(
        "--system-malloc",
        action="store_true",
        help="keep glibc's default allocator settings (by default freed tensor memory is kept for reuse, "
        "20-35%% faster CPU steps; see glocal.runtime)",
    )
    parser.add_argument(
        "--standard-path",
        action="store_true",
        help="leave glocal's CPU backend off: torch's default kernels and layouts only (by default faster routes "
        "are taken where they measure faster on this CPU; see glocal.backends.cpu)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, module in _COMMANDS.items():
        module.add_parser(sub, name)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if args.standard_path:
        cpu_backend.disable()  # also for the models the engine and bench build
        if not args.system_malloc:
            keep_freed_memory()
    else:
        cpu_backend.enable(malloc=not args.system_malloc)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"glocal {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if args.verbose:
            raise
        print(f"glocal {args.command}: error: {_explain(err)}", file=sys.stderr)
        return 2 if isinstance(err, _USER_ERRORS) else 1


# What bad input raises: named in one paragraph, exit status 2. Anything else is a fault of glocal's (status 1).
_USER_ERRORS = (KeyError, ValueError, TypeError, OSError)


def _explain(err: BaseException) -> str:
    """One paragraph about ``err``: its message, for an OSError what the system said about which file, and for an
    unexpected error its type and where to look."""
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    if isinstance(err, OSError) and err.strerror and not isinstance(err, FileNotFoundError | FileExistsError):
        where = f" ({err.filename})" if err.filename else ""
        hint = {28: "; free some space or choose another --output", 30: "; choose a writable --output"}
        return f"cannot write or read{where}: {err.strerror}{hint.get(err.errno, '')}"
    if not isinstance(err, _USER_ERRORS):
        return f"unexpected {type(err).__name__}: {err} (run with --verbose for the traceback, and please report it)"
    return str(err)


if __name__ == "__main__":
    sys.exit(main())
