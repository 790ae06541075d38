"""A Beam pipeline as dask bags: the translation of our DaskRunner (``pipelines.dask_runner``).

Beam 2.77's DaskRunner (``apache_beam.runners.dask``) turns each transform into a dask bag, but:

1. a ParDo with tagged outputs (``with_outputs``: our dead letters and skip records,
   RunInference's failures) puts *all* its outputs into one bag, and every consumer reads that
   bag: the matte stage got dead-letter dicts among its jobs (``'dict' object has no attribute
   'source'``). Elements are pickled by dask and survive intact; it is the tags that are lost;
2. what a DoFn emits in ``finish_bundle`` is dropped (BatchElements' last batch, our pending
   writes): the bundle's outputs are collected before ``finish_bundle`` runs;
3. a side input is computed inside the consuming task, on the worker's local scheduler,
   re-running everything upstream of it once per side input;
4. only the last transform's bag is computed, and a one-element ``Create`` keeps the whole
   run in one partition: one worker does all the work;
5. there are no metrics.

Here a ParDo's bag holds ``(tag, WindowedValue)`` pairs and each consumer reads its own tag;
``finish_bundle``'s outputs belong to the bundle; a side input is a dask dependency, computed
once; GroupByKey spreads its groups, by a hash of the key, over at least ``--dask_npartitions``
partitions (default: the cluster's worker threads when the run starts) and deals those out to
the workers (dask runs a task where its inputs are, which kept every step on the worker that
ran the one-element ``Create``); a ParDo's tasks are named after it; each bundle reports
its metric updates, which the result sums (attempted = committed: a task that dask retries
counts twice). Computing those updates runs every ParDo, so no branch is left out. Beam's
``DaskOptions`` and its overrides (Create, GroupByKey, Flatten) are used as they are.

Each step is one task per partition whose outputs are held until its consumers ran (no
fusion, unlike Beam's other runners): a partition's decoded photos and alphas sit in its
worker's memory between the decode, matte and write steps. For a large bucket, pass
``--dask_npartitions`` of about photos / 64 so that a partition stays small.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import re
from typing import Any

import apache_beam as beam
import dask
import dask.bag as db
from apache_beam import pvalue
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import (
    DoFnContext,
    DoFnInvoker,
    DoFnSignature,
    Receiver,
    _OutputHandler,
)
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly
from apache_beam.runners.dask.transform_evaluator import defenestrate, get_windowed_value
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.utils.counters import CounterFactory

METRICS_TAG = "__dask_runner_metrics__"  # a bundle's metric updates, read by no consumer
TASK_PREFIX = "beam_"  # a ParDo's tasks are beam_<its label>-<token>


class _Collect(Receiver):
    def __init__(self, tag: str | None, out: list):
        self._tag, self._out = tag, out

    def receive(self, windowed_value) -> None:
        self._out.append((self._tag, windowed_value))


class _Receivers(dict):
    """One receiver per output tag, all appending (tag, value) to one list."""

    def __init__(self, out: list):
        super().__init__()
        self._out = out

    def __missing__(self, tag):
        self[tag] = receiver = _Collect(tag, self._out)
        return receiver


@dataclasses.dataclass(frozen=True)
class _Step:
    """What a ParDo's tasks need: no PCollection (that would pickle the whole pipeline)."""

    label: str
    fn: beam.DoFn
    args: tuple
    kwargs: dict
    window_fn: Any
    side_inputs: tuple  # (view class, view options) per side input, in order


def run_bundle(elements, step: _Step, *side_input_values: list) -> list:
    """One dask partition as one Beam bundle: setup, start, process, finish, teardown; the
    outputs of process and finish_bundle as (tag, WindowedValue), then the metric updates."""
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(
        window_fn=step.window_fn, main_receivers=receivers[None], tagged_receivers=receivers,
        per_element_output_counter=None, output_batch_converter=None,
        process_yields_batches=False, process_batch_yields_elements=False)
    side_inputs = [SideInputMap(view, options,
                                [get_windowed_value(value, None) for value in values])
                   for (view, options), values in zip(step.side_inputs, side_input_values,
                                                      strict=True)]
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(step.fn), handler, context=DoFnContext(step.label, state=None),
        side_inputs=side_inputs, input_args=list(step.args), input_kwargs=step.kwargs,
        user_state_context=None, bundle_finalizer_param=beam.DoFn.BundleFinalizerParam())
    container = MetricsContainer(step.label)
    sampler = statesampler.StateSampler(step.label, CounterFactory())
    statesampler.set_current_tracker(sampler)  # Metrics.* find the container through it
    try:
        with sampler.scoped_state(step.label, "process", metrics_container=container):
            invoker.invoke_setup()
            try:
                invoker.invoke_start_bundle()
                for element in elements:
                    invoker.invoke_process(element)
                invoker.invoke_finish_bundle()
            finally:
                invoker.invoke_teardown()
    finally:
        statesampler.set_current_tracker(None)
    out.append((METRICS_TAG, container.get_cumulative()))
    return out


def _has_tag(tag, item: tuple) -> bool:
    return item[0] == tag


def _value(item: tuple):
    return item[1].value


def _metric_updates(item: tuple):
    return item[1]


def _slot(slots: list[str], key: tuple) -> list[str]:
    """The worker for partition ``key[1]``: round robin over the workers' threads."""
    return [slots[key[1] % len(slots)]]


def _group_key(item: tuple):
    return item[0]


def _grouped_values(group: tuple) -> tuple:
    key, items = group
    return key, [defenestrate(item[1]) for item in items]


def _concat(parts: list) -> list:
    return [value for part in parts for value in part]


class Translator(PipelineVisitor):
    """Every leaf transform as a dask bag; a ParDo's bag holds (tag, WindowedValue) pairs."""

    def __init__(self, slots: list[str], partitions: int | None, partition_size: int | None):
        self._slots, self._partition_size = slots, partition_size
        self._partitions = partitions or len(slots) or 1
        self._bags: dict[AppliedPTransform, db.Bag] = {}
        self._pardos: list[db.Bag] = []

    def bag_of(self, pcoll: pvalue.PCollection) -> db.Bag:
        bag = self._bags[pcoll.producer]
        if type(pcoll.producer.transform) is beam.ParDo:
            return bag.filter(functools.partial(_has_tag, pcoll.tag)).map(_value)
        return bag

    def visit_transform(self, node: AppliedPTransform) -> None:
        transform = node.transform
        inputs = [self.bag_of(value) for value in node.inputs
                  if not isinstance(value, pvalue.PBegin)]
        if type(transform) is _Create:
            items = list(transform.values)
            bag = (db.from_sequence(items, partition_size=self._partition_size)
                   if self._partition_size else
                   db.from_sequence(items, npartitions=max(1, min(len(items),
                                                                  self._partitions))))
        elif type(transform) is beam.ParDo:
            bag = self._pardo(node, transform, inputs[0])
            self._pardos.append(bag)
        elif type(transform) is _GroupByKeyOnly:
            # A task shuffle keeps its input's partition count (it ignores npartitions):
            # split the input first, or a one-element Create leaves everything in one task.
            grouped = inputs[0]
            if grouped.npartitions < self._partitions:
                grouped = grouped.repartition(npartitions=self._partitions)
            grouped = grouped.groupby(_group_key, shuffle="tasks")
            # Dask runs a task where its inputs are, so the steps after a one-partition
            # start all stay on one worker unless work stealing happens to move them: deal
            # the groups' partitions out to the workers (others may take one if need be).
            if not self._slots:  # no worker yet (a cluster scaled to zero): dask decides
                bag = grouped.map(_grouped_values)
            else:
                with dask.annotate(workers=functools.partial(_slot, self._slots),
                                   allow_other_workers=True):
                    bag = grouped.map(_grouped_values)
        elif type(transform) is _Flatten:
            bag = db.concat(inputs)
        else:  # e.g. the group-also-by-window step of a global-window GroupByKey
            bag = inputs[0] if inputs else None
        self._bags[node] = bag

    def _pardo(self, node: AppliedPTransform, transform: beam.ParDo, input_bag: db.Bag):
        main_input = next(iter(node.main_inputs.values()))
        window_fn = main_input.windowing.windowfn
        views, values = [], []
        for side_input in node.side_inputs:
            views.append((type(side_input), side_input._view_options()))
            # The bag's own keys (no optimisation): the tasks the main graph computes too.
            parts = self.bag_of(side_input.pvalue).to_delayed(optimize_graph=False)
            values.append(dask.delayed(_concat, pure=True)(parts))
        step = _Step(node.full_label, transform.fn, tuple(_light(arg) for arg in transform.args),
                     {key: _light(arg) for key, arg in transform.kwargs.items()}, window_fn,
                     tuple(views))
        # Tasks named after the step: dask estimates durations per name, and one name for
        # every step (a ms-long filter and a seconds-long batch of inference alike) made it
        # keep the heavy tasks next to their inputs on one worker.
        token = TASK_PREFIX + re.sub(r"[^0-9A-Za-z]+", "_", node.full_label)
        return input_bag.map(get_windowed_value, window_fn).map_partitions(
            run_bundle, step, *values, token=token)

    def metric_updates(self) -> db.Bag:
        """Every ParDo's metric updates: computing them runs every ParDo once."""
        return db.concat([bag.filter(functools.partial(_has_tag, METRICS_TAG))
                          .map(_metric_updates) for bag in self._pardos])


def _light(arg):
    """A side-input placeholder without its PCollection (the invoker only checks its type)."""
    if isinstance(arg, pvalue.AsSideInput):
        arg = copy.copy(arg)
        arg.pvalue = None
    return arg
