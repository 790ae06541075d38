"""``matte evaluate``: P3M metrics of a model, or of a folder of mattes a model already made.

    matte evaluate lite|full|MODEL.onnx|MODEL.keras --images DIR --masks DIR [--out DIR]
    matte evaluate MODEL --data ROOT [--split P3M-500-P] [--out DIR]     an ingested split
    matte evaluate PREDICTIONS_DIR --masks DIR [--out DIR]               predicted mattes

Models run under the P3M test-resolution rule (longest side <= --max-side, sides multiples of
32) unless --size S asks for the official demo's SxS input. Files pair by path without
extension. Means are printed; --out writes per_image.csv and summary.json.
"""

from __future__ import annotations

import argparse
import os

from cli.flags import MODELS

MAX_SIDE = 1600  # model.evaluate.MAX_SIDE, repeated so that -h does not load TensorFlow


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("evaluate", aliases=["eval"], description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 help="P3M metrics of a model or of predicted mattes")
    parser.add_argument("subject", help="lite | full | PATH.onnx | PATH.keras, or a folder of "
                        "predicted mattes")
    parser.add_argument("--images", help="folder of photos to run the model on")
    parser.add_argument("--masks", help="folder of ground-truth masks")
    parser.add_argument("--data", help="ingested TFRecords root (instead of --images/--masks)")
    parser.add_argument("--split", default="P3M-500-P", help="split of --data")
    parser.add_argument("--out", help="write per_image.csv and summary.json here")
    parser.add_argument("--max-side", type=int, default=MAX_SIDE,
                        help="P3M rule: longest side at most this, sides multiples of 32")
    parser.add_argument("--size", type=int, help="run at SIZE×SIZE instead (official demo)")
    parser.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from model import evaluate

    if os.path.isdir(args.subject):
        if not args.masks or args.images or args.data:
            raise ValueError("a folder of predictions needs --masks DIR (and no --images/--data)")
        result = evaluate.evaluate_predictions(args.subject, args.masks)
        info = {"predictions": args.subject, "data": args.masks}
    else:
        if bool(args.data) == bool(args.images or args.masks):
            raise ValueError("give either --data ROOT [--split NAME] or --images DIR --masks DIR")
        if bool(args.images) != bool(args.masks):
            raise ValueError("--images and --masks go together")
        from model.matting import Matter

        official = args.subject in MODELS
        matter = Matter.load(args.subject if official else "lite",
                             None if official else args.subject, engine="keras")
        if args.data:
            examples = evaluate.split_examples(args.data, args.split)
            source = f"{args.data}#{args.split}"
        else:
            examples, source = evaluate.folder_examples(args.images, args.masks), args.images
        result = evaluate.evaluate_model(matter.model, examples, max_side=args.max_side,
                                         size=args.size)
        info = {"model": matter.version, "data": source}
    print(f"{'images':>10} {len(result.rows)}   ({result.protocol})")
    for name, value in result.summary.items():
        print(f"{name:>10} {value:.4f}")
    if args.out:
        paths = evaluate.write_report(result, args.out, info)
        print(f"per-image metrics and summary -> {paths['summary'].parent}")
    return 0
