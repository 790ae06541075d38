"""Which photos need work and where their outputs go: one rule for ``matte p`` and ``matte bucket``.

Beam-free, so the CLI plans a folder in-process and the Beam job runs the same functions as
its steps. For every listing entry: refused or unsafe names and oversized files are dead
letters, hidden files are not photos, each output key gets one source (``a.jpg`` and ``a.png``
both make ``a.png``: the first key wins, the other is a dead letter), and an output is done
when ``<out>/_state/<output>.json`` records the same source version, model version and output
options, and names the output's current version (GCS generation, or a file's mtime, ctime and
inode) and checksum. :func:`commit` writes the output before its state record, so a kill in
between costs a redo, never a skip; both writes carry the generations seen when planning, so
of two runs racing on one gs:// output the second writer fails (a dead letter) and a state
record never vouches for another run's output.
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
    SourceChanged,
    Store,
    UnsafeKeyError,
    check_key,
    crc32c,
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
    """A source to matte into ``output``; ``generation`` is the output's and
    ``state_generation`` its state record's when planned (GCS), 0 if absent."""

    source: ObjectInfo
    output: str
    generation: int = 0
    state_generation: int = 0
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


def made_from(source: ObjectInfo, output: str, settings: RunSettings) -> dict:
    """What decides an output's bytes: the part of its state record a rerun compares."""
    return {"key": source.key, "source_size": source.size, "source_version": source.version,
            "model_version": settings.model_version, "output": output,
            # As JSON gives it back (a colour tuple becomes a list), so a record compares equal.
            "output_options": json.loads(json.dumps(dataclasses.asdict(settings.output))),
            "official_normalization": settings.official_normalization}


def read_failure(key: str, error: BaseException) -> DeadLetter:
    """The dead letter of a source that could not be read (``IO_ERRORS``); one whose read was
    pinned to its listed version and found it replaced is redone by the next run."""
    if isinstance(error, SourceChanged):
        return DeadLetter(key, "read", f"{error}; the next run mattes the new version")
    return DeadLetter(key, "read", f"cannot read: {error}")


def skipped_record(source: ObjectInfo, output: str, settings: RunSettings) -> dict:
    return {"key": source.key, "output": output, "status": "skipped",
            "model_version": settings.model_version}


def read_state(out: Store, output: str) -> tuple[dict | None, int]:
    """(the output's state record or None, the record's generation: 0 if absent or a file)."""
    info = out.stat(STATE_KEY.format(output))
    if info is None:
        return None, 0
    try:
        return json.loads(out.read(STATE_KEY.format(output))), info.generation
    except (ValueError, *IO_ERRORS):
        # Unreadable state means "not known to be done": the key is redone.
        return None, info.generation


def is_done(state: dict | None, current: ObjectInfo | None, expected: dict) -> bool:
    """The output exists, is the very version its state record names, and was made from
    what ``expected`` says (source version, model, output options)."""
    return (state is not None and current is not None
            and state.get("output_version") == current.version
            and {name: state.get(name) for name in expected} == expected)


def plan_output(out: Store, output: str, source: ObjectInfo, settings: RunSettings) -> Job | None:
    """The job that makes ``output`` from ``source``, or None when it is done already."""
    current = out.stat(output)
    state, state_generation = read_state(out, output)
    if is_done(state, current, made_from(source, output, settings)):
        return None
    return Job(source, output, current.generation if current is not None else 0,
               state_generation)


def commit(out: Store, job: Job, data: bytes, settings: RunSettings) -> ObjectInfo:
    """Write the output (create-only, or replacing the generation planned against), then the
    state record naming the written version and its checksum, on the same condition."""
    written = out.write(job.output, data, if_generation_match=job.generation)
    state = {**made_from(job.source, job.output, settings), "output_size": written.size,
             "output_version": written.version, "output_crc32c": crc32c(data)}
    out.write(STATE_KEY.format(job.output), json.dumps(state).encode(),
              if_generation_match=job.state_generation)
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
    found = []
    for output in state_outputs(out):
        if output in outputs:
            continue
        state, _ = read_state(out, output)
        if is_orphan(state, sources):
            found.append(output)
    return sorted(found)


def state_outputs(out: Store) -> Iterable[str]:
    """The output key of every state record (only ``_state/`` is listed, not the outputs)."""
    states = open_store(join(out.uri, STATE_KEY.split("/")[0]))
    return (info.key.removesuffix(".json") for info in states.list(hidden=True))


def is_orphan(state: dict | None, sources: set[str] | Iterable[str]) -> bool:
    """An output not planned this run is orphaned when its state record is unreadable or
    names a source the listing no longer has."""
    return state is None or state.get("key") not in sources


def prune(out: Store, outputs: list[str]) -> None:
    """Remove orphaned outputs: the state record first, so a crash in between leaves an
    output that the next run reports again, never a state without its output."""
    for output in outputs:
        out.delete(STATE_KEY.format(output))
        out.delete(output)
