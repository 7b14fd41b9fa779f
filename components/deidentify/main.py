"""Deidentify stage: de-identify a FHIR Bulk NDJSON export with Apache Beam, under a versioned policy.

``python -m components.deidentify.main --input-data DIR --output-data DIR --dead-letter DIR
--report FILE --report-json DIR --metrics FILE [--policy FILE] [--reid-map DIR]
[--executor-output FILE] [-- BEAM OPTIONS]`` (contract: docs/stages.md).

Policy: ``--policy`` names a YAML policy (default: the shipped
``components/deidentify/policies/safe-harbor-v1.yaml``); it is validated before anything runs
and its id, version and sha256 are stamped on every output resource (``meta.tag``) and recorded
in the report, with the sha256 of the de-identification code. The HMAC key comes from
``CLINFLOW_HMAC_KEY``. ``--reid-map DIR`` writes a re-identification map (pseudonym -> original
id, file mode 0600) only when the policy says ``reidentification_map: true``; it must lie outside
every output directory and never reaches the report.

Beam options after ``--`` go to ``PipelineOptions`` unchanged, e.g.
``-- --runner DataflowRunner --project P --region R --temp_location gs://B/tmp``,
``-- --runner FlinkRunner --flink_master HOST:8081 --environment_type LOOPBACK`` or
``-- --runner SparkRunner --spark_master_url spark://HOST:7077``. Without a ``--runner`` (and with
``--runner DirectRunner``, the pipeline parameter's default) the in-process ``FnApiRunner`` (the
DirectRunner's batch engine) runs, because ``DirectRunner`` first tries to download the Prism
runner binary, which needs network access. With a remote runner every path must be one its
workers can reach (e.g. ``gs://``).

Outputs: ``<ResourceType>.<nnn>.ndjson`` in ``--output-data``; ``dead_letter.ndjson`` in
``--dead-letter``; ``deid_report.json`` in ``--report-json``; the HTML report; metrics. The
stage fails (after writing the report, and after deleting the de-identified files) when the
residual-PHI scan finds any identifying value of any input resource in the output, or when the
counts do not add up (in = out + dead letter, per file and in total).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from typing import Any

from clinflow.errors import UserError, run_cli
from clinflow.kfp_outputs import scalar_metrics, write_executor_output
from clinflow.ndjson import is_ndjson_name

METRICS_ARTIFACT = "metrics"
REPORT_JSON = "deid_report.json"
DEAD_LETTER_FILE = "dead_letter.ndjson"
SKIPPED_NAMES = frozenset({"log.ndjson", "manifest.json"})
DEFAULT_RUNNER = "FnApiRunner"
LOCAL_RUNNER_ALIASES = frozenset({"DirectRunner", "directrunner", "direct"})
REID_MAP_FILE = "reid_map.ndjson"
# Text outputs the residual-PHI scan reads (DICOM is binary: its lane checks each file itself).
SCANNED_OUTPUTS = ("*.ndjson", "device_logs/*", "documents/*.json")


def split_argv(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Splits stage flags from the Beam options that follow ``--``."""
    items = list(argv)
    if "--" in items:
        at = items.index("--")
        return items[:at], items[at + 1 :]
    return items, []


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses the stage flags (Beam options are split off first).

    Args:
        argv: Stage arguments without the program name and without the Beam options.

    Returns:
        The parsed flags.
    """
    parser = argparse.ArgumentParser(
        prog="python -m components.deidentify.main",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--input-data", required=True, help="Input Dataset directory of FHIR NDJSON (ingest output)")
    parser.add_argument("--output-data", required=True, help="Output Dataset directory for de-identified NDJSON")
    parser.add_argument("--dead-letter", required=True, help="Output Dataset directory for dead_letter.ndjson")
    parser.add_argument("--report", required=True, help="Output HTML file: the de-identification report")
    parser.add_argument("--report-json", required=True, help="Output Artifact directory for deid_report.json")
    parser.add_argument("--metrics", required=True, help="Output Metrics file (JSON)")
    parser.add_argument("--executor-output", default=None, help="KFP executor output file ({{$.outputs.output_file}})")
    parser.add_argument(
        "--policy", default=None, help="De-identification policy YAML (default: policies/safe-harbor-v1.yaml)"
    )
    parser.add_argument(
        "--reid-map",
        default=None,
        help="Directory for the re-identification map (refused unless the policy sets reidentification_map: true)",
    )
    return parser.parse_args(argv)


def list_input_files(directory: str) -> tuple[list[str], list[str]]:
    """Lists the NDJSON files of the input directory.

    Args:
        directory: Local path or Beam filesystem URL (``gs://...``).

    Returns:
        Sorted resource file paths, and the sorted names of recorded-and-skipped files
        (``log.ndjson``/``manifest.json`` of a bulk export).

    Raises:
        UserError: The directory is missing or holds no NDJSON file.
    """
    from apache_beam.io.filesystems import FileSystems

    if "://" not in directory and not os.path.isdir(directory):
        raise UserError(f"--input-data {directory}: no such directory; pass the ingest stage's output Dataset")
    matched = FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list
    files, skipped = [], []
    for metadata in sorted(matched, key=lambda m: m.path):
        name = os.path.basename(metadata.path)
        if name in SKIPPED_NAMES:
            skipped.append(name)
        elif is_ndjson_name(name):
            files.append(metadata.path)
    if not files:
        raise UserError(
            f"--input-data {directory}: no *.ndjson or *.ndjson.gz files; pass a FHIR Bulk NDJSON export directory"
        )
    return files, skipped


def check_output_dir(directory: str, input_dir: str) -> None:
    """Refuses an output directory that is the input or already holds NDJSON files.

    Raises:
        UserError: Writing there would mix old and new files or overwrite the input.
    """
    if "://" in directory:
        return
    if os.path.abspath(directory) == os.path.abspath(input_dir):
        raise UserError(f"--output-data {directory} is the input directory; choose a new directory")
    if os.path.isdir(directory) and any(is_ndjson_name(name) for name in os.listdir(directory)):
        raise UserError(f"--output-data {directory} already holds NDJSON files; choose an empty directory")


def pipeline_options(beam_args: Sequence[str]) -> Any:
    """Builds Beam PipelineOptions from the pass-through flags (``FnApiRunner`` by default).

    Raises:
        UserError: A pass-through flag is not a Beam option.
    """
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(list(beam_args))
    unknown = set(options.get_all_options(retain_unknown_options=True)) - set(options.get_all_options())
    if unknown:
        raise UserError(
            f"unknown Beam pipeline option(s) after '--': {', '.join('--' + name for name in sorted(unknown))}"
        )
    standard = options.view_as(StandardOptions)
    if not standard.runner or standard.runner in LOCAL_RUNNER_ALIASES:
        standard.runner = DEFAULT_RUNNER
    return options


def work_directory(options: Any) -> str:
    """A scratch directory for Beam temp files and count files (``temp_location`` when set)."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import GoogleCloudOptions

    temp_location = options.view_as(GoogleCloudOptions).temp_location
    if temp_location:
        return FileSystems.join(temp_location, f"clinflow-deidentify-{uuid.uuid4().hex}")
    return tempfile.mkdtemp(prefix="clinflow-deidentify-")


def delete_outputs(output_dir: str) -> int:
    """Deletes the de-identified files, NDJSON and every lane's (used when the residual-PHI scan fails)."""
    from apache_beam.io.filesystems import FileSystems

    patterns = [FileSystems.join(output_dir, name) for name in (*SCANNED_OUTPUTS, "dicom/*")]
    paths = [m.path for match in FileSystems.match(patterns) for m in match.metadata_list]
    if paths:
        FileSystems.delete(paths)
    return len(paths)


def check_reid_map(args: argparse.Namespace, allowed: bool, source: str) -> str | None:
    """Validates ``--reid-map``: allowed by the policy and outside every output directory.

    Returns:
        The map's file path prefix, or None without the flag.

    Raises:
        UserError: The policy does not allow a map, or the directory is inside an output.
    """
    if args.reid_map is None:
        return None
    if not allowed:
        raise UserError(
            f"--reid-map refused: policy {source} sets reidentification_map: false; use a policy that allows "
            "a re-identification map (and restrict access to it) or drop the flag"
        )
    target = os.path.abspath(args.reid_map)
    outputs = [args.output_data, args.dead_letter, args.report_json, os.path.dirname(os.path.abspath(args.report))]
    for output in outputs:
        base = os.path.abspath(output)
        if target == base or target.startswith(base + os.sep):
            raise UserError(f"--reid-map {args.reid_map} is inside an output directory; choose a separate directory")
    os.makedirs(target, mode=0o700, exist_ok=True)
    return os.path.join(target, REID_MAP_FILE)


def lane_inventory(input_dir: str) -> dict[str, str]:
    """Describes the ingest layout's lane subdirectories present in the input (file counts only)."""
    from apache_beam.io.filesystems import FileSystems

    from components.deidentify import lanes as _lanes  # registers the dicom and device_logs lanes
    from components.deidentify import pipeline

    del _lanes
    found = {}
    for lane in pipeline.LANE_DIRS:
        directory = FileSystems.join(input_dir, lane)
        if "://" not in input_dir and not os.path.isdir(directory):
            continue
        files = FileSystems.match([FileSystems.join(directory, "*")])[0].metadata_list
        if not files:
            continue
        status = "processed" if lane in pipeline.LANES else "not processed: no lane registered; nothing copied out"
        found[lane] = f"{len(files)} files, {status}"
    return found


def run_stage(args: argparse.Namespace, beam_args: Sequence[str]) -> dict[str, Any]:
    """Runs both pipelines and returns the report (before any write of report files).

    Raises:
        UserError: Missing key, bad policy, bad input directory, or bad Beam options.
    """
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import StandardOptions

    from components.deidentify import pipeline, report
    from components.deidentify.keys import load_key
    from components.deidentify.policy import load_policy

    the_policy = load_policy(args.policy)
    key = load_key()
    input_files, skipped = list_input_files(args.input_data)
    check_output_dir(args.output_data, args.input_data)
    reid_path = check_reid_map(args, bool(the_policy.document["reidentification_map"]), the_policy.source)
    options = pipeline_options(beam_args)
    lanes = lane_inventory(args.input_data)
    work_dir = work_directory(options)
    for directory in (args.output_data, args.dead_letter):
        if not FileSystems.exists(directory):
            FileSystems.mkdirs(directory)
    print(
        f"deidentify: policy {the_policy.label} (sha256 {the_policy.sha256[:12]}), {len(input_files)} input files, "
        f"runner {options.view_as(StandardOptions).runner}",
        file=sys.stderr,
    )
    timings: dict[str, float] = {}
    try:
        started = time.perf_counter()
        pipeline.run_deidentify(
            input_files,
            key,
            the_policy,
            args.output_data,
            FileSystems.join(args.dead_letter, DEAD_LETTER_FILE),
            work_dir,
            options,
            reid_path=reid_path,
            input_dir=args.input_data,
            lanes=[lane for lane in lanes if lane in pipeline.LANES],
        )
        timings["deidentify"] = time.perf_counter() - started
        if reid_path is not None and os.path.exists(reid_path):
            os.chmod(reid_path, 0o600)
        stats = pipeline.read_json(FileSystems.join(work_dir, pipeline.STATS_FILE))
        scanned = [
            pattern
            for pattern in (FileSystems.join(args.output_data, name) for name in SCANNED_OUTPUTS)
            if FileSystems.match([pattern])[0].metadata_list
        ]
        scanned.append(FileSystems.join(args.dead_letter, DEAD_LETTER_FILE))
        print("deidentify: residual-PHI scan of the written outputs", file=sys.stderr)
        started = time.perf_counter()
        input_resources = sum(count for name, count in stats.items() if name.startswith(pipeline.IN_PREFIX))
        pipeline.run_scan(input_files, scanned, work_dir, options, the_policy, input_resources)
        timings["residual_scan"] = time.perf_counter() - started
        scan = pipeline.read_json(FileSystems.join(work_dir, pipeline.SCAN_FILE))
    finally:
        if FileSystems.exists(work_dir):
            FileSystems.delete([work_dir])
    return report.build_report(
        stats,
        scan,
        [os.path.basename(path) for path in input_files],
        skipped,
        str(options.view_as(StandardOptions).runner),
        the_policy,
        lanes=lanes,
        reid_map_written=reid_path is not None,
        timings=timings,
    )


def write_reports(args: argparse.Namespace, document: dict[str, Any]) -> dict[str, float]:
    """Writes ``deid_report.json``, the HTML report, the metrics file and the executor output."""
    from components.deidentify import report

    os.makedirs(args.report_json, exist_ok=True)
    with open(os.path.join(args.report_json, REPORT_JSON), "w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
    for path in (args.report, args.metrics):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(args.report, "w", encoding="utf-8") as handle:
        handle.write(report.render_html(document))
    values = scalar_metrics(report.metrics(document))
    with open(args.metrics, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2, sort_keys=True)
    write_executor_output(args.executor_output, {METRICS_ARTIFACT: values})
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the deidentify stage.

    Args:
        argv: Arguments without the program name; ``None`` means ``sys.argv[1:]``.

    Returns:
        0 on success.

    Raises:
        UserError: Bad input, missing key, or residual PHI found in the output.
    """
    own, beam_args = split_argv(sys.argv[1:] if argv is None else argv)
    args = parse_args(own)
    started = time.monotonic()
    document = run_stage(args, beam_args)
    write_reports(args, document)
    scan = document["residual_phi_scan"]
    if not document["resources"]["balanced"]:
        deleted = delete_outputs(args.output_data)
        unbalanced = sorted(name for name, entry in document["resources"]["files"].items() if not entry["balanced"])
        raise UserError(
            f"deidentify counts do not add up (in != out + dead letter; files: {', '.join(unbalanced) or 'totals'}); "
            f"{deleted} output files deleted; see {os.path.join(args.report_json, REPORT_JSON)}"
        )
    if not scan["passed"]:
        deleted = delete_outputs(args.output_data)
        found = ", ".join(f"{c}={n}" for c, n in scan["hits"].items() if n)
        where = ", ".join(f"{k}={n}" for k, n in scan["hits_by_file_type"].items())
        raise UserError(
            f"residual-PHI scan found identifying values of the input in the output ({found}; files: {where}); "
            f"{deleted} output files deleted; see {os.path.join(args.report_json, REPORT_JSON)} and extend "
            f"the policy ({document['policy']['source']})"
        )
    elapsed = time.monotonic() - started
    totals = document["resources"]["totals"]
    print(
        f"deidentify: {totals['in']:,} resources in, {totals['out']:,} out "
        f"({len(document['resources']['out'])} types) -> {args.output_data}; "
        f"{totals['dead_letter']:,} dead-lettered -> {os.path.join(args.dead_letter, DEAD_LETTER_FILE)}; "
        f"residual PHI hits 0 in {scan['lines_scanned']:,} lines; k-anonymity k={document['k_anonymity']['k']}; "
        f"policy {document['policy_version']}; report {args.report}; "
        f"{elapsed:.1f}s ({totals['in'] / max(elapsed, 1e-9):,.0f} resources/s; "
        + ", ".join(f"{phase} {seconds:.1f}s" for phase, seconds in document["timings_seconds"].items())
        + ")",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
