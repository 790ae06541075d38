"""``matte``: background removal from the command line, in the spirit of rembg's CLI, batched.

    matte i IN.jpg OUT.png          one photo
    matte p IN_DIR OUT_DIR          a folder, recursively, redoing only what changed
    matte bucket IN_URI OUT_URI     a folder or gs:// prefix with Beam (RunInference)
    matte evaluate SUBJECT ...      P3M metrics of a model or of a folder of predicted mattes
    matte export OUT --format F     the model as .keras, SavedModel, ONNX or LiteRT
    matte arrange-p3m SRC DST       a folder of photos + masks into the P3M-10k layout
    matte ingest SRC DST            P3M-10k (local or gs://) into sharded TFRecords (Beam)
    matte train CONFIG              train / fine-tune (MirroredStrategy), resumable
    matte promote REGISTRY VERSION  make a version the champion if it is better

Exit codes: 0 done, 1 some photos failed (listed), 2 a usage or input error (one line),
3 ``promote`` kept the current champion.

TensorFlow's, absl's, oneDNN's and Beam's log lines are hidden; ``matte -v COMMAND`` shows them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from cli import logs

# One module per command family, as rembg splits its commands. Each registers its parsers
# and imports its heavy dependencies (TensorFlow, Beam) only when its command runs.
COMMAND_MODULES = ("cli.matting", "cli.bucket", "cli.evaluation", "cli.export", "cli.data",
                   "cli.training")

# Errors that mean "the user asked for something that cannot work": one line, exit 2.
# By module, because the types of modules not loaded yet cannot have been raised, and
# importing them to check would load TensorFlow.
_USER_ERRORS = {"model.imaging": "ImageError", "model.weights": "WeightsError",
                "operations.registry": "RegistryError", "pipelines.options": "OptionsError"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matte", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the libraries' own log lines (TensorFlow, absl, Beam)")
    commands = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(commands)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    loaded = [getattr(sys.modules[module], name) for module, name in _USER_ERRORS.items()
              if module in sys.modules]
    from storage import OutputLocked  # storage is light: no TensorFlow behind it

    return (ValueError, FileNotFoundError, NotADirectoryError, OutputLocked, *loaded)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(args.verbose)  # before any command imports TensorFlow or Beam
    try:
        return args.handler(args)
    except Exception as error:
        if not isinstance(error, user_errors()):
            raise
        print(f"matte {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
