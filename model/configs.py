"""Training configurations as data: a frozen dataclass, named presets, and YAML files on top.

A config names everything a run depends on, so the config saved beside a checkpoint is enough
to resume it and the one saved in the registry is enough to reproduce it. Presets:

* ``smoke``: U²-Net† from scratch at 64², 2 epochs of 4 steps; under a minute on a laptop CPU.
  It validates on ``P3M-500-NP``, the split both P3M-10k and ``matte arrange-p3m`` have.
* ``p3m10k_full``: the seed's setup, full U²-Net from scratch on P3M-10k, 10 epochs at 320²,
  12 images per replica, Adam as in the paper. It validates on ``P3M-500-P`` (face-blurred, the
  P3M benchmark's privacy track), which only P3M-10k has: on arranged data pass
  ``--set validation_split=P3M-500-NP``.
* ``humanseg_lite_finetune``: U²-Net† from the official weights, 4 epochs at 256² on the
  arranged human-seg photos (the CPU result in the README): a low learning rate, and L1 on the
  fused alpha besides BCE, because BCE alone (lr 1e-4, 3 epochs) lowered the validation loss
  but made the mattes softer and lost IoU and MAD to the imported model.

* ``portrait_lite_finetune``: the same fine-tune for 3 epochs on the human-seg train split
  with the test split held out (README "Quality"). Chosen on P3M-500-NP alone among the runs
  recorded in ``benchmarks/RESULTS.md``: 3 epochs had the best validation IoU; new backgrounds
  (``composite_probability`` 0.5, with the P3M demo photos added) scored lower at every epoch,
  so this preset keeps every photo's own background. ``output_sharpness`` 1.5: the largest
  of 1, 1.25, 1.5, 2, 3, 4 whose validation Grad (soft-edge error) was no worse than 1's.

A YAML file holds ``base: <preset>`` plus the fields it changes; unknown keys are refused.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

# Lower is better for the errors, higher for the overlap scores (model.metrics.METRIC_NAMES).
METRIC_DIRECTIONS = {"sad": "min", "mse": "min", "mad": "min", "grad": "min", "conn": "min",
                     "iou": "max", "boundary_f": "max"}


@dataclass(frozen=True)
class TrainConfig:
    name: str
    variant: str = "lite"
    # "scratch", "official" (the official ONNX export, imported) or "champion" (fine-tune the
    # registry's current champion: incremental labels; the train flow fills ``weights``)
    init: str = "scratch"
    weights: str | None = None  # the .onnx (official) or .keras (champion); None: cache/download
    data_root: str | None = None  # ingested TFRecords (folder or gs:// with manifest.json)
    train_split: str = "train"
    validation_split: str | None = "P3M-500-P"
    validate_each_epoch: bool = True  # validation losses in the history (and loss curves)
    image_size: int = 320
    batch_per_replica: int = 12
    epochs: int = 10
    steps_per_epoch: int | None = None  # None: train examples // global batch
    learning_rate: float = 1e-3
    beta_1: float = 0.9
    beta_2: float = 0.999
    epsilon: float = 1e-8
    weight_decay: float = 0.0
    l1_weight: float = 0.0
    gradient_weight: float = 0.0
    checkpoint_every: int = 500  # steps; a checkpoint is also written at every epoch end
    keep_checkpoints: int = 3
    shuffle_buffer: int = 256
    # The probability of laying a training photo's foreground over a new background
    # (model.augment.composite_background); 0 keeps every photo's own background.
    composite_probability: float = 0.0
    # The saved model's fused output is sigmoid(output_sharpness · logit) (never in the loss:
    # model.blocks.SharpenedSigmoid); > 1 gives a crisper alpha with the same 0.5 contour.
    output_sharpness: float = 1.0
    seed: int = 0
    run_eagerly: bool = False  # tiny runs and debugging: no train-step tracing (~20 s on CPU)
    precision: str = "auto"  # "auto": mixed on a GPU, float32 otherwise; or a Keras policy name
    validation_metric: str = "iou"
    eval_max_side: int = 1600  # the P3M test-resolution rule
    eval_size: int | None = None  # evaluate at eval_size² instead (the official U²-Net protocol)
    # Promotion: the candidate must beat the champion by this much on validation_metric (in the
    # metric's units, in its better direction) over at least this many evaluated photos.
    promotion_margin: float = 0.002
    min_eval_photos: int = 10
    # Training devices: None = every local accelerator (or the CPU); else a list of device
    # names, e.g. ["/cpu:0", "/cpu:1"] (TF logical devices) or ["cpu:0", "cpu:1"] (JAX).
    devices: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.devices is not None:  # YAML and JSON give lists
            object.__setattr__(self, "devices", tuple(self.devices))
        checks = {
            "variant": self.variant in ("lite", "full"),
            "init": self.init in ("scratch", "official", "champion"),
            "promotion_margin": self.promotion_margin >= 0,
            "min_eval_photos": self.min_eval_photos >= 1,
            "precision": self.precision in ("auto", "float32", "mixed_float16",
                                            "mixed_bfloat16"),
            "validation_metric": self.validation_metric in METRIC_DIRECTIONS,
            "image_size": self.image_size > 0 and self.image_size % 32 == 0,
            "composite_probability": 0.0 <= self.composite_probability <= 1.0,
            "output_sharpness": 0.0 < self.output_sharpness <= 100.0,
            # The held-out split of ``matte arrange-p3m`` is for the final report only: never
            # for choosing epochs, configs or champions.
            "validation_split": self.validation_split != "test",
            "train_split": self.train_split != "test",
        }
        for key in ("batch_per_replica", "epochs", "checkpoint_every", "keep_checkpoints"):
            checks[key] = getattr(self, key) >= 1
        bad = [key for key, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{key}={getattr(self, key)!r}" for key in bad)
            raise ValueError(f"config {self.name!r}: invalid {values}")

    @property
    def freeze_batch_norm(self) -> bool:
        # The official export folded BN into the convs; the imported BN layers are identity
        # with no statistics behind them, so they must stay in inference mode.
        return self.init in ("official", "champion")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


PRESETS: dict[str, dict] = {
    "smoke": {"variant": "lite", "init": "scratch", "image_size": 64, "batch_per_replica": 2,
              "epochs": 2, "steps_per_epoch": 4, "checkpoint_every": 2, "shuffle_buffer": 16,
              "validate_each_epoch": False, "validation_metric": "iou",
              "validation_split": "P3M-500-NP", "min_eval_photos": 1},
    "p3m10k_full": {"variant": "full", "init": "scratch", "train_split": "train",
                    "validation_split": "P3M-500-P", "image_size": 320,
                    "batch_per_replica": 12, "epochs": 10, "checkpoint_every": 500,
                    "validation_metric": "mad"},
    "humanseg_lite_finetune": {"variant": "lite", "init": "official", "image_size": 256,
                               "batch_per_replica": 8, "epochs": 4, "learning_rate": 5e-5,
                               "l1_weight": 1.0, "checkpoint_every": 20,
                               "validation_split": "P3M-500-NP",
                               "shuffle_buffer": 64, "validation_metric": "iou",
                               "output_sharpness": 1.5},
    "portrait_lite_finetune": {"variant": "lite", "init": "official", "image_size": 256,
                               "batch_per_replica": 8, "epochs": 3, "learning_rate": 5e-5,
                               "l1_weight": 1.0, "composite_probability": 0.0,
                               "checkpoint_every": 20, "validation_split": "P3M-500-NP",
                               "shuffle_buffer": 64, "validation_metric": "iou",
                               "output_sharpness": 1.5},
}


def from_dict(values: dict, name: str = "custom") -> TrainConfig:
    """A config from a mapping that may say ``base: <preset>``; unknown keys are an error."""
    values = dict(values)
    base = values.pop("base", None)
    merged: dict = {}
    if base is not None:
        if base not in PRESETS:
            raise ValueError(f"unknown base preset {base!r}; presets: {sorted(PRESETS)}")
        merged.update(PRESETS[base])
    merged.update(values)
    known = {field.name for field in fields(TrainConfig)}
    unknown = sorted(set(merged) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}; known: {sorted(known)}")
    merged.setdefault("name", name)
    return TrainConfig(**merged)


def load_config(name_or_path: str, overrides: dict | None = None) -> TrainConfig:
    """A preset name or a YAML/JSON file, then ``overrides`` (e.g. ``{"data_root": ...}``)."""
    if name_or_path in PRESETS:
        values = {"base": name_or_path, "name": name_or_path}
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(f"{name_or_path!r} is neither a preset {sorted(PRESETS)} nor a file")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: a config file must hold a mapping")
        values.setdefault("name", path.stem)
    values.update({key: value for key, value in (overrides or {}).items() if value is not None})
    return from_dict(values)


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` from the command line; the value is read as YAML (numbers, null, true)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected key=value, got {text!r}")
    return key.strip(), yaml.safe_load(value)
