"""``matte train``, ``register`` and ``promote``: train or fine-tune a model, file it, promote it.

    matte train CONFIG --run-dir DIR [--data ROOT] [--set key=value ...] [--progress]
    matte register REGISTRY RUN_DIR [--eval DIR ...]     a trained run folder -> a version
    matte promote REGISTRY VERSION --eval-key KEY [--metric iou] [--margin M] [--min-photos N]
                                                                    exit 3 if not promoted

``register`` files ``RUN_DIR/model.keras`` with the run's config and data hash (what the train
flow registers), and each ``--eval DIR`` (written by ``matte evaluate MODEL --data ROOT
--split NAME --out DIR``) under the key the train flow would use, so ``promote`` can compare.

The handlers import ``model.train`` (TensorFlow) and ``operations.registry`` themselves, so
building the parser for ``matte -h`` loads neither.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from model.configs import METRIC_DIRECTIONS, load_config, parse_override

# ``promote``'s exit status when the candidate does not beat the champion: a scripted
# pipeline must tell "kept the champion" from "promoted" (0) and from an error (2).
NOT_PROMOTED = 3


def cmd_train(args: argparse.Namespace) -> int:
    from model.train import train

    overrides = dict(parse_override(text) for text in args.set)
    overrides["data_root"] = args.data
    config = load_config(args.config, overrides)
    result = train(config, args.run_dir, verbose=1 if args.progress else 2)
    start = f"resumed at step {result.resumed_from}" if result.resumed_from else "started"
    print(f"{config.name}: {start}, now at step {result.state.step} -> {result.model_path}")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    from pathlib import Path

    from model.data import manifest_sha256
    from model.evaluate import evaluation_key
    from model.weights import weights_version
    from operations.registry import Registry

    run = Path(args.run_dir)
    missing = [name for name in ("model.keras", "config.json", "data.json")
               if not (run / name).is_file()]
    if missing:
        raise ValueError(f"{run}: no {', '.join(missing)}; register a finished `matte train` "
                         "run folder")
    registry = Registry(args.registry)
    data_hash = json.loads((run / "data.json").read_text())["manifest_sha256"]
    version = registry.register(run / "model.keras", json.loads((run / "config.json").read_text()),
                                data_hash)
    print(f"version {version}")
    for folder in map(Path, args.eval):
        summary = json.loads((folder / "summary.json").read_text())
        if summary.get("model") != weights_version(run / "model.keras"):
            raise ValueError(f"{folder} evaluated {summary.get('model')}, not "
                             f"{weights_version(run / 'model.keras')} ({run / 'model.keras'})")
        root, sep, split = summary.get("data", "").rpartition("#")
        if not sep:
            raise ValueError(f"{folder}: not an evaluation of an ingested split (matte "
                             "evaluate MODEL --data ROOT --split NAME --out DIR)")
        key = evaluation_key(split, manifest_sha256(root), summary["protocol"])
        registry.record_evaluation(version, key, summary, (folder / "per_image.csv").read_bytes())
        print(f"evaluation {key}: " + ", ".join(
            f"{name} {value:.4f}" for name, value in summary["metrics"].items()))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from operations.registry import Registry

    decision = Registry(args.registry).promote(args.version, args.eval_key, args.metric,
                                               margin=args.margin, min_photos=args.min_photos)
    print(json.dumps(asdict(decision), indent=2))
    return 0 if decision.promoted else NOT_PROMOTED


def add_train(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("train", help="train or fine-tune U²-Net (resumes a run folder)")
    parser.add_argument("config", help="a preset (smoke, p3m10k_full, ...) or a YAML file")
    parser.add_argument("--run-dir", required=True, help="checkpoints, logs and the model")
    parser.add_argument("--data", help="ingested TFRecords root (overrides data_root)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config field, e.g. --set epochs=2")
    parser.add_argument("--progress", action="store_true", help="a progress bar per epoch")
    parser.set_defaults(handler=cmd_train)


def add_register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("register", help="file a trained run folder's model as a "
                                 "registry version, with its evaluations")
    parser.add_argument("registry", help="registry root: a folder or gs://bucket/prefix")
    parser.add_argument("run_dir", help="a finished `matte train` run folder")
    parser.add_argument("--eval", action="append", default=[], metavar="DIR",
                        help="a `matte evaluate ... --data ROOT --split NAME --out DIR` folder "
                        "of this model (repeatable)")
    parser.set_defaults(handler=cmd_register)


def add_promote(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser("promote", help="make a registered version the champion if "
                                 "it beats the current one")
    parser.add_argument("registry", help="registry root: a folder or gs://bucket/prefix")
    parser.add_argument("version")
    parser.add_argument("--eval-key", required=True, help="the evaluation both are compared on")
    parser.add_argument("--metric", default="iou", choices=sorted(METRIC_DIRECTIONS))
    # A person promoting by hand has looked at the numbers: no margin or photo minimum unless
    # asked. The train flow passes its config's promotion_margin and min_eval_photos instead.
    parser.add_argument("--margin", type=float, default=0.0,
                        help="the candidate must beat the champion by at least this much, in "
                        "the metric's units (default 0: any improvement)")
    parser.add_argument("--min-photos", type=int, default=1,
                        help="refuse unless the candidate's evaluation counted at least this "
                        "many photos (default 1)")
    parser.set_defaults(handler=cmd_promote)


def add_commands(commands: argparse._SubParsersAction) -> None:
    add_train(commands)
    add_register(commands)
    add_promote(commands)
