"""Which photos need work and where their outputs go: one rule for ``matte p`` and ``matte bucket``.

Beam-free, so the CLI plans a folder in-process and the Beam job runs the same functions as
its steps. For every listing entry: refused or unsafe names and oversized files are dead
letters, hidden files are not photos, each output key gets one source (``a.jpg`` and ``a.png``
both make ``a.png``: the first key wins, the other is a dead letter), and an output is done
when ``<out>/_state/<output>.json`` records the same source version, model version and output
options, and the output still has the recorded size. :func:`commit` writes the output before
its state record, so a kill in between costs a redo, never a skip.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from model.outputs import OutputOptions, output_key
from storage import (
    IO_ERRORS,
    ObjectInfo,
    Refused,
    Store,
    UnsafeKeyError,
    check_key,
    join,
    open_store,
    relative_location,
)

DEFAULT_MAX_BYTES = 200 * 1024 * 1024  # larger files are refused before they are read
STATE_KEY = "_state/{}.json"  # what an output was made from, written after the output


@dataclass(frozen=True)
class RunSettings:
    """Everything besides the source that decides an output's bytes, and the size limit."""

    output: OutputOptions = OutputOptions()
    model_version: str = ""
    official_normalization: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES


@dataclass(frozen=True)
class DeadLetter:
    """A key that failed, at which stage, and why."""

    key: str
    stage: str
    reason: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Job:
    """A source to matte into ``output``; ``generation`` is the output's, 0 if it is absent."""

    source: ObjectInfo
    output: str
    generation: int = 0
    timings: dict = field(default_factory=dict)  # stage -> milliseconds


@dataclass
class Plan:
    """A whole folder's plan (the CLI's; the Beam job spreads the same steps over workers)."""

    todo: list[Job] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # manifest records of outputs done
    dead: list[DeadLetter] = field(default_factory=list)
    # Outputs whose source is gone (deleted or renamed): reported, never kept silently as
    # fresh; ``prune`` removes them.
    orphans: list[str] = field(default_factory=list)


def exclude_for(input_uri: str, output_uri: str) -> str | None:
    """OUT's key prefix when it lies inside IN (never read as inputs), else None;
    ValueError when IN is OUT or lies inside it (outputs would be read as inputs)."""
    if relative_location(input_uri, output_uri) is not None:
        raise ValueError("the input must not be the output folder or lie inside it "
                         "(outputs would be read as inputs)")
    return relative_location(output_uri, input_uri)


def output_for(key: str, options: OutputOptions) -> str:
    """The output key of an input key (same path, new extension), or UnsafeKeyError."""
    return check_key(output_key(check_key(key), options))


def classify(entry: ObjectInfo | Refused,
             settings: RunSettings) -> tuple[str, ObjectInfo] | DeadLetter:
    """(output key, source) for a usable listing entry, a dead letter for an unusable one.
    Hidden files never get here: the listing skips them (``storage.is_hidden``)."""
    if isinstance(entry, Refused):
        return DeadLetter(entry.key, "list", entry.reason)
    try:
        output = output_for(entry.key, settings.output)
    except UnsafeKeyError as error:
        return DeadLetter(entry.key, "list", f"unsafe key: {error.reason}")
    if entry.size > settings.max_bytes:
        return DeadLetter(entry.key, "read", f"too large: {entry.size} bytes > --max-bytes")
    return output, entry


def pick_source(output: str,
                sources: Iterable[ObjectInfo]) -> tuple[ObjectInfo, list[DeadLetter]]:
    """The source that makes ``output`` (first key wins) and a dead letter for each other."""
    first, *others = sorted(sources, key=lambda info: info.key)
    return first, [DeadLetter(other.key, "plan",
                              f"output {output} is already written for {first.key}")
                   for other in others]


def expected_state(source: ObjectInfo, output: str, output_size: int,
                   settings: RunSettings) -> dict:
    return {"key": source.key, "source_size": source.size, "source_version": source.version,
            "model_version": settings.model_version, "output": output,
            "output_size": output_size, "output_options": dataclasses.asdict(settings.output),
            "official_normalization": settings.official_normalization}


def skipped_record(source: ObjectInfo, output: str, settings: RunSettings) -> dict:
    return {"key": source.key, "output": output, "status": "skipped",
            "model_version": settings.model_version}


def _state(out: Store, output: str) -> dict | None:
    key = STATE_KEY.format(output)
    if out.stat(key) is None:
        return None
    try:
        return json.loads(out.read(key))
    except (ValueError, *IO_ERRORS):
        return None  # unreadable state means "not known to be done": the key is redone


def plan_output(out: Store, output: str, source: ObjectInfo, settings: RunSettings) -> Job | None:
    """The job that makes ``output`` from ``source``, or None when it is done already."""
    current = out.stat(output)
    if current is not None and _state(out, output) == expected_state(
            source, output, current.size, settings):
        return None
    return Job(source, output, current.generation if current is not None else 0)


def commit(out: Store, job: Job, data: bytes, settings: RunSettings) -> ObjectInfo:
    """Write the output (create-only, or replacing the generation planned against), then the
    state record that makes it count as done."""
    written = out.write(job.output, data, if_generation_match=job.generation)
    state = expected_state(job.source, job.output, written.size, settings)
    out.write(STATE_KEY.format(job.output), json.dumps(state).encode(), None)
    return written


def plan(source: Store, out: Store, exclude: str | None, settings: RunSettings) -> Plan:
    """Every step above over a whole listing, in key order."""
    result, by_output, listed = Plan(), {}, set()
    for entry in source.scan(exclude=exclude):
        listed.add(entry.key)
        classified = classify(entry, settings)
        if isinstance(classified, DeadLetter):
            result.dead.append(classified)
        else:
            by_output.setdefault(classified[0], []).append(classified[1])
    for output in sorted(by_output):
        chosen, others = pick_source(output, by_output[output])
        result.dead.extend(others)
        job = plan_output(out, output, chosen, settings)
        if job is None:
            result.skipped.append(skipped_record(chosen, output, settings))
        else:
            result.todo.append(job)
    result.todo.sort(key=lambda job: job.source.key)
    result.orphans = orphans(out, set(by_output), listed)
    return result


def orphans(out: Store, outputs: set[str], sources: set[str]) -> list[str]:
    """Outputs not planned this run whose state record names a source the listing no longer
    has. Only ``_state/`` is listed (one record per output), not the outputs themselves. A
    source that is listed but unusable this time (a dead letter) keeps its old output."""
    states = open_store(join(out.uri, STATE_KEY.split("/")[0]))
    found = []
    for info in states.list(hidden=True):
        output = info.key.removesuffix(".json")
        if output in outputs:
            continue
        state = _state(out, output)
        if state is None or state.get("key") not in sources:
            found.append(output)
    return sorted(found)


def prune(out: Store, outputs: list[str]) -> None:
    """Remove orphaned outputs: the state record first, so a crash in between leaves an
    output that the next run reports again, never a state without its output."""
    for output in outputs:
        out.delete(STATE_KEY.format(output))
        out.delete(output)
