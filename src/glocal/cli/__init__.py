"""The ``glocal`` command line: one module per subcommand, each parsing into plain arguments of library calls."""

from __future__ import annotations

import logging
import sys

from glocal.backends import cpu as cpu_backend
from glocal.cli import attention, bench, convert, export, info, predict, summary, train
from glocal.cli import eval as eval_cmd
from glocal.cli import list as list_cmd
from glocal.cli._args import Parser
from glocal.runtime import keep_freed_memory

__all__ = ["main"]

_COMMANDS = {"list": list_cmd, "info": info, "summary": summary, "convert": convert, "bench": bench}
_COMMANDS |= {"train": train, "eval": eval_cmd, "predict": predict, "export": export, "attention": attention}


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
    except (KeyError, ValueError, TypeError, FileNotFoundError) as err:
        if args.verbose:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"glocal {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
