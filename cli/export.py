"""``matte export OUT --format keras|saved_model|onnx|litert``: the model in a serving format."""

from __future__ import annotations

import argparse

from cli.flags import add_model_flags

FORMATS = ("keras", "saved_model", "onnx", "litert")


def add_commands(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("export", help="write the model as .keras, SavedModel, "
                                 "ONNX or LiteRT")
    parser.add_argument("output", help="file (keras, onnx, litert) or folder (saved_model)")
    parser.add_argument("--format", choices=FORMATS, default="keras")
    add_model_flags(parser, normalization=False)
    parser.set_defaults(handler=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Write the inference form (BN folded) of a model."""
    from model.export import export_litert, export_saved_model, save_keras
    from model.matting import Matter
    from model.onnx_export import export_onnx

    writers = {"keras": save_keras, "saved_model": export_saved_model, "onnx": export_onnx,
               "litert": export_litert}
    model = Matter.load(args.model, args.weights, engine="keras").model
    path = writers[args.format](model, args.output)
    print(f"{args.format} model written to {path}")
    return 0
