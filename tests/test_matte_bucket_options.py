"""Options of a bucket run: parsing, validation before launch, the pinned runner, the CLI hook."""

from __future__ import annotations

import argparse

import apache_beam as beam
import pytest
from apache_beam.runners.portability import prism_runner
from apache_beam.testing.util import assert_that, equal_to

from cli.bucket import add_commands, main, parse
from pipelines.options import OptionsError
from pipelines.runners import pinned_runner

GPU = "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"


def dataflow(*extra: str) -> list[str]:
    return ["gs://b/in", "gs://b/out", "--runner", "DataflowRunner", "--project", "p",
            "--region", "us-central1", "--temp_location", "gs://b/tmp",
            "--sdk_container_image", "europe-docker.pkg.dev/p/r/matte-worker:1", *extra]


def test_defaults_and_beam_flags_pass_through(tmp_path):
    options, pipeline_options = parse([str(tmp_path), str(tmp_path / "out"),
                                       "--direct_num_workers", "2", "--bgcolor", "white"])
    assert options.output.bgcolor == (255, 255, 255) and options.model == "lite"
    assert options.exclude == "out"  # OUT inside IN: outputs are never listed as inputs
    assert options.run_id and not options.require_gpu
    assert (options.min_batch_size, options.max_batch_size) == (8, 8)
    assert pipeline_options.get_all_options()["direct_num_workers"] == 2


@pytest.mark.parametrize(("argv", "message"), [
    (["{tmp}", "{tmp}"], "must not be the output folder"),
    (["{tmp}/in", "{tmp}"], "input folder not found"),
    (["{tmp}", "{tmp}/o", "--jpeg"], "needs --bgcolor"),
    (["{tmp}", "{tmp}/o", "--min-batch-size", "9"], "--min-batch-size"),
    (["{tmp}", "{tmp}/o", "--min-batch-size", "0"], "--min-batch-size"),
    (["{tmp}", "{tmp}/o", "--run-id", "../x"], "--run-id"),
    (["{tmp}", "{tmp}/o", "--max-pixels", "0"], "--max-pixels"),
    (["{tmp}", "{tmp}/o", "--runnr", "DirectRunner"], "unknown option --runnr"),
])
def test_bad_options_are_refused(tmp_path, argv, message):
    with pytest.raises(OptionsError, match=message):
        parse([arg.format(tmp=tmp_path) for arg in argv])


def test_input_inside_output_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(OptionsError, match="inside it"):
        parse([str(tmp_path / "in"), str(tmp_path)])


@pytest.mark.parametrize(("argv", "message"), [
    (["gs://b/in", "gs://b/out", "--runner", "DataflowRunner"],
     "needs --project, --region, --temp_location"),
    (dataflow()[:-2], "--sdk_container_image"),
    (["/local/in", *dataflow()[1:]], "IN_URI must be gs://"),
    (dataflow("--weights", "/home/me/u2netp.onnx"), "--weights must be gs://"),
    (dataflow("--temp_location", "/tmp/x"), "--temp_location must be a gs:// path"),
    (dataflow("--dataflow_service_options", GPU), "G2 machine"),
    (dataflow("--machine_type", "g2-standard-4", "--dataflow_service_options",
              "worker_accelerator=type:nvidia-l4;count:1"), "install-nvidia-driver"),
])
def test_dataflow_runs_are_checked_before_launch(argv, message):
    with pytest.raises(OptionsError, match=message):
        parse(argv)


def test_a_gpu_request_makes_the_workers_require_one():
    options, _ = parse(dataflow("--machine_type", "g2-standard-4",
                                "--dataflow_service_options", GPU))
    assert options.require_gpu
    hinted, _ = parse(dataflow("--machine_type", "g2-standard-8", "--resource_hints",
                               "accelerator=type:nvidia-l4;count:1;install-nvidia-driver"))
    assert hinted.require_gpu


def test_direct_runner_is_pinned_to_the_python_runner_never_prism(monkeypatch, tmp_path):
    def no_prism(*args, **kwargs):
        raise AssertionError("PrismRunner was started (it downloads a Go binary)")

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", no_prism)
    for runner in ([], ["--runner", "DirectRunner"]):
        _, pipeline_options = parse([str(tmp_path), str(tmp_path / "o"), *runner])
        runner_object = pinned_runner(pipeline_options)
        assert type(runner_object).__name__ == "FnApiRunner"
        with beam.Pipeline(runner=runner_object, options=pipeline_options) as p:
            assert_that(p | beam.Create([1, 2]) | beam.Map(lambda x: x * 2), equal_to([2, 4]))
    assert pinned_runner(parse(dataflow())[1]) is None


def test_cli_subcommand_forwards_every_argument(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="matte")
    commands = parser.add_subparsers(dest="command", required=True)
    add_commands(commands)
    args = parser.parse_args(["bucket", "in", "out", "--weights", "w", "--runner", "X"])
    assert args.argv == ["in", "out", "--weights", "w", "--runner", "X"]
    assert parser.parse_args(["bucket", "--help"]).argv == ["--help"]
    with pytest.raises(SystemExit) as exited:
        args.handler(parser.parse_args(["bucket", "--help"]))
    assert exited.value.code == 0 and "IN_URI" in capsys.readouterr().out
    missing = parser.parse_args(["bucket", str(tmp_path / "nope"), str(tmp_path / "out")])
    assert missing.handler(missing) == 2
    assert "input folder not found" in capsys.readouterr().err
    assert main([str(tmp_path), str(tmp_path / "o"), "--jpeg"]) == 2
