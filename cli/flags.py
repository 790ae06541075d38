"""The flag groups that several ``matte`` commands share, each defined once."""

from __future__ import annotations

import argparse

from model.imaging import DEFAULT_MAX_PIXELS, parse_color
from model.outputs import OutputOptions
from pipelines.planner import DEFAULT_MAX_BYTES

MODELS = ("lite", "full")


def add_model_flags(parser: argparse.ArgumentParser, normalization: bool = True) -> None:
    parser.add_argument("--model", choices=MODELS, default="lite",
                        help="U²-Net† (lite, 4.6 MB) or U²-Net (full, 176 MB)")
    parser.add_argument("--weights", help="an official .onnx or a trained .keras file, path or "
                        "gs:// (default: ~/.u2net/, or $U2NET_HOME, downloaded if missing)")
    if normalization:
        parser.add_argument("--official-normalization", action="store_true",
                            help="min-max normalise the map like the official demo")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only-mask", action="store_true", help="write the alpha matte only")
    parser.add_argument("--bgcolor", type=parse_color,
                        help="composite on a colour: '#RRGGBB', 'R,G,B' or a name")
    parser.add_argument("--jpeg", action="store_true", help="with --bgcolor: write JPEG")


def add_limit_flags(parser: argparse.ArgumentParser, max_bytes: bool = True) -> None:
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger photos (decompression bombs; default %(default)s)")
    if max_bytes:
        parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                            help="refuse larger files before reading them "
                                 "(default %(default)s)")


def output_options(args: argparse.Namespace) -> OutputOptions:
    """The output flags as options (ValueError, shown as one line, for exclusive flags)."""
    return OutputOptions(only_mask=args.only_mask, bgcolor=args.bgcolor, jpeg=args.jpeg)
