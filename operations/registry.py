"""The model registry: immutable versions and a ``champion`` pointer, in a folder or on gs://.

    <root>/versions/<id>/model.keras, config.json, data.json, plots/*.png,
                         eval/<eval key>/{summary.json, per_image.csv}, version.json (last)
    <root>/champion.json                      {"version", "metric", "score", "eval_key", ...}
    <root>/decisions/<time>-<id>.json         every promotion decision with both scores

A version's id is a hash of its model file, so registering the same file twice (a retried
task) writes the same version. ``version.json`` is written last: a folder without it is an
interrupted upload, not a version. Promotion compares the candidate and the champion on the
*same* evaluation (same data, same protocol: the ``eval_key``) and swaps the pointer only if
the candidate is strictly better, as a compare-and-swap: ``if_generation_match`` on GCS, a
file lock around read-compare-replace locally. Storage is the ``storage`` package; the
``matte promote`` command is ``cli.training``.
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
from storage import LocalStore, WriteConflict, localize, open_store

CHAMPION = "champion.json"


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
    reason: str
    decided_at: str


def _now() -> str:
    # Microseconds, so decision file names sort in the order the decisions were taken.
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _json(value: object) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def manifest_hash(data_root: str) -> str:
    """SHA-256 of an ingested dataset's manifest (canonical JSON), which lists every shard's
    checksum: equal hashes mean the same training data."""
    from model.data import read_manifest

    return hashlib.sha256(_json(read_manifest(data_root))).hexdigest()


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

    def register(self, model_path: str | os.PathLike, config: dict, data_hash: str | None,
                 plots: dict[str, bytes] | None = None) -> str:
        """Upload a trained model with its config and data hash; returns the version id."""
        model = Path(model_path).read_bytes()
        digest = hashlib.sha256(model).hexdigest()
        version = digest[:16]
        prefix = f"versions/{version}"
        self.store.write(f"{prefix}/model.keras", model)
        self.store.write(f"{prefix}/config.json", _json(config))
        self.store.write(f"{prefix}/data.json", _json({"manifest_sha256": data_hash}))
        self.add_plots(version, plots or {})
        if self.store.stat(f"{prefix}/version.json") is None:  # keep the first creation time
            self.store.write(f"{prefix}/version.json", _json({
                "version": version, "model_sha256": digest, "created_at": _now(),
                "config_name": config.get("name"), "data_manifest_sha256": data_hash}))
        return version

    def add_plots(self, version: str, plots: dict[str, bytes]) -> None:
        for name, png in plots.items():
            self.store.write(f"versions/{version}/plots/{name}.png", png)

    def record_evaluation(self, version: str, eval_key: str, summary: dict,
                          per_image_csv: bytes | None = None) -> None:
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

    def model_uri(self, version: str | None = None) -> str:
        """The ``model.keras`` of ``version`` (default: the champion), local path or gs:// URI."""
        version = version or self.champion()
        if version is None:
            raise RegistryError(f"{self.root} has no champion yet")
        self._require(version)
        return self.uri(f"versions/{version}/model.keras")

    def local_model(self, version: str | None = None) -> Path:
        """A local file of the model, downloaded (and cached by generation) from gs://."""
        return localize(self.model_uri(version))

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

    def promote(self, candidate: str, eval_key: str, metric: str) -> Decision:
        """Make ``candidate`` the champion if it beats it on ``metric`` over ``eval_key``."""
        if metric not in METRIC_DIRECTIONS:
            raise RegistryError(f"unknown metric {metric!r}; known: {sorted(METRIC_DIRECTIONS)}")
        direction = METRIC_DIRECTIONS[metric]
        self._require(candidate)
        scores = self.evaluation(candidate, eval_key)
        if scores is None:
            raise RegistryError(f"{candidate} has no evaluation {eval_key!r}")
        score = float(scores["metrics"][metric])
        with self._pointer_lock():
            pointer, generation = self._champion_entry()
            current = pointer["version"] if pointer else None
            current_score = None
            if current is None:
                promoted, reason = True, "no champion yet"
            elif current == candidate:
                promoted, reason = False, "already the champion"
            else:
                theirs = self.evaluation(current, eval_key)
                if theirs is None:
                    raise RegistryError(f"champion {current} has no evaluation {eval_key!r}: "
                                        "evaluate it on the same data before comparing")
                current_score = float(theirs["metrics"][metric])
                better = score > current_score if direction == "max" else score < current_score
                promoted = better
                reason = f"{metric} {score:.6g} vs {current_score:.6g} ({direction} is better)"
            decision = Decision(candidate, current, metric, direction, eval_key, score,
                                current_score, promoted, reason, _now())
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

