"""The flag groups that several ``matte`` commands share, each defined once.

rembg's short flags are accepted as its users type them: ``-m u2netp``, ``-a`` with ``-af``,
``-ab``, ``-ae``, ``-om`` and ``-bgc R G B A``.
"""

from __future__ import annotations

import argparse

from model.imaging import DEFAULT_MAX_PIXELS, parse_color
from model.outputs import OutputOptions
from model.refine import AlphaMatting
from pipelines.planner import DEFAULT_MAX_BYTES

MODELS = ("lite", "full")  # the architectures (``matte evaluate``)
# What --model takes: our names, then rembg's (u2netp = lite, u2net = full).
MODEL_NAMES = ("lite", "full", "u2netp", "u2net", "u2net_human_seg")
_MATTING_DEFAULTS = AlphaMatting()


def model_name(text: str) -> str:
    """``--model``'s value as the name ``model.weights`` knows (rembg's names mapped)."""
    from model.weights import WeightsError, canonical_model

    try:
        return canonical_model(text)
    except WeightsError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_model_flags(parser: argparse.ArgumentParser, normalization: bool = True) -> None:
    parser.add_argument("-m", "--model", type=model_name, default="lite",
                        metavar="{" + ",".join(MODEL_NAMES) + "}",
                        help="U²-Net† (lite = u2netp, 4.6 MB), U²-Net (full = u2net, 176 MB) or "
                             "U²-Net trained on people (u2net_human_seg, 176 MB)")
    parser.add_argument("--weights", help="an official .onnx or a trained .keras file, path or "
                        "gs:// (default: ~/.u2net/, or $U2NET_HOME, downloaded if missing)")
    if normalization:
        parser.add_argument("--official-normalization", action="store_true",
                            help="min-max normalise the map like the official demo")


def add_output_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-om", "--only-mask", action="store_true",
                        help="write the alpha matte only")
    colour = parser.add_mutually_exclusive_group()
    colour.add_argument("--bgcolor", type=parse_color,
                        help="composite on a colour: '#RRGGBB', 'R,G,B' or a name")
    colour.add_argument("-bgc", dest="bgcolor_rgba", type=int, nargs=4,
                        metavar=("R", "G", "B", "A"),
                        help="rembg's background colour: A = 255 is --bgcolor R,G,B; a lower A "
                             "keeps the output RGBA, over a translucent colour")
    parser.add_argument("--jpeg", action="store_true", help="with --bgcolor: write JPEG")
    parser.add_argument("--fg", "--estimate-foreground", dest="estimate_foreground",
                        action="store_true",
                        help="the subject's own colour in the soft edge (0 < alpha < 1) instead "
                             "of the photo's mix with the old background: no fringe")
    parser.add_argument("-a", "--alpha-matting", action="store_true",
                        help="refine the alpha by closed-form matting on a trimap of the "
                             "model's alpha, then estimate the foreground (rembg's -a)")
    parser.add_argument("-af", "--alpha-matting-foreground-threshold", type=int,
                        default=_MATTING_DEFAULTS.foreground_threshold,
                        help="with -a: alpha above this (0..255) is sure foreground "
                             "(default %(default)s)")
    parser.add_argument("-ab", "--alpha-matting-background-threshold", type=int,
                        default=_MATTING_DEFAULTS.background_threshold,
                        help="with -a: alpha below this is sure background "
                             "(default %(default)s)")
    parser.add_argument("-ae", "--alpha-matting-erode-size", type=int,
                        default=_MATTING_DEFAULTS.erode_size,
                        help="with -a: erode both sure regions by this square "
                             "(default %(default)s)")


def add_limit_flags(parser: argparse.ArgumentParser, max_bytes: bool = True) -> None:
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger photos (decompression bombs; default %(default)s)")
    if max_bytes:
        parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                            help="refuse larger files before reading them "
                                 "(default %(default)s)")


def output_options(args: argparse.Namespace) -> OutputOptions:
    """The output flags as options (ValueError, shown as one line, for exclusive flags)."""
    matting = (AlphaMatting(args.alpha_matting_foreground_threshold,
                            args.alpha_matting_background_threshold,
                            args.alpha_matting_erode_size)
               if args.alpha_matting else None)
    bgcolor = args.bgcolor if args.bgcolor_rgba is None else tuple(args.bgcolor_rgba)
    return OutputOptions(only_mask=args.only_mask, bgcolor=bgcolor, jpeg=args.jpeg,
                         estimate_foreground=args.estimate_foreground, alpha_matting=matting)
