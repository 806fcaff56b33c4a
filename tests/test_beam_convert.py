"""Tests of pipelines/beam_convert.py: the Beam engine writes the local engine's shards and report
(bad files and rows included) on the DirectRunner's multi-process engine (2 worker processes), every
video exactly once when Beam replays or retries a bundle or a killed worker's job is rerun, only shards
under a shard glob, and the same output when every input and output path is a tf.io.gfile URL (ram://)
instead of a local path."""

import contextlib
import json
import os
import shutil
import signal

import pytest
import tensorflow as tf
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

from pipelines import beam_convert, convert, shard_writer
from tests import video_clips
from tests.test_convert import hidden_tmp_files, kinetics_layout, read_shards


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    return video_clips.make_clips(tmp_path_factory.getbasetemp() / "video_clips")


# The engine of the DirectRunner's multi-process mode, named: Beam 2.77's `--runner=DirectRunner` first
# tries PrismRunner (downloading its binary from GitHub; offline it falls back to this runner), so on a
# machine with network access the tests would run on another runner than here.
FN_API_RUNNER = "--runner=apache_beam.runners.portability.fn_api_runner.FnApiRunner"
MULTI_PROCESS = [FN_API_RUNNER, "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
IN_PROCESS = [FN_API_RUNNER, "--direct_running_mode=in_memory"]


def layout(root, clips):
    """kinetics_layout (a text file named .mp4, a missing video, a short CSV row) plus an empty file, a
    truncated mp4 whose index is lost (nothing decodes) and a truncated avi (kept, "incomplete")."""
    extra = {
        "kkk_000000_000010": ("mpeg4", os.path.join("abseiling", "kkk_000000_000010.avi")),
        "ppp_000000_000010": ("portrait", os.path.join("abseiling", "ppp_000000_000010.avi")),
    }
    annotations, videos, paths = kinetics_layout(root, clips, extra)
    folder = os.path.join(videos, "abseiling")
    open(os.path.join(folder, "emp_000000_000010.mp4"), "wb").close()
    video_clips.truncate(clips["h264"], os.path.join(folder, "cut_000000_000010.mp4"))
    video_clips.truncate(clips["mpeg4"], os.path.join(folder, "avi_000000_000010.avi"))
    with open(annotations, "a") as f:
        f.write("abseiling,emp,0,10,train\nabseiling,cut,0,10,train\nabseiling,avi,0,10,train\n")
        f.write('"abseiling,unclosed,0,10,train\n')  # a bad row: an unclosed quote
    return annotations, videos, paths


def shard_bytes(folder, names):
    out = {}
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


class KilledOnceFn(beam_convert.WriteShardFn):
    """WriteShardFn whose worker process is SIGKILLed at the second video of shard 1's first attempt
    (after the first is in its temporary file); `marker` records that it happened."""

    def __init__(self, marker, launcher_pid):
        super().__init__()
        self.marker, self.launcher_pid = marker, launcher_pid

    def process(self, job):
        if job["name"].startswith("train-00001-") and not os.path.exists(self.marker):
            real, calls = shard_writer.video_example, []

            def dies_at_the_second_video(record, *args, **kwargs):
                calls.append(record.video_id)
                if len(calls) == 2 and os.getpid() != self.launcher_pid:  # never the test's process
                    with open(self.marker, "w") as f:
                        f.write(f"killed {os.getpid()} at {calls}")
                    os.kill(os.getpid(), signal.SIGKILL)
                return real(record, *args, **kwargs)

            shard_writer.video_example = dies_at_the_second_video  # in the worker process only
        yield from super().process(job)


@contextlib.contextmanager
def deadline(seconds):
    """Fails (TimeoutError) instead of hanging if the block takes longer than `seconds`."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# The killed worker's gRPC streams end in exceptions on Beam's own threads: expected here.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_beam_engine_writes_the_local_engines_shards_and_report(tmp_path, clips, monkeypatch):
    annotations, videos, _ = layout(tmp_path, clips)
    local, beam = str(tmp_path / "local"), str(tmp_path / "beam")
    kwargs = dict(short_side=32, num_shards=3, skip_bad_rows=True)
    expected = convert.convert("kinetics", annotations, videos, local, show_progress=False, **kwargs)
    names = expected["shards"]
    # A worker process killed mid-shard: the multi-process DirectRunner (Beam's FnApiRunner) does not
    # retry a bundle (apache/beam#18640), the job fails; it leaves no partial shard a reader would take.
    marker = tmp_path / "killed"
    monkeypatch.setattr(beam_convert, "WriteShardFn", lambda: KilledOnceFn(str(marker), os.getpid()))
    with pytest.raises(RuntimeError), deadline(300):
        beam_convert.convert("kinetics", annotations, videos, beam, MULTI_PROCESS, **kwargs)
    monkeypatch.undo()
    assert marker.read_text().startswith("killed")
    finished = [os.path.basename(p) for p in tf.io.gfile.glob(os.path.join(beam, "*.tfrecord*"))]
    assert "train-00001-of-00003.tfrecord" not in finished and set(finished) <= set(names)
    assert shard_bytes(beam, finished) == shard_bytes(local, finished)  # whatever is there is whole
    assert any(".tmp-beam-" in n for n in hidden_tmp_files(beam))  # the killed attempt's file
    # The rerun is the retry: it keeps the finished shards and writes the others.
    # A killed worker's partial shard of an earlier run: removed, never read.
    os.makedirs(os.path.join(beam, ".convert"), exist_ok=True)
    stale = os.path.join(beam, ".convert", "train-00000-of-00003.tfrecord.tmp-beam-0123")
    shutil.copy(clips["h264"], stale)
    # Every bundle is replayed once (its output dropped, its files left: what a retry sees).
    report = beam_convert.convert(
        "kinetics", annotations, videos, beam, MULTI_PROCESS + ["--direct_runner_bundle_repeat=1"], **kwargs
    )
    assert report == expected
    with open(os.path.join(beam, "report.json")) as f:
        assert json.load(f) == expected
    # The bad inputs really are in there, with the local engine's reasons.
    assert sorted(s["video"] for s in report["skipped"]) == [
        "cut_000000_000010",
        "ddd_000001_000011",
        "emp_000000_000010",
    ]
    assert [e["video"] for e in report["incomplete"]] == ["avi_000000_000010"]
    assert report["missing"] == ["eee_000003_000013"] and len(report["bad_rows"]) == 2
    assert report["converted"] == 6
    # The same files: shards byte for byte (same videos, same order, same frames), classes.txt.
    assert shard_bytes(beam, names) == shard_bytes(local, names)
    for name in ("classes.txt",):
        with open(os.path.join(beam, name)) as f, open(os.path.join(local, name)) as g:
            assert f.read() == g.read()
    stored = read_shards(beam)  # asserts no video is stored twice
    assert len(stored) == 6
    # Output globs read only shards; the bookkeeping is the local engine's (a local rerun resumes it).
    assert sorted(os.path.basename(p) for p in tf.io.gfile.glob(os.path.join(beam, "*.tfrecord*"))) == names
    assert (
        sorted(os.listdir(beam))
        == sorted(os.listdir(local))
        == sorted(names + [".convert", "classes.txt", "report.json"])
    )
    assert sorted(os.listdir(os.path.join(beam, ".convert"))) == sorted(
        os.listdir(os.path.join(local, ".convert"))
    )
    assert hidden_tmp_files(beam) == [] and not os.path.exists(stale)
    before = {n: os.stat(os.path.join(beam, n)).st_mtime_ns for n in names}
    assert convert.convert("kinetics", annotations, videos, beam, show_progress=False, **kwargs) == expected
    assert {n: os.stat(os.path.join(beam, n)).st_mtime_ns for n in names} == before


def upload(local, url):
    """Copies the local tree `local` to the tf.io.gfile URL `url`."""
    for root, _, files in os.walk(local):
        target = url + root[len(local) :].replace(os.sep, "/")
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), f"{target}/{name}", overwrite=True)


def assert_output_equals_local(out, local, expected, report, url, root):
    """The conversion into `out` (a URL) from inputs under `url` (a copy of the local folder `root`)
    holds the local engine's output in `local`: the same report (paths aside), shards byte for byte,
    classes.txt, file names; no temporary file left."""
    as_local = json.loads(json.dumps(report).replace(url, root))
    assert as_local == expected
    with tf.io.gfile.GFile(f"{out}/report.json") as f:
        assert json.loads(f.read().replace(url, root)) == expected
    names = expected["shards"]
    for name in names + ["classes.txt"]:
        with tf.io.gfile.GFile(f"{out}/{name}", "rb") as f, open(os.path.join(local, name), "rb") as g:
            assert f.read() == g.read(), name
    assert sorted(tf.io.gfile.listdir(out)) == sorted(os.listdir(local))
    assert sorted(tf.io.gfile.listdir(f"{out}/.convert")) == sorted(
        os.listdir(os.path.join(local, ".convert"))
    )
    assert sorted(os.path.basename(p) for p in tf.io.gfile.glob(f"{out}/*.tfrecord*")) == names


def test_gfile_urls_for_inputs_and_outputs_give_the_local_engines_output(tmp_path, clips, monkeypatch):
    """ram:// (TensorFlow's in-memory filesystem, standing in for gs://: a path no os call can
    reach) through both engines, the Beam engine's workers in this process (ram:// lives in one
    process). CSV, class list, video listing and decoding, shards, renames and the report all go
    through tf.io.gfile; an os call on a URL would fail or leave a folder named `ram:` here."""
    monkeypatch.chdir(tmp_path)
    root = str(tmp_path / "in")
    annotations, videos, _ = layout(root, clips)
    local = str(tmp_path / "local")
    kwargs = dict(short_side=32, num_shards=3, skip_bad_rows=True)
    expected = convert.convert("kinetics", annotations, videos, local, show_progress=False, **kwargs)
    url = f"ram://{tmp_path.name}/in"
    upload(root, url)
    ram_inputs = (f"{url}/train.csv", f"{url}/videos")
    try:
        out = f"ram://{tmp_path.name}/local"
        report = convert.convert("kinetics", *ram_inputs, out, show_progress=False, **kwargs)
        assert_output_equals_local(out, local, expected, report, url, root)
        out = f"ram://{tmp_path.name}/beam"
        report = beam_convert.convert("kinetics", *ram_inputs, out, IN_PROCESS, **kwargs)
        assert_output_equals_local(out, local, expected, report, url, root)
        assert not [n for n in tf.io.gfile.listdir(f"{out}/.convert") if ".tmp-" in n]
    finally:
        tf.io.gfile.rmtree(f"ram://{tmp_path.name}")
    assert sorted(os.listdir(tmp_path)) == ["in", "local"]  # no `ram:` folder


class _DiesOnce(Exception):
    pass


def test_a_bundle_that_dies_mid_shard_is_retried_and_each_video_is_stored_once(tmp_path, clips, monkeypatch):
    """The first attempt at one shard dies after writing part of it (fault injected here, with a
    marker file: no hook in the pipeline); Beam's retrying local runner runs the bundle again."""
    annotations, videos, paths = kinetics_layout(
        tmp_path,
        clips,
        {f"x{i}_000000_000010": ("mjpeg", os.path.join("abseiling", f"x{i}.avi")) for i in range(3)},
    )
    out, marker = str(tmp_path / "out"), tmp_path / "died"
    records, _ = convert.read_annotations("kinetics", annotations, videos, skip_bad_rows=True)
    victim_shard = convert.assign_shards(records, 2)[1]
    victim = victim_shard[1].video_id  # the second video of shard 1: the first is in its file
    victim_name = "train-00001-of-00002.tfrecord"
    real = shard_writer.video_example
    attempts = []

    def dies_once(record, *args, **kwargs):
        if record.video_id == victim:
            attempts.append([n for n in hidden_tmp_files(out) if n.startswith(f"{victim_name}.tmp-beam-")])
            if not marker.exists():
                marker.write_text("died")
                raise _DiesOnce(f"worker died while writing {victim}")
        return real(record, *args, **kwargs)

    monkeypatch.setattr(shard_writer, "video_example", dies_once)
    kwargs = dict(short_side=32, num_shards=2, skip_bad_rows=True)
    report = _run_retrying(annotations, videos, out, kwargs)
    assert marker.exists() and len(attempts) == 2  # it died, and was retried
    assert all(len(a) == 1 for a in attempts) and attempts[0] != attempts[1]  # each attempt its own file
    assert report["converted"] == 6 and sorted(read_shards(out)) == sorted(paths)  # each exactly once
    assert hidden_tmp_files(out) == []
    local = str(tmp_path / "local")
    monkeypatch.setattr(shard_writer, "video_example", real)
    expected = convert.convert("kinetics", annotations, videos, local, show_progress=False, **kwargs)
    assert report == expected
    assert shard_bytes(out, expected["shards"]) == shard_bytes(local, expected["shards"])


def _run_retrying(annotations, videos, out, kwargs):
    """beam_convert.convert on BundleBasedDirectRunner, the DirectRunner that retries a failed bundle
    (in this process, so the test's fault reaches it; the multi-process one fails the job instead)."""
    return beam_convert.convert(
        "kinetics", annotations, videos, out, [f"--runner={BundleBasedDirectRunner.__name__}"], **kwargs
    )
