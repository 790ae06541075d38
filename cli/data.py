"""``matte ingest`` and ``matte arrange-p3m``: datasets for training, from the command line.

    matte ingest SRC DST [--shard-mb N] [--min-pairs N] [--max-rejected F] [BEAM OPTIONS...]
    matte arrange-p3m SRC DST [--images NAME] [--masks NAME] [--validation 0.2] [--test 0.1]
                      [--limit N]

The work is ``pipelines.ingest_p3m.launch`` and ``pipelines.arrange.arrange_p3m``; this module
turns flags into their typed options and prints a summary. Beam and TensorFlow are imported by
the handlers, so ``matte -h`` does not load them.
"""

from __future__ import annotations

import argparse

INGEST_EPILOG = """\
Any other --flag is a Beam pipeline option, e.g. --runner DataflowRunner --project P
--region R --temp_location gs://B/tmp, or --direct_num_workers N for the default
in-process runner."""


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``ingest`` and ``arrange-p3m`` on ``cli.main``'s subparsers."""
    ingest = commands.add_parser(
        "ingest", help="P3M-10k folder or gs:// -> TFRecord shards + manifest (Beam)",
        description="P3M-10k (local or gs://) -> deterministic TFRecord shards and "
                    "manifest.json; published only once every shard is written and the "
                    "checks pass, else the published dataset stays and the counts are "
                    "printed (exit 2).",
        epilog=INGEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ingest.add_argument("source", help="P3M-10k root (holds train/ and validation/), or gs://")
    ingest.add_argument("destination", help="output folder or gs:// prefix")
    _add_ingest_flags(ingest)
    # Beam's options are open-ended: whatever follows the positionals is kept as given.
    ingest.add_argument("beam_args", nargs=argparse.REMAINDER, metavar="BEAM OPTIONS",
                        help="passed on to Beam (see below)")
    ingest.set_defaults(handler=_ingest)

    arrange = commands.add_parser(
        "arrange-p3m", help="photos + masks folder -> P3M-10k layout",
        description="Copy a folder of photos and one of masks into the P3M-10k layout, split "
                    "by a hash of each stem into train, validation and test (stable when "
                    "photos are added; the test split is for the final report only).")
    arrange.add_argument("source", help="folder or gs:// prefix holding a photo folder and a "
                         "mask folder")
    arrange.add_argument("destination", help="new P3M-10k root (must be absent or empty)")
    arrange.add_argument("--images", help="photo subfolder name (default: found by name)")
    arrange.add_argument("--masks", help="mask subfolder name (default: found by name)")
    arrange.add_argument("--validation", type=float, default=0.2,
                         help="fraction of stems for validation (default %(default)s)")
    arrange.add_argument("--test", type=float, default=0.1,
                         help="fraction of stems held out for the final test report, never "
                              "for choosing a config (default %(default)s)")
    arrange.add_argument("--limit", type=int, help="keep only the first N stems")
    arrange.set_defaults(handler=_arrange)


def _add_ingest_flags(parser: argparse.ArgumentParser,
                      defaults: argparse.Namespace | None = None) -> None:
    """Our flags; ``defaults`` are those parsed before the positionals."""
    parser.add_argument("--shard-mb", type=float, default=getattr(defaults, "shard_mb", None),
                        help="target shard size in MiB (default: the pipeline's, 150)")
    parser.add_argument("--min-pairs", type=int, default=getattr(defaults, "min_pairs", None),
                        help="publish only with at least N accepted pairs (default: 1)")
    parser.add_argument("--max-rejected", type=float,
                        default=getattr(defaults, "max_rejected", None),
                        help="publish only if rejected / (accepted + rejected) is at most this "
                             "fraction (default: 0.05)")


def _ingest(args: argparse.Namespace) -> int:
    from pipelines.ingest_p3m import (
        DEFAULT_MAX_REJECTED,
        DEFAULT_MIN_PAIRS,
        DEFAULT_SHARD_MB,
        IngestOptions,
        launch,
    )
    from pipelines.runners import beam_options

    # Our flags after the positionals land in the Beam remainder: take them back out.
    ours = argparse.ArgumentParser(add_help=False)
    _add_ingest_flags(ours, args)
    flags, beam_args = ours.parse_known_args([arg for arg in args.beam_args if arg != "--"])

    def given(value, default):
        return default if value is None else value

    options = IngestOptions(
        args.source, args.destination, int(given(flags.shard_mb, DEFAULT_SHARD_MB) * 2**20),
        min_pairs=given(flags.min_pairs, DEFAULT_MIN_PAIRS),
        max_rejected_fraction=given(flags.max_rejected, DEFAULT_MAX_REJECTED))
    # A source that fails the checks raises DatasetRejected, a ValueError: cli.main prints
    # its one line (the counts) and exits 2, the published dataset untouched.
    manifest = launch(options, beam_options(beam_args))
    print(summary(manifest, args.destination))
    return 0


def summary(manifest: dict, destination: str) -> str:
    """What a published manifest holds, in a few lines."""
    import storage

    lines = [f"{split:>11}: {info['pairs']} pairs in {len(info['shards'])} shards, "
             f"{info['rejected']} rejected" for split, info in manifest["splits"].items()]
    reasons = ", ".join(f"{n} {r}" for r, n in manifest["rejected_by_reason"].items() if n)
    lines.append(f"rejected: {reasons or 'none'}  -> "
                 f"{storage.join(destination, 'manifest.json')}")
    return "\n".join(lines)


def _arrange(args: argparse.Namespace) -> int:
    from pipelines.arrange import arrange_p3m

    counts = arrange_p3m(args.source, args.destination, images=args.images, masks=args.masks,
                         validation=args.validation, test=args.test, limit=args.limit)
    print(", ".join(f"{name.replace('_', ' ')}: {count}" for name, count in counts.items())
          + f"  -> {args.destination}")
    return 0
