"""The model registry: immutable versions and a ``champion`` pointer, in a folder or on gs://.

    <root>/versions/<id>/model.keras, config.json, data.json, plots/*.png,
                         eval/<eval key>/{summary.json, per_image.csv}, version.json (last)
    <root>/champion.json                      {"version", "metric", "score", "eval_key", ...}
    <root>/decisions/<time>-<id>.json         every promotion decision with both scores

A version's id is a hash of the model's *weights and architecture* (``operations.model_id``),
not of the ``.keras`` file, whose zip records a save date: the same weights saved twice and
registered twice (a retried task, a re-seeded baseline) are one version. The model file,
``config.json``, ``data.json`` and ``version.json`` are written create-only (GCS
``if_generation_match=0``, a hard link locally); ``version.json`` is written last, so a folder
without it is an interrupted upload, not a version, and it records ``model_sha256``, the hash
of the file bytes as stored, which every hand-out of the model checks (``model_uri``,
``local_model``, also for a gs:// model served from ``localize``'s cache). Plots and
evaluations are records *about* a version, added later, and stay overwritable.

Promotion compares the candidate and the champion on the *same* evaluation (same data, same
protocol: the ``eval_key``) over at least ``min_photos`` photos, and swaps the pointer only if
the candidate is better by at least ``margin``, as a compare-and-swap: ``if_generation_match``
on GCS, a file lock around read-compare-replace locally. Storage is the ``storage`` package;
the ``matte promote`` command is ``cli.training``.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from model.configs import METRIC_DIRECTIONS
from operations.model_id import NotAKerasFile, sha256_file, weights_id
from storage import LocalStore, WriteConflict, is_gcs, localize, open_store

CHAMPION = "champion.json"
# Float scores are differences of means: 0.871 - 0.869 must count as 0.002, not 0.00199...
SCORE_DECIMALS = 12


class RegistryError(RuntimeError):
    """A missing or inconsistent registry entry, or a pointer that cannot be trusted."""


@dataclass(frozen=True)
class Decision:
    candidate: str
    champion: str | None  # the champion before the decision
    metric: str
    direction: str  # "max" or "min"
    eval_key: str
    candidate_score: float
    champion_score: float | None
    promoted: bool
    rule: str  # which rule decided: "no champion", "too few photos", "margin", "already champion"
    margin: float  # the improvement the candidate needed, in the metric's units
    photos: int | None  # photos the candidate's evaluation counted (None: not recorded)
    reason: str
    decided_at: str


def _now() -> str:
    # Microseconds, so decision file names sort in the order the decisions were taken.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


class Registry:
    def __init__(self, root: str):
        self.root = root.rstrip("/")
        self.store = open_store(self.root)

    def _read_json(self, key: str) -> dict | None:
        if self.store.stat(key) is None:
            return None
        return json.loads(self.store.read(key))

    def uri(self, key: str) -> str:
        return f"{self.root}/{key}"

    def _keys(self) -> list[str]:
        # A new local registry has no folder yet, and a store refuses to scan a missing one.
        if isinstance(self.store, LocalStore) and not self.store.root.is_dir():
            return []
        return [info.key for info in self.store.list()]

    def _create(self, key: str, data: bytes) -> bool:
        """Create-only write; False if ``key`` holds other bytes (the same bytes: True)."""
        try:
            if isinstance(self.store, LocalStore):
                self.store.create(key, data)
            else:
                self.store.write(key, data, if_generation_match=0)
        except WriteConflict:
            return False
        return True

    def register(self, model_path: str | os.PathLike, config: dict, data_hash: str | None,
                 plots: dict[str, bytes] | None = None) -> str:
        """Upload a trained model with its config and data hash; returns the version id.

        Registering weights that are a version already returns that version and keeps its
        first files; another config or data hash is recorded in ``registrations/``."""
        model = Path(model_path).read_bytes()
        version = self._weights_id(model, model_path)
        prefix = f"versions/{version}"
        files = {"config.json": _json(config), "data.json": _json({"manifest_sha256": data_hash})}
        complete = self.store.stat(f"{prefix}/version.json") is not None
        if not complete:
            model_sha256 = self._create_model(version, model)
            for name, data in files.items():
                if not self._create(f"{prefix}/{name}", data):
                    self._refuse_other(version, name)
            # Created last and once: a concurrent register of the same weights may win, with
            # the same files (they passed the same create-only writes) and an earlier time.
            self._create(f"{prefix}/version.json", _json({
                "version": version, "model_sha256": model_sha256, "created_at": _now(),
                "config_name": config.get("name"), "data_manifest_sha256": data_hash}))
        elif any(self.store.read(f"{prefix}/{name}") != data for name, data in files.items()):
            # The same weights from another config or dataset (e.g. a short run that saw the
            # same batches): one version, its first provenance kept, this one recorded beside.
            record = _json({"config": config, "data_manifest_sha256": data_hash})
            digest = hashlib.sha256(record).hexdigest()[:16]
            self._create(f"{prefix}/registrations/{digest}.json", record)
        self.add_plots(version, plots or {})
        return version

    def _create_model(self, version: str, model: bytes) -> str:
        """Store ``model`` unless an interrupted upload stored these weights already (in a file
        saved at another time); the sha256 of the bytes kept."""
        key = f"versions/{version}/model.keras"
        if self._create(key, model):
            return hashlib.sha256(model).hexdigest()
        stored = self.store.read(key)
        if self._weights_id(stored, self.uri(key)) != version:
            raise RegistryError(f"{self.uri(key)} holds other weights than its version id "
                                f"{version} says; delete that folder and register again")
        return hashlib.sha256(stored).hexdigest()

    @staticmethod
    def _weights_id(model: bytes, where: str | os.PathLike) -> str:
        try:
            return weights_id(model)[:16]
        except NotAKerasFile as error:
            raise RegistryError(f"{where}: {error}") from error

    def _refuse_other(self, version: str, name: str) -> None:
        raise RegistryError(f"{self.uri(f'versions/{version}/{name}')} differs: version "
                            f"{version} was registered with these weights and another {name}; "
                            "a version is never rewritten (delete an interrupted upload's "
                            "folder, one without version.json, to register again)")

    def add_plots(self, version: str, plots: dict[str, bytes]) -> None:
        """Pictures about a version: records, not the model, so they may be replaced."""
        for name, png in plots.items():
            self.store.write(f"versions/{version}/plots/{name}.png", png)

    def record_evaluation(self, version: str, eval_key: str, summary: dict,
                          per_image_csv: bytes | None = None) -> None:
        """An evaluation of a version (replaced if run again on the same ``eval_key``)."""
        self._require(version)
        prefix = f"versions/{version}/eval/{eval_key}"
        if per_image_csv is not None:
            self.store.write(f"{prefix}/per_image.csv", per_image_csv)
        self.store.write(f"{prefix}/summary.json", _json(summary))

    def evaluation(self, version: str, eval_key: str) -> dict | None:
        return self._read_json(f"versions/{version}/eval/{eval_key}/summary.json")

    def versions(self) -> list[str]:
        """Complete versions (with ``version.json``), oldest first."""
        found = []
        for key in self._keys():
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "versions" and parts[2] == "version.json":
                found.append((self._read_json(key)["created_at"], parts[1]))
        return [version for _, version in sorted(found)]

    def _require(self, version: str) -> None:
        if self.store.stat(f"versions/{version}/version.json") is None:
            raise RegistryError(f"{self.uri('versions/' + version)}: no such version")

    def _champion_entry(self) -> tuple[dict | None, int]:
        """The pointer and its generation (0: none yet); refused if it cannot be trusted."""
        info = self.store.stat(CHAMPION)
        if info is None:
            return None, 0
        try:
            pointer = json.loads(self.store.read(CHAMPION))
            version = pointer["version"]
        except (ValueError, KeyError, TypeError) as error:
            raise RegistryError(f"{self.uri(CHAMPION)} is corrupt ({error!r}); restore it from "
                                f"{self.uri('decisions/')} or promote a version again") from error
        try:
            self._require(version)
        except RegistryError as error:
            raise RegistryError(f"{self.uri(CHAMPION)} points at a missing version: "
                                f"{error}") from error
        return pointer, info.generation

    def champion(self) -> str | None:
        pointer, _ = self._champion_entry()
        return pointer["version"] if pointer else None

    def last_good_champion(self) -> str | None:
        """The newest promoted version that still exists, from the decision log: what to
        serve while a refused pointer waits for a human (the matting flow's fallback)."""
        keys = sorted((key for key in self._keys()
                       if key.startswith("decisions/") and key.endswith(".json")), reverse=True)
        for key in keys:
            decision = self._read_json(key)
            complete = self.store.stat(f"versions/{decision['candidate']}/version.json")
            if decision["promoted"] and complete is not None:
                return decision["candidate"]
        return None

    def _resolve(self, version: str | None) -> str:
        version = version or self.champion()
        if version is None:
            raise RegistryError(f"{self.root} has no champion yet")
        self._require(version)
        return version

    def model_uri(self, version: str | None = None, verify: bool = True) -> str:
        """The ``model.keras`` of ``version`` (default: the champion), local path or gs:// URI,
        checked first against its registered sha256 (see :meth:`local_model`). A gs:// model
        is downloaded for that into ``localize``'s cache, where a launcher that hashes or
        loads it next finds it; workers that load the URI check the launcher's model version."""
        version = self._resolve(version)
        if verify:
            self._verified(version)
        return self.uri(f"versions/{version}/model.keras")

    def local_model(self, version: str | None = None) -> Path:
        """A local file of the model (downloaded and cached by generation from gs://) whose
        sha256 is the one registered in ``version.json``; otherwise a ``RegistryError``."""
        return self._verified(self._resolve(version))

    def _verified(self, version: str) -> Path:
        uri = self.uri(f"versions/{version}/model.keras")
        expected = self._read_json(f"versions/{version}/version.json").get("model_sha256")
        path = localize(uri)
        actual = sha256_file(path)
        if actual == expected:
            return path
        where = uri
        if is_gcs(uri):
            # Refuse this time, but let the next call download it again rather than meet the
            # same damaged copy forever (a changed object gets a new cache folder anyway).
            path.unlink(missing_ok=True)
            where = f"{uri} (local copy {path})"
        raise RegistryError(f"version {version}: {where} has sha256 {actual}, but version.json "
                            f"registered {expected}; the model was changed or damaged after "
                            "it was registered, so it is not loaded")

    @contextlib.contextmanager
    def _pointer_lock(self) -> Iterator[None]:
        # GCS checks the generation itself; files need a lock around read-compare-replace.
        if not isinstance(self.store, LocalStore):
            yield
            return
        Path(self.root).mkdir(parents=True, exist_ok=True)
        with open(Path(self.root) / ".champion.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def promote(self, candidate: str, eval_key: str, metric: str, margin: float = 0.0,
                min_photos: int = 1) -> Decision:
        """Make ``candidate`` the champion if its evaluation ``eval_key`` counted at least
        ``min_photos`` photos and there is no champion yet, or it beats the champion on
        ``metric`` by at least ``margin`` (with 0: by anything). An evaluation recorded without
        a photo count (``images``, as ``model.evaluate.write_report`` writes it) passes only
        when no minimum is asked (``min_photos=1``)."""
        if metric not in METRIC_DIRECTIONS:
            raise RegistryError(f"unknown metric {metric!r}; known: {sorted(METRIC_DIRECTIONS)}")
        if margin < 0 or min_photos < 1:
            raise RegistryError(f"margin must be >= 0 and min_photos >= 1, not {margin} and "
                                f"{min_photos}")
        direction = METRIC_DIRECTIONS[metric]
        self._require(candidate)
        scores = self.evaluation(candidate, eval_key)
        if scores is None:
            raise RegistryError(f"{candidate} has no evaluation {eval_key!r}")
        score = float(scores["metrics"][metric])
        photos = scores.get("images")
        with self._pointer_lock():
            pointer, generation = self._champion_entry()
            current = pointer["version"] if pointer else None
            current_score = None
            too_few = photos < min_photos if photos is not None else min_photos > 1
            if current == candidate:
                rule, promoted, reason = "already champion", False, "already the champion"
            elif too_few:
                counted = "no photo count" if photos is None else f"{photos} photos"
                rule, promoted = "too few photos", False
                reason = f"the evaluation records {counted}; at least {min_photos} are needed"
            elif current is None:
                rule, promoted, reason = "no champion", True, "no champion yet"
            else:
                theirs = self.evaluation(current, eval_key)
                if theirs is None:
                    raise RegistryError(f"champion {current} has no evaluation {eval_key!r}: "
                                        "evaluate it on the same data before comparing")
                current_score = float(theirs["metrics"][metric])
                rule = "margin"
                promoted, reason = _compare(metric, direction, score, current_score, margin)
            decision = Decision(candidate, current, metric, direction, eval_key, score,
                                current_score, promoted, rule, margin, photos, reason, _now())
            if promoted:
                new = {"version": candidate, "metric": metric, "score": score,
                       "eval_key": eval_key, "previous": current, "promoted_at": _now()}
                try:
                    self.store.write(CHAMPION, _json(new), if_generation_match=generation)
                except WriteConflict as error:
                    raise RegistryError("the champion changed during promotion; "
                                        "evaluate against the new one and retry") from error
        stamp = decision.decided_at.replace(":", "")
        self.store.write(f"decisions/{stamp}-{candidate}.json", _json(asdict(decision)))
        return decision


def _compare(metric: str, direction: str, score: float, theirs: float,
             margin: float) -> tuple[bool, str]:
    """Promoted or not by the margin rule, and why in words."""
    gain = round(score - theirs if direction == "max" else theirs - score, SCORE_DECIMALS)
    head = f"{metric} {score:.6g} vs {theirs:.6g}"
    if gain <= 0:
        worse = f"worse by {-gain:.6g}" if gain < 0 else "equal"
        return False, f"{head}: {worse} ({direction} is better)"
    if gain < margin:
        return False, f"{head}: better by {gain:.6g} < margin {margin:.6g}"
    return True, f"{head}: better by {gain:.6g} >= margin {margin:.6g}"
