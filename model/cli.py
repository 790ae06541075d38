"""``matte``: background removal from the command line, in the spirit of rembg's CLI, batched.

    matte i IN.jpg OUT.png          one photo
    matte p IN_DIR OUT_DIR          a folder, recursively, skipping photos already done
    matte eval PRED_OR_MODEL GT_DIR metrics over a folder of masks / mattes
    matte export OUT --format F     the model as .keras, SavedModel, ONNX or LiteRT
    matte arrange-p3m SRC DST       a folder of photos + masks into the P3M-10k layout
    matte ingest SRC DST            P3M-10k (local or gs://) into sharded TFRecords (Beam)
    matte bucket IN_URI OUT_URI     every photo of a folder or bucket (Beam RunInference)
    matte train CONFIG              train / fine-tune (MirroredStrategy), resumable
    matte evaluate MODEL ...        P3M metrics at the P3M test resolution, CSV + JSON
    matte promote REGISTRY VERSION  make a version the champion if it is better
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from tqdm import tqdm

from model.evaluate import evaluate_model, folder_examples
from model.imaging import DEFAULT_MAX_PIXELS, ImageError, decode_mask, parse_color, read_image
from model.matting import Matter
from model.metrics import METRIC_NAMES, evaluate, summarize
from model.outputs import OutputOptions, output_key, render, write_atomic
from model.preprocess import alpha_to_size
from model.registry import RegistryError
from model.weights import WeightsError


def _model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=("lite", "full"), default="lite",
                        help="U²-Net† (lite, 4.6 MB) or U²-Net (full, 176 MB)")
    parser.add_argument("--weights", help="an official .onnx or a trained .keras file "
                        "(default: ~/.u2net/, or $U2NET_HOME, downloaded if missing)")
    parser.add_argument("--official-normalization", action="store_true",
                        help="min-max normalise the map like the official demo")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help="refuse larger photos (decompression bombs)")


def _output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--only-mask", action="store_true", help="write the alpha matte only")
    parser.add_argument("--bgcolor", type=parse_color,
                        help="composite on a colour: '#RRGGBB', 'R,G,B' or a name")
    parser.add_argument("--jpeg", action="store_true", help="with --bgcolor: write JPEG")


def _options(args: argparse.Namespace) -> OutputOptions:
    return OutputOptions(only_mask=args.only_mask, bgcolor=args.bgcolor, jpeg=args.jpeg)


def _load(args: argparse.Namespace) -> Matter:
    return Matter.load(args.model, args.weights, args.official_normalization)


def cmd_image(args: argparse.Namespace) -> int:
    options = _options(args)
    image = read_image(args.input, args.max_pixels)
    matter = _load(args)
    alpha = matter.predict_alpha([image])[0]
    write_atomic(Path(args.output), render(image, alpha, options))
    return 0


def list_inputs(root: Path, exclude: Path | None = None) -> Iterator[Path]:
    """Every regular file below ``root`` in sorted order, skipping hidden files and ``exclude``."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if exclude is not None and path.is_relative_to(exclude):
            continue
        if path.is_file():
            yield path


def _is_done(source: Path, target: Path) -> bool:
    return target.is_file() and target.stat().st_mtime >= source.stat().st_mtime


def cmd_folder(args: argparse.Namespace) -> int:
    options = _options(args)
    # Resolved, so an output folder inside the input folder is recognised and never re-read.
    root, out_root = Path(args.input).resolve(), Path(args.output)
    if not root.is_dir():
        raise SystemExit(f"matte p: input folder not found: {root}")
    counts = {"ok": 0, "skipped": 0, "failed": 0}
    failures: list[tuple[str, str]] = []
    claimed: dict[Path, str] = {}
    todo: list[tuple[str, Path]] = []
    for source in list_inputs(root, exclude=out_root.resolve()):
        key = source.relative_to(root).as_posix()
        target = out_root / output_key(key, options)
        if target in claimed:
            failures.append((key, f"output {target} is already written for {claimed[target]}"))
            continue
        claimed[target] = key
        if _is_done(source, target):
            counts["skipped"] += 1
        else:
            todo.append((key, target))

    matter = _load(args) if todo else None
    with tqdm(total=len(todo), unit="img", desc="matte", file=sys.stderr) as progress:
        for start in range(0, len(todo), args.batch_size):
            batch = []
            for key, target in todo[start:start + args.batch_size]:
                try:
                    batch.append((key, target, read_image(root / key, args.max_pixels)))
                except ImageError as error:
                    failures.append((key, error.reason))
                    progress.update()
            alphas = matter.predict_alpha([image for _, _, image in batch])
            for (key, target, image), alpha in zip(batch, alphas, strict=True):
                progress.update()
                try:
                    write_atomic(target, render(image, alpha, options))
                except OSError as error:  # disk full, permissions: this photo, not the run
                    failures.append((key, f"cannot write {target}: {error}"))
                    continue
                counts["ok"] += 1

    counts["failed"] = len(failures)
    print(f"ok: {counts['ok']}  skipped: {counts['skipped']}  failed: {counts['failed']}"
          f"  -> {out_root}")
    for key, reason in failures:
        print(f"  failed {key}: {reason}")
    return 1 if failures else 0


def _by_stem(folder: Path) -> dict[str, Path]:
    return {path.stem: path for path in list_inputs(folder)}


def _prediction_rows(predictions: Path, gt_dir: Path) -> list[dict]:
    """Metrics of a folder of predicted mattes against masks with the same file stems."""
    truths, sources = _by_stem(gt_dir), _by_stem(predictions)
    rows = []
    for stem in tqdm(sorted(truths), unit="img", desc="eval", file=sys.stderr):
        if stem not in sources:
            print(f"  missing prediction for {stem}", file=sys.stderr)
            continue
        try:
            gt = decode_mask(truths[stem].read_bytes(), str(truths[stem]))
            raw = decode_mask(sources[stem].read_bytes(), str(sources[stem]))
        except (ImageError, OSError) as error:
            print(f"  skipped {stem}: {error}", file=sys.stderr)
            continue
        gt = gt.astype(np.float32) / 255
        # Compare at the ground truth's size: several datasets ship masks smaller than photos.
        pred = np.asarray(alpha_to_size(raw.astype(np.float32)[:, :, None] / 255, gt.shape))
        rows.append({"key": stem, **evaluate(pred[:, :, 0], gt)})
    return rows


def cmd_eval(args: argparse.Namespace) -> int:
    predictions, gt_dir = Path(args.pred_or_model), Path(args.gt_dir)
    if predictions.is_dir():
        rows = _prediction_rows(predictions, gt_dir)
    else:
        if args.images is None:
            raise SystemExit("matte eval: --images DIR is needed to evaluate a model")
        if args.pred_or_model in ("lite", "full"):
            args.model = args.pred_or_model
        else:
            args.weights = args.pred_or_model
        if args.official_normalization:
            raise SystemExit("matte eval: --official-normalization changes cut-outs only; "
                             "evaluation scores the model's raw probability")
        matter = _load(args)
        # The model path at the model's own input size; `matte evaluate` has the P3M protocol.
        rows = evaluate_model(matter.model, folder_examples(args.images, gt_dir),
                              size=matter.size).rows
    if not rows:
        raise SystemExit("matte eval: no prediction matched a mask")
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["key", *METRIC_NAMES])
            writer.writeheader()
            writer.writerows(rows)
    means = summarize([{name: row[name] for name in METRIC_NAMES} for row in rows])
    print(f"{'images':>10} {len(rows)}")
    for name in METRIC_NAMES:
        print(f"{name:>10} {means[name]:.4f}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """Write the inference form (BN folded) of a model in a serving format."""
    from model.export import export_litert, export_saved_model, save_keras
    from model.onnx_export import export_onnx

    writers = {"keras": save_keras, "saved_model": export_saved_model, "onnx": export_onnx,
               "litert": export_litert}
    model = _load(args).model
    path = writers[args.format](model, args.output)
    print(f"{args.format} model written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matte", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    image = commands.add_parser("i", help="matte one photo")
    image.add_argument("input")
    image.add_argument("output")
    _model_arguments(image)
    _output_arguments(image)
    image.set_defaults(handler=cmd_image)

    folder = commands.add_parser("p", help="matte every photo below a folder")
    folder.add_argument("input")
    folder.add_argument("output")
    folder.add_argument("--batch-size", type=int, default=8)
    _model_arguments(folder)
    _output_arguments(folder)
    folder.set_defaults(handler=cmd_folder)

    evaluation = commands.add_parser("eval", help="metrics of predictions or a model vs masks")
    evaluation.add_argument("pred_or_model",
                            help="a folder of predicted mattes, or lite|full|PATH.onnx|PATH.keras")
    evaluation.add_argument("gt_dir", help="folder of ground-truth masks (matched by file stem)")
    evaluation.add_argument("--images", help="photos to run the model on (matched by stem)")
    evaluation.add_argument("--csv", help="also write per-image metrics to this CSV")
    _model_arguments(evaluation)
    evaluation.set_defaults(handler=cmd_eval)

    export = commands.add_parser("export", help="write the model as .keras, SavedModel, "
                                 "ONNX or LiteRT")
    export.add_argument("output", help="file (keras, onnx, litert) or folder (saved_model)")
    export.add_argument("--format", choices=("keras", "saved_model", "onnx", "litert"),
                        default="keras")
    _model_arguments(export)
    export.set_defaults(handler=cmd_export)

    # Beam adds ~0.6 s to start-up: imported only here, where its subcommands are declared.
    from model import evaluate, registry, train
    from pipelines import ingest_p3m, options

    ingest_p3m.add_cli(commands)  # `ingest` and `arrange-p3m`
    options.add_cli(commands)  # `bucket`
    train.add_cli(commands)
    evaluate.add_cli(commands)
    registry.add_cli(commands)  # `promote`
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ImageError, WeightsError, RegistryError, ValueError) as error:
        print(f"matte: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
