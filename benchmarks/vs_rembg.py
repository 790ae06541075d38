"""``matte p`` against ``rembg p -m u2netp`` on the same weights and photos, run alternately.

Run: ``.venv/bin/python benchmarks/vs_rembg.py [--repeats 3]`` (``make bench`` runs it). rembg
comes from its own venv (``make bench-venv`` installs ``requirements-bench.txt`` into
``.venv-bench``; its pins conflict with ours), or ``--rembg PATH``; without it only our side
is measured. Nothing is installed or downloaded here.

Both sides read the official ``u2netp.onnx`` from ``../shared/data/u2netp-onnx`` offline:
rembg finds it as ``$U2NET_HOME/u2netp.onnx`` (a file already there is used without its md5
check or a download, ``rembg/sessions/base.py: resolve_existing``), we get ``--weights``.
Each command is a child process timed from start to exit: wall seconds, CPU seconds (user +
sys, from ``os.wait4``) and peak RSS (``ru_maxrss``). One warm-up run of each side first
(our ONNX export is made once per model version, as a user's first run makes it), then
``--repeats`` rounds of matte, rembg, matte, rembg... each into a fresh output folder. The
table shows medians and matte / rembg ratios. Photo sets:

* large: the 19 photos of ../shared/data with a side of 800-3000 px (the P3M demo originals
  and 4 official U²-Net test images), like the issue's 19 photos of 800-2500 px;
* official: the 18 official U²-Net test images (290-3000 px, mostly ~400);
* human-seg: the first 96 photos (by number) of human-seg-vikramshenoy (225-1500 px, mostly
  ~500; internal evaluation data, see its SOURCE.md: copied to a temp folder, never kept).

Start-up is ``matte p -h`` against ``rembg p --help``. ``matte bucket`` (Beam DirectRunner)
runs on each set too, for its CPU seconds per photo beside ``matte p``'s: per run (CPU / n,
start-up included) and per additional photo (CPU(n) - CPU(1)) / (n - 1), both commands also
run on the set's first photo alone), the cost that scales with a night's photos.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared/data"))
WEIGHTS = SHARED / "u2netp-onnx" / "u2netp.onnx"
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png")


def photo_sets(human_seg_count: int) -> dict[str, list[Path]]:
    official = sorted(p for p in (SHARED / "u2net-official-testdata/test_images").iterdir()
                      if p.suffix.lower() in PHOTO_SUFFIXES)
    p3m = sorted((SHARED / "p3m-demo-samples/original").glob("*.jpg"))
    human = sorted((SHARED / "human-seg-vikramshenoy/Training_Images").glob("*.jpg"),
                   key=lambda path: int(path.stem))
    return {"large": p3m + [p for p in official if _longest_side(p) >= 800],
            "official": official, "human-seg": human[:human_seg_count]}


def _longest_side(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as image:
        return max(image.size)


def run_child(argv: list[str], env: dict[str, str]) -> dict:
    """Wall s, CPU s (user + sys) and peak RSS MiB of one child process, run to its end."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {child.returncode}:\n{stderr.decode()[-2000:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss": usage.ru_maxrss / 1024}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def compare(name: str, commands: dict[str, callable], repeats: int, env: dict,
            warmup: bool = True, scratch: Path | None = None) -> dict[str, list[dict]]:
    """Each command ``repeats`` times, alternating, after one untimed warm-up each; with
    ``scratch``, the bytes each run wrote under ``scratch/<tag>`` (its output folder)."""
    runs = {side: [] for side in commands}
    for round_ in range(-1 if warmup else 0, repeats):
        for side, argv_for in commands.items():
            tag = f"{name}-{side}-{round_}"
            result = run_child(argv_for(tag), env)
            if scratch is not None and (scratch / tag).is_dir():
                result["bytes"] = sum(path.stat().st_size for path in (scratch / tag).rglob("*")
                                      if path.is_file() and not _is_record(path, scratch / tag))
            if round_ >= 0:
                runs[side].append(result)
    return runs


def _is_record(path: Path, root: Path) -> bool:
    """Our state and run records beside the outputs (not cut-outs)."""
    return path.relative_to(root).parts[0] in ("_state", "_runs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sets", nargs="+", default=["large", "official", "human-seg"])
    parser.add_argument("--human-seg-count", type=int, default=96)
    parser.add_argument("--rembg", default=str(ROOT / ".venv-bench/bin/rembg"),
                        help="rembg's console script (default: .venv-bench's)")
    parser.add_argument("--no-bucket", action="store_true", help="skip matte bucket")
    args = parser.parse_args()
    matte = str(Path(sys.executable).parent / "matte")
    rembg = args.rembg if Path(args.rembg).is_file() else shutil.which("rembg")
    if not WEIGHTS.is_file():
        raise SystemExit(f"weights not found: {WEIGHTS}")
    print(f"# {platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"load {os.getloadavg()[0]:.1f}; rembg: {rembg or 'not installed (matte only)'}")
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        home = scratch / "u2net-home"
        home.mkdir()
        shutil.copy(WEIGHTS, home / "u2netp.onnx")
        env = {**os.environ, "U2NET_HOME": str(home)}
        env.pop("OMP_NUM_THREADS", None)  # rembg would pin onnxruntime's threads to it
        env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # matte's own default applies
        rows = []
        startup = {"matte": lambda _: [matte, "p", "-h"]}
        if rembg:
            startup["rembg"] = lambda _: [rembg, "p", "--help"]
        start_runs = compare("help", startup, max(args.repeats, 5), env)
        for name, photos in photo_sets(args.human_seg_count).items():
            if name not in args.sets:
                continue
            folder = scratch / name
            folder.mkdir()
            for photo in photos:
                shutil.copy(photo, folder / photo.name)
            commands = {"matte": lambda tag, folder=folder: [
                matte, "p", str(folder), str(scratch / tag), "--model", "lite",
                "--weights", str(home / "u2netp.onnx")]}
            if rembg:
                commands["rembg"] = lambda tag, folder=folder: [
                    rembg, "p", "-m", "u2netp", str(folder), str(scratch / tag)]
            if not args.no_bucket:
                # Per-photo CPU at scale is the slope: each command again on the set's first
                # photo alone, whose CPU is the run's fixed part (imports, model, Beam's
                # set-up), so (CPU(n) - CPU(1)) / (n - 1) is what one more photo costs.
                one = scratch / f"{name}-one"
                one.mkdir()
                shutil.copy(photos[0], one / photos[0].name)
                for side, folder_ in (("bucket", folder), ("matte-1", one), ("bucket-1", one)):
                    verb = "bucket" if side.startswith("bucket") else "p"
                    commands[side] = lambda tag, verb=verb, folder_=folder_: [
                        matte, verb, str(folder_), str(scratch / tag), "--model", "lite",
                        "--weights", str(home / "u2netp.onnx")]
            runs = compare(name, commands, args.repeats, env, scratch=scratch)
            rows.append((name, len(photos), runs))
            print_set(name, len(photos), runs)
        print_summary(start_runs, rows)


def print_set(name: str, count: int, runs: dict[str, list[dict]]) -> None:
    for side, results in runs.items():
        walls = " ".join(f"{run['wall']:.1f}" for run in results)
        written = (f", {median(results, 'bytes') / 2**20:.1f} MiB written"
                   if all("bytes" in run for run in results) else "")
        print(f"  {name:10} {side:6} wall {walls} s; median cpu {median(results, 'cpu'):.1f} s, "
              f"rss {median(results, 'rss'):.0f} MiB ({count} photos){written}")


def print_summary(start_runs: dict, rows: list) -> None:
    print("\n| photos | n | matte p wall s | rembg p wall s | wall ratio | CPU ratio | "
          "matte peak MiB | rembg peak MiB | memory ratio | CPU s/photo: p, bucket | "
          "one more photo, CPU s: p, bucket, ratio |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, count, runs in rows:
        ours = runs["matte"]
        theirs = runs.get("rembg")
        cells = [name, str(count), f"{median(ours, 'wall'):.1f}"]
        if theirs:
            cells += [f"{median(theirs, 'wall'):.1f}",
                      f"{median(ours, 'wall') / median(theirs, 'wall'):.2f}",
                      f"{median(ours, 'cpu') / median(theirs, 'cpu'):.2f}",
                      f"{median(ours, 'rss'):.0f}", f"{median(theirs, 'rss'):.0f}",
                      f"{median(ours, 'rss') / median(theirs, 'rss'):.2f}"]
        else:
            cells += ["-", "-", "-", f"{median(ours, 'rss'):.0f}", "-", "-"]
        bucket = (f", {median(runs['bucket'], 'cpu') / count:.2f}" if "bucket" in runs else "")
        cells.append(f"{median(ours, 'cpu') / count:.2f}{bucket}")
        if "bucket-1" in runs and count > 1:
            slope = {side: (median(runs[side], "cpu") - median(runs[f"{side}-1"], "cpu"))
                     / (count - 1) for side in ("matte", "bucket")}
            cells.append(f"{slope['matte']:.3f}, {slope['bucket']:.3f}, "
                         f"{slope['bucket'] / slope['matte']:.2f}")
        else:
            cells.append("-")
        print("| " + " | ".join(cells) + " |")
    ours = median(start_runs["matte"], "wall")
    line = f"\nstart-up (`matte p -h`): {ours:.2f} s"
    if "rembg" in start_runs:
        theirs = median(start_runs["rembg"], "wall")
        line += f"; `rembg p --help`: {theirs:.2f} s; ratio {ours / theirs:.2f}"
    print(line)


if __name__ == "__main__":
    main()
