"""Tests of pipelines/convert (library and main): TFRecord round trip, resampling, short videos kept,
bookkeeping out of the shards' way, GZIP, resume after kills (injected from outside)."""

import glob
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from pipelines import convert, dataset, decode, kinetics, tfrecord
from tests import video_clips

FOOTBALL = "passing American football (in game)"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    return video_clips.make_clips(tmp_path_factory.getbasetemp() / "video_clips")


def read_shards(output_dir, pattern="*.tfrecord", compression=""):
    """{video_id: (context dict, list of JPEG bytes)} over every shard; asserts
    no video appears twice."""
    out = {}
    for path in sorted(glob.glob(os.path.join(output_dir, pattern))):
        for serialized in tf.data.TFRecordDataset(path, compression_type=compression):
            context, sequence = tfrecord.parse_sequence_example(serialized)
            context = {k: v.numpy() for k, v in context.items()}
            video_id = context[tfrecord.VIDEO_ID].decode()
            assert video_id not in out, f"{video_id} stored twice"
            out[video_id] = (context, list(sequence[tfrecord.IMAGE_ENCODED].numpy()))
    return out


def assert_jpegs_hold(jpegs, expected):
    """The stored JPEGs are exactly `expected` frames encoded at quality 90 (so
    order and content are right) and decode to within JPEG error of them."""
    assert len(jpegs) == len(expected)
    for jpeg, frame in zip(jpegs, expected, strict=True):
        assert jpeg == tf.io.encode_jpeg(frame, quality=90).numpy()
    frames = np.stack([tf.io.decode_jpeg(j).numpy() for j in jpegs])
    assert frames.shape == expected.shape
    assert np.abs(frames.astype(np.float32) - expected).mean() < 4.0


def hidden_tmp_files(output_dir):
    """Temporary files in output_dir and its bookkeeping folder .convert/."""
    folders = [output_dir, os.path.join(output_dir, ".convert")]
    return [n for d in folders if os.path.isdir(d) for n in os.listdir(d) if ".tmp-" in n]


def kinetics_layout(root, clips, extra=()):
    """Kinetics videos (h264 mp4 per class, vp9 webm, flat mjpeg avi, a text file
    named .mp4) and a train.csv with a missing clip and a short row."""
    videos = os.path.join(root, "videos")
    files = {
        "aaa_000010_000020": ("h264", os.path.join("abseiling", "aaa_000010_000020.mp4")),
        "bbb_000000_000010": ("vp9", os.path.join(FOOTBALL, "bbb_000000_000010.webm")),
        "ccc_000005_000015": ("mjpeg", "ccc_000005_000015.avi"),
    }
    files.update(extra)
    rows = ["label,youtube_id,time_start,time_end,split"]
    for vid, (clip, rel) in files.items():
        os.makedirs(os.path.dirname(os.path.join(videos, rel)), exist_ok=True)
        shutil.copy(clips[clip], os.path.join(videos, rel))
        label = FOOTBALL if FOOTBALL in rel else "abseiling"
        youtube_id, start, end = vid.rsplit("_", 2)
        rows.append(f'"{label}",{youtube_id},{int(start)},{int(end)},train')
    with open(os.path.join(videos, "abseiling", "ddd_000001_000011.mp4"), "w") as f:
        f.write("this is not a video\n")
    rows += ["abseiling,ddd,1,11,train", "abseiling,eee,3,13,train", "abseiling,fff,3"]
    annotations = os.path.join(root, "train.csv")
    with open(annotations, "w") as f:
        f.write("\n".join(rows) + "\n")
    paths = {vid: os.path.join(videos, rel) for vid, (_, rel) in files.items()}
    return annotations, videos, paths


def test_round_trip_kinetics(tmp_path, clips):
    annotations, videos, paths = kinetics_layout(tmp_path, clips)
    out = str(tmp_path / "out")
    report = convert.convert(
        "kinetics",
        annotations,
        videos,
        out,
        short_side=64,
        num_shards=2,
        skip_bad_rows=True,
        show_progress=False,
    )
    names = ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    assert report["shards"] == names
    assert report["converted"] == 3
    assert [s["video"] for s in report["skipped"]] == ["ddd_000001_000011"]
    assert "cannot open: not a media file" in report["skipped"][0]["reason"]
    assert report["missing"] == ["eee_000003_000013"]
    assert [(r["line"], r["file"]) for r in report["bad_rows"]] == [(7, annotations)]
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f) == report
    with open(os.path.join(out, "classes.txt")) as f:
        assert f.read() == f"abseiling\n{FOOTBALL}\n"
    assert sorted(os.path.basename(p) for p in glob.glob(f"{out}/*.tfrecord")) == names
    assert hidden_tmp_files(out) == []

    stored = read_shards(out)
    assert sorted(stored) == sorted(paths)
    for vid, path in paths.items():
        context, jpegs = stored[vid]
        label = FOOTBALL if vid.startswith("bbb") else "abseiling"
        assert context[tfrecord.LABEL_TEXT].decode() == label
        assert context[tfrecord.LABEL_INDEX] == ["abseiling", FOOTBALL].index(label)
        assert context[tfrecord.NUM_FRAMES] == len(jpegs) == 40
        assert context[tfrecord.FPS] == pytest.approx(25.0)
        assert (context[tfrecord.HEIGHT], context[tfrecord.WIDTH]) == (64, 78)
        expected = decode.decode_all(path, short_side=64)
        assert_jpegs_hold(jpegs, expected)

    # A rerun finds every shard finished and leaves the files alone.
    before = {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names}
    assert (
        convert.convert(
            "kinetics",
            annotations,
            videos,
            out,
            short_side=64,
            num_shards=2,
            skip_bad_rows=True,
            show_progress=False,
        )
        == report
    )
    assert {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in names} == before
    # Other settings in the same output_dir would mix conversions: refused.
    with pytest.raises(
        ValueError,
        match=r"different conversion \(differs in: "
        r"short_side\)",
    ):
        convert.convert(
            "kinetics",
            annotations,
            videos,
            out,
            short_side=32,
            num_shards=2,
            skip_bad_rows=True,
            show_progress=False,
        )


def test_moments_resampled_to_fps(tmp_path, clips):
    videos = tmp_path / "training"
    os.makedirs(videos / "blocking")
    os.makedirs(videos / "asking")
    shutil.copy(clips["offset_mkv"], videos / "blocking" / "getty-1.mkv")  # csv: .mp4
    shutil.copy(clips["carphone"], videos / "asking" / "yt-2.mp4")
    (tmp_path / "moments_categories.txt").write_text("asking,0\nblocking,1\n")
    (tmp_path / "trainingSet.csv").write_text(
        "blocking/getty-1.mp4,blocking,3,0\nasking/yt-2.mp4,asking,2,1\n"
    )
    out = str(tmp_path / "out")
    report = convert.convert(
        "moments",
        str(tmp_path / "trainingSet.csv"),
        str(videos),
        out,
        short_side=48,
        fps=10,
        show_progress=False,
    )
    assert report["converted"] == 2 and report["shards"] == ["trainingSet-00000-of-00001.tfrecord"]
    stored = read_shards(out)
    for vid, path, label in [
        ("blocking/getty-1.mp4", videos / "blocking" / "getty-1.mkv", 1),
        ("asking/yt-2.mp4", videos / "asking" / "yt-2.mp4", 0),
    ]:
        context, jpegs = stored[vid]
        info = decode.probe(path)
        assert len(jpegs) == context[tfrecord.NUM_FRAMES] == math.ceil(info.duration * 10 - 1e-6)
        assert context[tfrecord.FPS] == 10.0 and context[tfrecord.LABEL_INDEX] == label
        assert_jpegs_hold(jpegs, decode.decode_all(path, short_side=48, fps=10))


def convert_command(annotations, videos, out, *flags):
    return [
        sys.executable,
        "-m",
        "pipelines.convert",
        "--dataset=kinetics",
        f"--annotations={annotations}",
        f"--video_dir={videos}",
        f"--output_dir={out}",
        "--short_side=32",
        "--skip_bad_rows",
        *flags,
    ]


def wait_until(predicate, process, seconds=120):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_killed_worker_then_rerun_stores_every_video_once(tmp_path, clips):
    extra = {
        f"x{i}_000000_000010": (clip, os.path.join("abseiling", f"x{i}.mp4"))
        for i, clip in enumerate(["h264_444", "mpeg4", "portrait", "h264", "mpeg4", "mjpeg"])
    }
    annotations, videos, paths = kinetics_layout(tmp_path, clips, extra)
    out = str(tmp_path / "out")
    kwargs = dict(short_side=32, num_shards=3, skip_bad_rows=True, show_progress=False)
    process = subprocess.Popen(
        convert_command(annotations, videos, out, "--num_shards=3", "--workers=2"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:  # SIGKILL a pool worker (OOM killer, preemption) as it writes a shard

        def writing():
            return [n for n in hidden_tmp_files(out) if ".tfrecord.tmp-" in n]

        wait_until(writing, process)
        pid = int(writing()[0].rsplit(".tmp-", 1)[1])
        assert pid != process.pid
        os.kill(pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert b"a conversion worker died" in stderr
    finished = glob.glob(os.path.join(out, "*.tfrecord"))
    assert len(finished) < 3 and hidden_tmp_files(out)  # really interrupted
    assert not os.path.exists(os.path.join(out, "report.json"))
    report = convert.convert("kinetics", annotations, videos, out, workers=1, **kwargs)
    assert report["converted"] == 9 and len(report["skipped"]) == 1
    assert sorted(read_shards(out)) == sorted(paths)  # each exactly once
    assert hidden_tmp_files(out) == []
    assert sorted(os.path.basename(p) for p in glob.glob(f"{out}/*.tfrecord")) == report["shards"]


# Fault injection from the test: the converter's main is killed right after renaming a
# finished shard, before its stats are written (the narrowest crash window).
_CRASH_AFTER_RENAME = """
import os, runpy, sys
from pipelines import files
write = files.write_atomic
def crash_at_stats(path, data):
    if path.endswith(".tfrecord.json"):
        os._exit(17)
    write(path, data)
files.write_atomic = crash_at_stats
sys.argv = ["pipelines.convert", *sys.argv[1:]]
runpy.run_module("pipelines.convert", run_name="__main__", alter_sys=True)
"""


def test_crash_between_rename_and_stats_redoes_that_shard(tmp_path, clips):
    annotations, videos, paths = kinetics_layout(tmp_path, clips)
    out = str(tmp_path / "out")
    command = convert_command(annotations, videos, out, "--num_shards=2")
    result = subprocess.run(
        [sys.executable, "-c", _CRASH_AFTER_RENAME, *command[3:]], cwd=REPO, capture_output=True
    )
    assert result.returncode == 17, result.stderr.decode()[-2000:]
    finished = glob.glob(os.path.join(out, "*.tfrecord"))
    assert len(finished) == 1  # renamed: a complete shard, but no stats
    assert not os.path.exists(os.path.join(out, ".convert", os.path.basename(finished[0]) + ".json"))
    assert not os.path.exists(os.path.join(out, "report.json"))
    before = os.stat(finished[0]).st_mtime_ns
    report = convert.convert(
        "kinetics",
        annotations,
        videos,
        out,
        short_side=32,
        num_shards=2,
        skip_bad_rows=True,
        show_progress=False,
    )
    assert os.stat(finished[0]).st_mtime_ns != before  # redone, not trusted
    assert report["converted"] == 3
    assert sorted(read_shards(out)) == sorted(paths)
    assert hidden_tmp_files(out) == []


def test_killed_main_then_rerun(tmp_path, clips):
    extra = {f"c{i}_000000_000010": ("mpeg4", os.path.join("abseiling", f"c{i}.avi")) for i in range(9)}
    annotations, videos, paths = kinetics_layout(tmp_path, clips, extra)
    out = str(tmp_path / "out")
    process = subprocess.Popen(
        convert_command(annotations, videos, out, "--num_shards=6", "--workers=1"),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:  # SIGKILL as soon as the first shard is being written
        wait_until(
            lambda: (
                os.path.isdir(out)
                and (hidden_tmp_files(out) or any(n.endswith(".tfrecord") for n in os.listdir(out)))
            ),
            process,
        )
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    finished = glob.glob(os.path.join(out, "*.tfrecord"))
    assert len(finished) < 6  # killed mid-run
    records, _ = kinetics.read_kinetics(annotations, videos, skip_bad_rows=True)
    shards = convert.assign_shards(records, 6)
    for path in finished:  # what a reader matches is a complete shard
        shard = shards[int(os.path.basename(path).split("-")[1])]
        ids = [r.video_id for r in shard if r.video_id != "ddd_000001_000011"]
        stored = [
            tfrecord.parse_sequence_example(s)[0][tfrecord.VIDEO_ID].numpy().decode()
            for s in tf.data.TFRecordDataset(path)
        ]
        assert stored == ids
    report = convert.convert(
        "kinetics",
        annotations,
        videos,
        out,
        short_side=32,
        num_shards=6,
        skip_bad_rows=True,
        show_progress=False,
    )
    assert report["converted"] == len(paths) == 12
    assert sorted(read_shards(out)) == sorted(paths)
    assert hidden_tmp_files(out) == []
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f)["shards"] == [f"train-{i:05d}-of-00006.tfrecord" for i in range(6)]


def test_progress_line_has_rate_and_eta():
    stream = io.StringIO()
    progress = convert._Progress(4, stream=stream)
    progress.start -= 2.0  # pretend 2 s passed
    progress.update(2, final=True)
    line = stream.getvalue()
    assert line.startswith("convert: 2/4 videos (50.0%) ")
    rate = float(line.split(") ")[1].split(" videos/s")[0])
    assert 0.9 < rate <= 1.0
    assert line.rstrip().endswith("ETA 00:00:02")


def test_argument_errors(tmp_path):
    assert convert.parse_fps("KEEP") is None and convert.parse_fps("12.5") == 12.5
    for bad in ("0", "-1", "fast", "nan"):
        with pytest.raises(ValueError, match="--fps must be 'keep' or a positive"):
            convert.parse_fps(bad)
    for kwargs, match in [
        ({"dataset": "ucf"}, "dataset must be one of"),
        ({"num_shards": 0}, "num_shards must be a positive int"),
        ({"workers": 0}, "workers must be a positive int"),
        ({"fps": 0}, "fps must be a positive number"),
        ({"jpeg_quality": 101}, "jpeg_quality must be an int"),
        ({"short_side": 0}, "short_side must be a positive int or None. Received: short_side=0"),
        ({"min_frames": 0}, "min_frames must be a positive int. Received: min_frames=0"),
        ({"compression": "zip"}, "compression must be one of"),
        ({"prefix": ".hidden"}, "prefix must be a plain file name. Received: prefix='.hidden'"),
    ]:
        args = dict(dataset="kinetics", annotations="a.csv", video_dir=".", output_dir=str(tmp_path))
        args.update(kwargs)
        with pytest.raises(ValueError, match=match):
            convert.convert(**args)
    assert os.listdir(tmp_path) == []  # refused before anything is written
    assert (
        convert.shard_prefix(None, "lists/val.csv") == "val"
        and convert.shard_prefix("k400", "a.csv") == "k400"
    )


def test_the_main_refuses_bad_input_in_one_line_with_status_2(tmp_path):
    missing = str(tmp_path / "missing.csv")
    out = str(tmp_path / "out")
    refused = subprocess.run(
        convert_command(missing, str(tmp_path), out), cwd=REPO, capture_output=True, text=True
    )
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.endswith(
        f"pipelines.convert: error: cannot read Kinetics annotations {missing}: "
        f"[Errno 2] No such file or directory: '{missing}'\n"
    )
    stray = subprocess.run(
        convert_command(missing, str(tmp_path), out, "extra"), cwd=REPO, capture_output=True, text=True
    )
    assert (stray.returncode, stray.stderr.splitlines()[-1]) == (
        2,
        "pipelines.convert: error: unexpected arguments: extra",
    )
    assert not os.path.exists(out)
    usage = subprocess.run(
        [sys.executable, "-m", "pipelines.convert", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert usage.returncode == 1  # absl's --help exits 1 after printing
    assert usage.stdout.startswith("Converts Kinetics / Moments in Time videos to SequenceExample TFRecord")
    assert "  python -m pipelines.convert --dataset=kinetics --annotations=train.csv \\\n" in usage.stdout


def short_layout(root, clips):
    """Kinetics videos that decode only in part: cut downloads (faststart mp4, avi,
    webm, a tiny avi), an avi whose header declares 400 frames, a cut mp4 whose
    index was at the end (nothing decodes), and a complete clip."""
    cuts = os.path.join(root, "cuts")
    os.makedirs(cuts)
    sources = {
        "cutmp4_000000_000010": video_clips.truncate(clips["faststart"], os.path.join(cuts, "a.mp4")),
        "cutavi_000000_000010": video_clips.truncate(clips["mpeg4"], os.path.join(cuts, "b.avi")),
        "cutweb_000000_000010": video_clips.truncate(clips["vp9"], os.path.join(cuts, "c.webm")),
        "tinyav_000000_000010": video_clips.truncate(clips["mjpeg"], os.path.join(cuts, "d.avi"), 0.2),
        "liesav_000000_000010": video_clips.declare_avi_frames(
            clips["mpeg4"], os.path.join(cuts, "e.avi"), 400
        ),
        "nomoov_000000_000010": video_clips.truncate(clips["h264"], os.path.join(cuts, "f.mp4")),
        "wholev_000000_000010": clips["h264"],
    }
    originals = {
        "cutmp4": "faststart",
        "cutavi": "mpeg4",
        "cutweb": "vp9",
        "tinyav": "mjpeg",
        "liesav": "mpeg4",
        "wholev": "h264",
    }
    videos = os.path.join(root, "videos", "abseiling")
    os.makedirs(videos)
    rows = ["label,youtube_id,time_start,time_end,split"]
    for vid, path in sources.items():
        shutil.copy(path, os.path.join(videos, vid + os.path.splitext(path)[1]))
        rows.append(f"abseiling,{vid[:6]},0,10,train")
    annotations = os.path.join(root, "train.csv")
    with open(annotations, "w") as f:
        f.write("\n".join(rows) + "\n")
    # Frames a cut file still holds whole (independent of the decoder).
    kept = {
        vid: video_clips.whole_packets(clips[originals[vid[:6]]], os.path.getsize(path))
        for vid, path in sources.items()
        if vid[:6] in originals
    }
    kept["liesav_000000_000010"] = 40
    originals = {vid: clips[originals[vid[:6]]] for vid in kept}
    return annotations, os.path.join(root, "videos"), kept, originals


def test_truncated_and_header_lying_videos_keep_the_frames_that_decode(tmp_path, clips):
    annotations, videos, kept, originals = short_layout(tmp_path, clips)
    assert 0 < kept["tinyav_000000_000010"] < 8  # below the default --min_frames
    assert all(
        8 <= kept[v] < 40 for v in ["cutmp4_000000_000010", "cutavi_000000_000010", "cutweb_000000_000010"]
    )
    out = str(tmp_path / "out")
    report = convert.convert("kinetics", annotations, videos, out, short_side=32, show_progress=False)
    assert report["min_frames"] == convert.MIN_FRAMES == 8
    stored = read_shards(out)
    converted = [
        "cutavi_000000_000010",
        "cutmp4_000000_000010",
        "cutweb_000000_000010",
        "liesav_000000_000010",
        "wholev_000000_000010",
    ]
    assert sorted(stored) == converted and report["converted"] == 5
    for vid in converted:
        context, jpegs = stored[vid]
        assert context[tfrecord.NUM_FRAMES] == len(jpegs) == kept[vid]
        # The very frames of the complete file, in order.
        assert_jpegs_hold(jpegs, decode.decode_all(originals[vid], short_side=32)[: kept[vid]])
    incomplete = {e["video"]: e for e in report["incomplete"]}
    assert sorted(incomplete) == converted[:4]  # the complete clip is not listed
    for vid, declared in [
        ("cutavi_000000_000010", 40),
        ("cutmp4_000000_000010", 40),
        ("liesav_000000_000010", 400),
    ]:
        entry = incomplete[vid]
        assert (entry["declared_frames"], entry["declared_seconds"]) == (declared, None)
        assert entry["decoded_frames"] == entry["stored_frames"] == kept[vid]
        assert entry["reason"].startswith(f"truncated or corrupt: only {kept[vid]} of the {declared} frames")
    web = incomplete["cutweb_000000_000010"]
    assert (web["declared_frames"], web["declared_seconds"]) == (None, 1.6)
    assert web["decoded_frames"] == kept["cutweb_000000_000010"]
    skipped = {e["video"]: e for e in report["skipped"]}
    assert sorted(skipped) == ["nomoov_000000_000010", "tinyav_000000_000010"]
    assert "cannot open" in skipped["nomoov_000000_000010"]["reason"]
    tiny = skipped["tinyav_000000_000010"]
    assert f"too short: {kept['tinyav_000000_000010']} frames" in tiny["reason"]
    assert "fewer than min_frames=8" in tiny["reason"]
    assert (tiny["declared_frames"], tiny["decoded_frames"]) == (40, kept["tinyav_000000_000010"])
    with open(os.path.join(out, "report.json")) as f:
        assert json.load(f) == report

    # --min_frames decides what is too short: 1 keeps the tiny one, 20 drops the
    # cut ones (the 40-frame videos stay).
    low = convert.convert(
        "kinetics",
        annotations,
        videos,
        str(tmp_path / "low"),
        short_side=32,
        show_progress=False,
        min_frames=1,
    )
    assert sorted(read_shards(str(tmp_path / "low"))) == sorted(converted + ["tinyav_000000_000010"])
    assert [e["video"] for e in low["skipped"]] == ["nomoov_000000_000010"]
    high_dir = str(tmp_path / "high")
    high = subprocess.run(
        convert_command(annotations, videos, high_dir, "--min_frames=20"), cwd=REPO, capture_output=True
    )
    assert high.returncode == 0, high.stderr.decode()[-2000:]
    assert sorted(read_shards(high_dir)) == ["liesav_000000_000010", "wholev_000000_000010"]
    with open(os.path.join(high_dir, "report.json")) as f:
        high = json.load(f)
    assert high["min_frames"] == 20 and sorted(e["video"] for e in high["skipped"]) == [
        "cutavi_000000_000010",
        "cutmp4_000000_000010",
        "cutweb_000000_000010",
        "nomoov_000000_000010",
        "tinyav_000000_000010",
    ]
    with pytest.raises(ValueError, match="min_frames must be a positive int"):
        convert.convert("kinetics", annotations, videos, high_dir, min_frames=0)


def test_gzip_shards_and_a_converted_folder_read_through_any_glob(tmp_path, clips):
    annotations, videos, paths = kinetics_layout(tmp_path, clips)
    plain, packed = str(tmp_path / "plain"), str(tmp_path / "gzip")
    kwargs = dict(short_side=32, num_shards=2, skip_bad_rows=True, show_progress=False)
    convert.convert("kinetics", annotations, videos, plain, **kwargs)
    report = convert.convert("kinetics", annotations, videos, packed, compression="gzip", **kwargs)
    names = ["train-00000-of-00002.tfrecord.gz", "train-00001-of-00002.tfrecord.gz"]
    assert report["shards"] == names and report["compression"] == "gzip"
    for name in names:
        with open(os.path.join(packed, name), "rb") as f:
            assert f.read(2) == b"\x1f\x8b"  # really GZIP
    assert read_shards(packed, "*.tfrecord.gz", "GZIP") == read_shards(plain)
    # Bookkeeping is out of reach of shard globs (gfile's glob matches hidden files).
    for folder, suffix in [(plain, ""), (packed, ".gz")]:
        shards = sorted(tf.io.gfile.glob(os.path.join(folder, "*.tfrecord*")))
        assert [os.path.basename(p) for p in shards] == [n.replace(".gz", "") + suffix for n in names]
        assert sorted(os.listdir(folder)) == sorted(
            [".convert", "classes.txt", "report.json"] + [os.path.basename(p) for p in shards]
        )
    # make_dataset reads both through `DIR/*` (report.json, classes.txt, .convert/
    # skipped), detecting GZIP: the same clips.
    clips_of = {}
    for folder in (plain, packed):
        ds = dataset.make_dataset(
            os.path.join(folder, "*"), "eval", batch_size=8, num_frames=4, frame_stride=2, crop_size=32
        )
        clips_of[folder] = [(x.numpy(), y.numpy()) for x, y in ds]
    ((xa, ya),) = clips_of[plain]
    ((xb, yb),) = clips_of[packed]
    assert sorted(ya.tolist()) == [0, 0, 1]
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="compression must be one of"):
        convert.convert("kinetics", annotations, videos, plain, compression="zip", **kwargs)


def test_rerun_resumes_a_folder_of_the_old_layout(tmp_path, clips):
    """Bookkeeping of earlier versions (hidden files beside the shards, no
    compression / min_frames in the manifest) is moved into .convert/ and reused."""
    annotations, videos, paths = kinetics_layout(tmp_path, clips)
    out = str(tmp_path / "out")
    kwargs = dict(short_side=32, num_shards=2, skip_bad_rows=True, show_progress=False)
    report = convert.convert("kinetics", annotations, videos, out, **kwargs)
    names = report["shards"]
    bookkeeping = os.path.join(out, ".convert")
    with open(os.path.join(bookkeeping, "train.manifest.json")) as f:
        manifest = json.load(f)
    del manifest["compression"], manifest["min_frames"]
    with open(os.path.join(out, ".train.manifest.json"), "w") as f:
        json.dump(manifest, f)
    for name in names:
        with open(os.path.join(bookkeeping, name + ".json")) as f:
            stats = json.load(f)
        del stats["incomplete"]
        with open(os.path.join(out, f".{name}.json"), "w") as f:
            json.dump(stats, f)
    shutil.rmtree(bookkeeping)
    os.remove(os.path.join(out, names[1]))  # not finished by the old run
    with open(os.path.join(out, f".{names[1]}.tmp-999999999"), "w") as f:
        f.write("partial")  # its dead writer's temporary file
    before = os.stat(os.path.join(out, names[0])).st_mtime_ns
    assert convert.convert("kinetics", annotations, videos, out, **kwargs) == report
    assert os.stat(os.path.join(out, names[0])).st_mtime_ns == before  # reused
    assert sorted(read_shards(out)) == sorted(paths)
    assert sorted(n for n in os.listdir(out) if n.startswith(".")) == [".convert"]
    assert sorted(os.listdir(bookkeeping)) == sorted([n + ".json" for n in names] + ["train.manifest.json"])
