"""Flags spelled the same in every subcommand, and help texts that show their defaults."""

from __future__ import annotations

import argparse
import glob
from pathlib import Path

from glocal.data.datasets import IMAGE_EXTENSIONS

__all__ = [
    "HelpFormatter",
    "Parser",
    "add_checkpoint",
    "add_img_size",
    "add_model",
    "add_model_operand",
    "add_weights",
    "find_images",
    "img_size",
    "model_operand",
    "positive_int",
    "weights_of",
]


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to every option whose default is a value (not None, False or empty)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = default not in (None, False, argparse.SUPPRESS, [], ()) and "(default" not in text
        if shown and action.option_strings and action.nargs != 0:
            text += " (default: %(default)s)"
        return text


class Parser(argparse.ArgumentParser):
    """An argument parser whose help shows the defaults (:class:`HelpFormatter`)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)


def add_model(p: argparse.ArgumentParser, *, required: bool = False, what: str = "") -> None:
    """``--model NAME``: optional where a checkpoint names its model, and an error when it contradicts it."""
    text = what or "registered model name (see `glocal list`); default: the checkpoint's, which it must not contradict"
    p.add_argument("--model", metavar="NAME", required=required, help=text)


def add_model_operand(p: argparse.ArgumentParser, *, many: bool = False, what: str = "registered model name") -> None:
    """The model of a command that always needs one: ``glocal info NAME`` or, spelled as in every other command,
    ``glocal info --model NAME`` (:func:`model_operand` reads either)."""
    p.add_argument("model_operand", nargs="*" if many else "?", metavar="MODEL", help=f"{what} (or --model)")
    p.add_argument("--model", nargs="+" if many else None, metavar="NAME", help=f"{what}, as in every command")


def model_operand(args: argparse.Namespace, *, spill: str | None = None) -> str | list[str]:
    """The model named by ``add_model_operand``'s positional or ``--model``; with ``--model`` given, a positional
    word belongs to the next operand list ``spill`` (``glocal attention --model M a.png b.png``)."""
    operand, flag = args.model_operand, args.model
    if flag is not None and operand and spill is not None:
        getattr(args, spill)[:0] = operand if isinstance(operand, list) else [operand]
        operand = None
    if flag is not None and operand:
        raise ValueError(f"name the model once, as MODEL or --model NAME (got {operand!r} and {flag!r})")
    chosen = flag if flag is not None else operand
    if not chosen:
        raise ValueError("name the model: MODEL or --model NAME (see `glocal list`)")
    return chosen


def add_checkpoint(p: argparse.ArgumentParser, *, required: bool = False, what: str = "") -> None:
    """``--checkpoint PATH``: a model folder, a run's ``last.pt`` or any file glocal reads."""
    text = what or "a model folder (a run's model/ or best/), a run's last.pt, or any checkpoint glocal loads"
    p.add_argument("--checkpoint", metavar="PATH", required=required, help=text)


def add_weights(p: argparse.ArgumentParser, *, what: str = "") -> None:
    """Where a command's weights come from: ``--checkpoint PATH`` (:func:`add_checkpoint`) or ``--pretrained [TAG]``,
    a published release of the model (its default tag without TAG); :func:`weights_of` reads them."""
    add_checkpoint(p, what=what)
    p.add_argument(
        "--pretrained",
        nargs="?",
        const=True,
        metavar="TAG",
        help="published weights of --model: its default tag, or TAG (see `glocal weights`); ImageNet-1k classes, "
        "the tag's own preprocessing",
    )


def weights_of(args: argparse.Namespace, *, required: bool = False) -> tuple[str | None, bool | str]:
    """(checkpoint, pretrained) of :func:`add_weights`' flags: ``ValueError`` when both are given (or, ``required``,
    neither), or when ``--pretrained`` took an image path for its TAG."""
    checkpoint, pretrained = args.checkpoint, args.pretrained or False
    if checkpoint is not None and pretrained:
        raise ValueError(
            f"give the weights once: --checkpoint {checkpoint} (trained weights or a weights file) or --pretrained "
            f"(a published release of --model, see `glocal weights`), not both"
        )
    if required and checkpoint is None and not pretrained:
        raise ValueError(
            "give the weights: --checkpoint PATH (a trained model) or --pretrained [TAG] with --model NAME"
        )
    if isinstance(pretrained, str) and Path(pretrained).exists():
        raise ValueError(
            f"--pretrained took {pretrained!r} for its TAG, but that is a file: name the images before --pretrained, "
            f"or write --pretrained=TAG"
        )
    return checkpoint, pretrained


class _Size(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if len(values) not in (1, 2) or min(values) < 1:
            parser.error(f"{option_string} takes one size or a height and a width (positive), got {values}")
        setattr(namespace, self.dest, values[0] if len(values) == 1 else tuple(values))


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def add_img_size(p: argparse.ArgumentParser, what: str) -> None:
    """``--img-size S`` or ``--img-size H W``."""
    p.add_argument("--img-size", type=int, nargs="+", action=_Size, metavar="PX", help=f"{what}: S or H W")


def img_size(value: int | tuple[int, int] | None) -> tuple[int, int] | None:
    """A parsed ``--img-size`` as (H, W)."""
    if value is None:
        return None
    return (value, value) if isinstance(value, int) else tuple(value)


def find_images(items: list[str]) -> list[Path]:
    """Image files from paths, folders (every image below them, sorted) and glob patterns, in the order given;
    ``FileNotFoundError`` names the items that match no image."""
    found, empty = [], []
    for item in items:
        matches = [Path(m) for m in sorted(glob.glob(item, recursive=True))] if glob.has_magic(item) else [Path(item)]
        files = []
        for path in matches:
            if path.is_dir():
                files += sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            elif path.is_file():
                files.append(path)
        if files:
            found += files
        else:
            empty.append(item)
    if empty:
        raise FileNotFoundError(
            f"no image found at {', '.join(empty)} (give image files, folders of images or glob patterns; "
            f"image suffixes: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return found
