"""Prefect flow: ingest (if needed) -> train -> evaluate -> register -> promote, with plots.

Thin: the work is ``model.train.train``, ``model.evaluate``, ``operations.registry`` and
``operations.pictures``. The candidate and the champion are evaluated on the same split with
the same protocol (the ``eval_key``) before they are compared. ``baseline_weights`` (an
official .onnx) seeds an empty registry with the imported official model as the first
champion, so a fine-tuned model is promoted only if it beats the weights it started from.

Run folders: each training run trains in ``run_dir/<config name>-<key>``, where the key hashes
the config, the data manifest and the starting weights (the champion's version for
``init: champion``). A retry of a flow run, or the same command after a crash, finds the same
folder and resumes its checkpoints; a retrain on new labels (another manifest) or from a new
champion gets a new folder and trains its whole schedule. ``model.train`` refuses to resume a
folder on other data.

Retries: only the idempotent I/O (registering a version, whose id comes from its weights;
recording an evaluation; the compare-and-swap promotion; artifacts). Training is never retried
blind: running the flow again resumes it.

    python -m flows.train_flow smoke --data-root DATA --run-dir RUN --registry REG
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import keras
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from prefect.states import Completed
from pydantic import BaseModel, Field

import storage
from flows.ingest_flow import ingest_flow
from model.configs import from_dict, load_config, parse_override
from model.data import manifest_sha256
from model.evaluate import (
    evaluate_model,
    evaluation_key,
    protocol_name,
    split_examples,
    write_report,
)
from model.export import save_keras
from model.matting import Matter
from model.metrics import METRIC_NAMES
from model.train import RESUMABLE_CHANGES, train
from model.weights import import_onnx
from operations import pictures
from operations.registry import Registry

REPORT_KEY = "train-report"
METRICS_KEY = "train-metrics"
IO_RETRIES = {"retries": 2, "retry_delay_seconds": 5, "cache_policy": NONE}


class TrainFlowParams(BaseModel):
    config: str = Field("smoke", description="a preset name or a YAML config file")
    data_root: str = Field(description="ingested TFRecords (folder or gs://)")
    run_dir: str = Field(description="checkpoints, logs and evaluations of this run")
    registry: str = Field(description="model registry root (folder or gs://)")
    source: str | None = Field(None, description="P3M-layout folder, ingested if data_root "
                               "has no manifest.json yet")
    overrides: dict[str, Any] = Field(default_factory=dict, description="config fields")
    baseline_weights: str | None = Field(None, description="official .onnx: the first "
                                         "champion of an empty registry")


class EpochLog(keras.callbacks.Callback):
    """Each epoch's losses and validation IoU/MAE in the flow run's log, as training goes."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        shown = ", ".join(f"{key} {float(value):.4g}" for key, value in sorted((logs or {}).items())
                          if key in ("loss", "fused_loss", "fused_iou", "fused_mae")
                          or key.startswith("val_"))
        get_run_logger().info("epoch %d/%d: %s", epoch + 1, self.epochs, shown)


def run_folder(run_dir: str, config: dict, data_hash: str, start: str | None) -> str:
    """This training run's folder: same config, data and starting weights -> same folder."""
    identity = {key: value for key, value in config.items()
                if key not in RESUMABLE_CHANGES and key != "weights"}
    text = json.dumps({"config": identity, "data": data_hash, "start": start}, sort_keys=True)
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    return str(Path(run_dir) / f"{config['name']}-{key}")


@task(cache_policy=NONE)
def train_model(config: dict, run_dir: str, data_hash: str) -> dict:
    parsed = from_dict(config)
    result = train(parsed, run_dir, data_hash=data_hash, callbacks=[EpochLog(parsed.epochs)])
    return {"model_path": str(result.model_path), "history": list(result.state.history),
            "steps": result.state.step, "resumed_from": result.resumed_from,
            "run_dir": run_dir}


@task(cache_policy=NONE)
def evaluate_file(model_path: str, variant: str, data_root: str, split: str,
                  max_side: int, size: int | None, out_dir: str) -> dict:
    matter = Matter.load(variant, model_path, engine="keras")  # evaluation runs the Keras model
    result = evaluate_model(matter.model, split_examples(data_root, split),
                            max_side=max_side, size=size)
    paths = write_report(result, out_dir, {"model": matter.version,
                                           "data": f"{data_root}#{split}"})
    return {"summary": json.loads(paths["summary"].read_text()),
            "per_image_csv": str(paths["per_image"]), "samples": result.samples}


@task(**IO_RETRIES)
def register(registry: str, model_path: str, config: dict, data_hash: str | None,
             figures: dict[str, bytes]) -> str:
    return Registry(registry).register(model_path, config, data_hash, figures)


@task(**IO_RETRIES)
def record(registry: str, version: str, eval_key: str, evaluation: dict) -> None:
    csv_bytes = Path(evaluation["per_image_csv"]).read_bytes()
    Registry(registry).record_evaluation(version, eval_key, evaluation["summary"], csv_bytes)


@task(**IO_RETRIES)
def promote(registry: str, version: str, eval_key: str, metric: str, margin: float = 0.0,
            min_photos: int = 1) -> dict:
    return asdict(Registry(registry).promote(version, eval_key, metric, margin, min_photos))


@task(**IO_RETRIES)
def publish(decision: dict, summaries: dict[str, dict], figures: dict[str, bytes],
            history: list[dict]) -> None:
    verdict = "promoted" if decision["promoted"] else "not promoted"
    lines = [f"# Candidate `{decision['candidate']}`: {verdict}", "",
             f"{decision['reason']} on `{decision['eval_key']}` "
             f"(champion before: `{decision['champion']}`).", ""]
    columns = [name for name in ("loss", "val_loss", "fused_iou", "val_fused_iou", "fused_mae",
                                 "val_fused_mae") if history and name in history[0]]
    lines += ["| epoch | step | " + " | ".join(columns) + " |",
              "| ---: | ---: |" + " ---: |" * len(columns)]
    lines += [f"| {entry['epoch']} | {entry['step']} | "
              + " | ".join(f"{entry[name]:.4g}" for name in columns) + " |" for entry in history]
    lines.append("")
    titles = {"loss": "Loss curves", "metrics": "Metrics", "grid": "Photo / prediction / truth"}
    for name, png in figures.items():
        lines += [f"## {titles.get(name, name)}", pictures.markdown_image(name, png), ""]
    create_markdown_artifact(key=REPORT_KEY, markdown="\n".join(lines),
                             description=f"training run, candidate {decision['candidate']}")
    rows = [{"model": label, **{name: round(summary[name], 6) for name in METRIC_NAMES}}
            for label, summary in summaries.items()]
    create_table_artifact(key=METRICS_KEY, table=rows, description=decision["eval_key"])


def _seed_baseline(registry: Registry, weights: str, run_dir: str) -> str:
    """Register the imported official weights (training form, identity BN) as a version."""
    model = import_onnx(weights, None)
    path = save_keras(model, Path(run_dir) / "baseline" / "model.keras")
    return register(registry.root, str(path), {"name": f"official-{model.name}",
                                               "weights": weights}, None, {})


def starting_point(config, registry: Registry) -> tuple[object, str | None]:
    """The config with its starting weights filled in, and their identity for the run key.
    ``init: champion`` fine-tunes the current champion (checked against its sha256); with no
    champion yet it starts from the official weights, as the first champion would."""
    if config.init != "champion":
        return config, config.init if config.init == "scratch" else f"official:{config.weights}"
    champion = registry.champion()
    if champion is None:
        get_run_logger().warning("init champion: the registry has no champion yet, "
                                 "starting from the official weights")
        return dataclasses.replace(config, init="official"), f"official:{config.weights}"
    return dataclasses.replace(config, weights=str(registry.local_model(champion))), champion


@flow(name="train-u2net")
def train_flow(params: TrainFlowParams) -> dict:
    """Train, evaluate against the champion on the same data, promote if better."""
    # With a source, ingest every time: new labels are why a retrain runs, and ingestion is
    # deterministic and idempotent (unchanged data gives the same shards and manifest hash).
    if params.source is not None:
        ingest_flow(params.source, params.data_root)
    elif not storage.exists(f"{params.data_root.rstrip('/')}/manifest.json"):
        raise ValueError(f"{params.data_root} is not ingested and no source was given")
    config = load_config(params.config, {**params.overrides, "data_root": params.data_root})
    if not config.validation_split:
        raise ValueError(f"config {config.name!r} has no validation_split to evaluate on")
    data_hash = manifest_sha256(params.data_root)
    protocol = protocol_name(config.eval_max_side, config.eval_size)
    eval_key = evaluation_key(config.validation_split, data_hash, protocol)
    registry = Registry(params.registry)

    def evaluate(model_path: str, out_dir: Path) -> dict:
        return evaluate_file(model_path, config.variant, params.data_root,
                             config.validation_split, config.eval_max_side, config.eval_size,
                             str(out_dir))

    if params.baseline_weights and registry.champion() is None:
        baseline = _seed_baseline(registry, params.baseline_weights, params.run_dir)
        record(registry.root, baseline, eval_key,
               evaluate(str(registry.local_model(baseline)),
                        Path(params.run_dir) / "eval" / "baseline"))
        promote(registry.root, baseline, eval_key, config.validation_metric)
    config, start = starting_point(config, registry)
    run = Path(run_folder(params.run_dir, config.to_dict(), data_hash, start))
    get_run_logger().info("training run folder %s (starting from %s)", run, start)
    trained = train_model(config.to_dict(), str(run), data_hash)
    candidate = evaluate(trained["model_path"], run / "eval" / "candidate")
    champion = registry.champion()
    summaries = {"candidate": candidate["summary"]["metrics"]}
    if champion is not None:
        if registry.evaluation(champion, eval_key) is None:
            record(registry.root, champion, eval_key,
                   evaluate(str(registry.local_model(champion)), run / "eval" / "champion"))
        summaries[f"champion {champion[:8]}"] = registry.evaluation(champion, eval_key)["metrics"]
    figures = {"loss": pictures.loss_curves(trained["history"]),
               "metrics": pictures.metric_bars(summaries),
               "grid": pictures.prediction_grid(candidate["samples"])}
    version = register(registry.root, trained["model_path"], config.to_dict(), data_hash,
                       figures)
    record(registry.root, version, eval_key, candidate)
    decision = promote(registry.root, version, eval_key, config.validation_metric,
                       config.promotion_margin, config.min_eval_photos)
    publish(decision, summaries, figures, trained["history"])
    verdict = "promoted" if decision["promoted"] else "not promoted"
    message = f"{version} {verdict}: {decision['reason']}"
    get_run_logger().info(message)
    return Completed(message=message, data={
        "version": version, "decision": decision, "steps": trained["steps"],
        "resumed_from": trained["resumed_from"], "run_dir": trained["run_dir"],
        "metrics": candidate["summary"]["metrics"], "eval_key": eval_key})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="train_flow", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    for name in ("data-root", "run-dir", "registry"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--source")
    parser.add_argument("--baseline-weights")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    overrides = dict(parse_override(text) for text in args.set)
    return train_flow(TrainFlowParams(
        config=args.config, data_root=args.data_root, run_dir=args.run_dir,
        registry=args.registry, source=args.source, overrides=overrides,
        baseline_weights=args.baseline_weights))


if __name__ == "__main__":
    print(json.dumps(main(), indent=2, default=str))
