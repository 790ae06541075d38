"""``matte i`` (one photo) and ``matte p`` (a folder): background removal on this machine.

``matte p`` plans with ``pipelines.planner``, the rules ``matte bucket`` follows: the same
outputs, the same bytes, the same "already done" records in ``OUT/_state/``, so a folder can
move between the two commands without redoing anything.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.flags import add_limit_flags, add_model_flags, add_output_flags, output_options


def add_commands(commands: argparse._SubParsersAction) -> None:
    image = commands.add_parser("i", help="matte one photo")
    image.add_argument("input")
    image.add_argument("output")
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
    folder.add_argument("--batch-size", type=int, default=8)
    folder.add_argument("--prune", action="store_true",
                        help="remove outputs whose source photo is gone (listed otherwise)")
    add_model_flags(folder)
    add_output_flags(folder)
    add_limit_flags(folder)
    folder.set_defaults(handler=cmd_folder)


def cmd_image(args: argparse.Namespace) -> int:
    from model.imaging import read_image
    from model.matting import Matter
    from model.outputs import render
    from storage import write_atomic

    options = output_options(args)
    if Path(args.output).resolve() == Path(args.input).resolve():
        raise ValueError("the output would overwrite the input photo")
    image = read_image(args.input, args.max_pixels)
    matter = Matter.load(args.model, args.weights, args.official_normalization)
    alpha = matter.predict_alpha([image])[0]
    write_atomic(args.output, render(image, alpha, options))
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

    from model.imaging import ImageError, decode_image
    from model.matting import Matter
    from model.outputs import render
    from pipelines import planner
    from pipelines.planner import DeadLetter
    from storage import IO_ERRORS, open_store

    source, out = open_store(args.input), open_store(args.output)
    plan = planner.plan(source, out, exclude, settings)
    failures, done = list(plan.dead), 0
    matter = (Matter.load(args.model, args.weights, args.official_normalization)
              if plan.todo else None)
    with tqdm(total=len(plan.todo), unit="img", desc="matte", file=sys.stderr) as progress:
        for start in range(0, len(plan.todo), args.batch_size):
            batch = []
            for job in plan.todo[start:start + args.batch_size]:
                key = job.source.key
                try:
                    batch.append((job, decode_image(source.read(key), key, args.max_pixels)))
                except ImageError as error:
                    failures.append(DeadLetter(key, "decode", error.reason))
                    progress.update()
                except IO_ERRORS as error:
                    failures.append(DeadLetter(key, "read", f"cannot read: {error}"))
                    progress.update()
            alphas = matter.predict_alpha([image for _, image in batch])
            for (job, image), alpha in zip(batch, alphas, strict=True):
                progress.update()
                try:
                    planner.commit(out, job, render(image, alpha, settings.output), settings)
                except IO_ERRORS as error:  # disk full, permissions: this photo, not the run
                    failures.append(DeadLetter(job.source.key, "write",
                                               f"cannot write {job.output}: {error}"))
                    continue
                done += 1
    if args.prune:
        planner.prune(out, plan.orphans)
    return done, failures, len(plan.skipped), plan.orphans
