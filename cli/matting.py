"""``matte i`` (one photo) and ``matte p`` (a folder): background removal on this machine.

``matte p`` plans with ``pipelines.planner``, the rules ``matte bucket`` follows: the same
outputs, the same bytes, the same "already done" records in ``OUT/_state/``, so a folder can
move between the two commands without redoing anything.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from cli.flags import add_limit_flags, add_model_flags, add_output_flags, output_options


def add_commands(commands: argparse._SubParsersAction) -> None:
    image = commands.add_parser("i", help="matte one photo")
    image.add_argument("input", help="a photo, or - for standard input")
    image.add_argument("output", help="the output file, or - for standard output")
    add_model_flags(image)
    add_output_flags(image)
    add_limit_flags(image, max_bytes=False)
    image.set_defaults(handler=cmd_image)

    folder = commands.add_parser(
        "p", help="matte every photo below a folder", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: 0 all matted or already done, 1 some photos failed (listed), "
               "2 usage error")
    folder.add_argument("input")
    folder.add_argument("output")
    folder.add_argument("--batch-size", type=int, default=8,
                        help="most photos per model call (a batch also stops at 8 MP)")
    folder.add_argument("--engine", choices=("onnxruntime", "keras"), default="onnxruntime",
                        help="onnxruntime runs the model's ONNX export (cached per model "
                             "version; no TensorFlow once cached); keras runs the Keras model "
                             "on its backend (default: %(default)s)")
    folder.add_argument("--prune", action="store_true",
                        help="remove outputs whose source photo is gone (listed otherwise)")
    add_model_flags(folder)
    add_output_flags(folder)
    add_limit_flags(folder)
    folder.set_defaults(handler=cmd_folder)


def cmd_image(args: argparse.Namespace) -> int:
    """One photo, file or ``-`` (stdin/stdout), rendered as ``model.api.remove`` renders it."""
    from model.api import new_session
    from model.imaging import decode_image, read_image
    from model.outputs import render
    from storage import write_atomic

    options = output_options(args)
    if "-" not in (args.input, args.output) and (
            Path(args.output).resolve() == Path(args.input).resolve()):
        raise ValueError("the output would overwrite the input photo")
    image = (decode_image(sys.stdin.buffer.read(), "<stdin>", args.max_pixels)
             if args.input == "-" else read_image(args.input, args.max_pixels))
    # With the image on stdout, anything a library prints (pymatting does) goes to stderr.
    with contextlib.redirect_stdout(sys.stderr if args.output == "-" else sys.stdout):
        session = new_session(args.model, args.weights, args.official_normalization)
        data = render(image, session.predict_alpha(image), options)
    if args.output == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    else:
        write_atomic(args.output, data)
    return 0


def cmd_folder(args: argparse.Namespace) -> int:
    from model.weights import model_version
    from pipelines import planner
    from pipelines.planner import RunSettings
    from storage import run_lock

    if not Path(args.input).is_dir():
        raise FileNotFoundError(f"input folder not found: {args.input}")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    exclude = planner.exclude_for(args.input, args.output)
    settings = RunSettings(output_options(args), model_version(args.model, args.weights),
                           args.official_normalization, args.max_bytes)
    with run_lock(args.output):  # one run per output folder: a second fails at once
        done, failures, skipped, orphans = _matte_folder(args, exclude, settings)
    print(f"ok: {done}  skipped: {skipped}  failed: {len(failures)}  -> {args.output}")
    for output in orphans:
        print(f"  {'removed' if args.prune else 'orphaned'} {output}: its source is gone"
              + ("" if args.prune else " (--prune removes it)"))
    for letter in sorted(failures, key=lambda letter: letter.key):
        print(f"  failed {letter.key}: {letter.reason}")
    return 1 if failures else 0


def _matte_folder(args: argparse.Namespace, exclude: str | None,
                  settings) -> tuple[int, list, int, list[str]]:
    """(matted, dead letters, skipped, orphaned outputs) for one locked run of ``matte p``."""
    from tqdm import tqdm

    from model.matting import Matter
    from pipelines import planner
    from pipelines.local_matting import run_plan
    from storage import open_store

    source, out = open_store(args.input), open_store(args.output)
    plan = planner.plan(source, out, exclude, settings)
    failures, done = list(plan.dead), 0
    if plan.todo:
        with tqdm(total=len(plan.todo), unit="img", desc="matte", file=sys.stderr) as progress:
            done, failed = run_plan(
                plan.todo, source, out,
                lambda: Matter.load(args.model, args.weights, args.official_normalization,
                                    engine=args.engine),
                settings, max_pixels=args.max_pixels, batch_size=args.batch_size,
                progress=progress.update)
        failures.extend(failed)
    if args.prune:
        planner.prune(out, plan.orphans)
    return done, failures, len(plan.skipped), plan.orphans
