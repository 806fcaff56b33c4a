"""The Beam engine of pipelines/convert.py: the same shards, written by Apache Beam workers.

  python -m pipelines.convert --engine=beam [--runner=DirectRunner|DataflowRunner|FlinkRunner|SparkRunner]
      [Beam pipeline options] --dataset=... --annotations=... --video_dir=... --output_dir=... [...]

Imported only for `--engine=beam`: the local engine needs no Beam. Both engines share everything but
the scheduling: `convert.prepare` reads the annotations, assigns the videos to shards (sha1 order,
round robin) and checks the manifest where the pipeline is launched; each shard job then becomes one
element of the pipeline, and a worker writes it with `shard_writer.write_shard` (the local engine's
decode / encode / skip rules, so a shard holds the same bytes as the local engine's); every shard's
stats are merged into the one `report.json` by `convert.finish` in the pipeline's last step.

A shard is one element, not a `WriteToTFRecord` sink: Beam's sinks choose the shard of each record
themselves, so the videos per shard and their order would differ from the local engine's. Instead
an attempt writes its shard under a temporary name unique to the attempt
(`.convert/{shard}.tmp-beam-{uuid}`) and renames it into place when complete: a retried or zombie
attempt rewrites the same bytes under the same name, a killed one leaves only its hidden temporary
file (removed when the conversion ends), so a reader never sees a partial or duplicated shard.
The annotation file is read where the pipeline is launched (not with `ReadFromText`): the report
names bad rows by line, and the classes and the shard assignment need every row anyway.

Paths: local (one filesystem every worker sees: NFS, a Filestore mount) or any filesystem
tf.io.gfile knows (gs://... for Dataflow): the annotation and class files, the video folder (listed
with tf.io.gfile.walk; each video read whole into memory and decoded by PyAV from that buffer) and
the output folder (shards written by tf.io.TFRecordWriter, renamed with tf.io.gfile.rename). On an
object store a rename is a copy then a delete: a shard still appears whole or not at all (an object
is visible only once its upload completes), the temporary object stays in `.convert/` (no shard glob
reaches it) until the delete. Beam itself reads none of these files; the runner's own paths
(--temp_location, --staging_location) need a filesystem Beam knows (gs:// has both).
"""

import dataclasses
import json
import os
import uuid

import apache_beam as beam
import tensorflow as tf
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import convert as convert_lib
from pipelines import shard_writer

ATTEMPT_TAG = "beam-"  # temporary shard names: `{shard}.tmp-beam-{uuid}`


class WriteShardFn(beam.DoFn):
    """Writes one shard job (see shard_writer.write_shard) -> its stats dict."""

    def __init__(self):
        self.videos = beam.metrics.Metrics.counter("convert", "videos")
        self.converted = beam.metrics.Metrics.counter("convert", "converted")
        self.skipped = beam.metrics.Metrics.counter("convert", "skipped")

    def process(self, job):
        stats = shard_writer.write_shard(
            dict(job, tmp_tag=f"{ATTEMPT_TAG}{uuid.uuid4().hex}"), progress=self.videos.inc
        )
        self.converted.inc(stats["converted"])
        self.skipped.inc(len(stats["skipped"]))
        yield stats


def _finish(stats, plan):
    convert_lib.finish(plan, stats)


def remove_attempts(output_dir):
    """Deletes the temporary files of attempts that did not finish (killed workers)."""
    folder = shard_writer.bookkeeping_dir(output_dir)
    for name in tf.io.gfile.listdir(folder):
        if f".tmp-{ATTEMPT_TAG}" in name:
            tf.io.gfile.remove(os.path.join(folder, name))


def convert(dataset, annotations, video_dir, output_dir, pipeline_args=(), **kwargs):
    """Converts like `pipelines.convert.convert`, on the Beam runner `pipeline_args` choose.

    Args:
      dataset, annotations, video_dir, output_dir: as for convert.convert.
      pipeline_args: Beam pipeline options, e.g. ["--runner=DirectRunner",
        "--direct_running_mode=multi_processing", "--direct_num_workers=2"].
      **kwargs: convert.convert's other arguments (classes, train_annotations,
        short_side, fps, num_shards, skip_bad_rows, prefix, jpeg_quality,
        min_frames, compression).

    Returns:
      The report dict, also written to `output_dir/report.json`.
    """
    plan = convert_lib.prepare(dataset, annotations, video_dir, output_dir, **kwargs)
    remove_attempts(output_dir)  # an earlier Beam run's dead attempts
    report_plan = dataclasses.replace(plan, jobs=[])  # the last step needs no records
    with beam.Pipeline(options=PipelineOptions(list(pipeline_args))) as pipeline:
        _ = (
            pipeline
            | "Shards" >> beam.Create(plan.jobs)
            | "Spread" >> beam.Reshuffle()  # one shard per work item, on any worker
            | "Write" >> beam.ParDo(WriteShardFn())
            | "Collect" >> beam.combiners.ToList()
            | "Report" >> beam.Map(_finish, report_plan)
        )
    remove_attempts(output_dir)
    with tf.io.gfile.GFile(os.path.join(output_dir, "report.json")) as f:
        return json.load(f)
