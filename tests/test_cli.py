"""Every `python -m` main as a user meets it, end to end on real clips.

- The README's command lines as written (small sizes appended), in order, in a folder laid out as the README
  says: convert a Kinetics folder, train on the TFRecords, evaluate, export, read the coefficients, train and
  evaluate straight from the videos.
- Each data source of the train and evaluate mains: Kinetics and Moments in Time video folders (with a video
  missing on disk, an unreadable one and a bad row), TFRecords converted from them, the embedded synthetic set
  (through the demo and compare mains), on one device and mirrored on two logical CPUs.
"""

import csv
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests import video_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Small sizes appended to a command line (absl keeps a flag's last value).
SMALL = {
    "cost_tf.train": [
        "--epochs=1",
        "--steps_per_epoch=1",
        "--batch_size=2",
        "--num_frames=4",
        "--frame_stride=2",
        "--crop_size=32",
        "--verbose=0",
    ],
    "pipelines.convert": ["--short_side=48"],
}


def run_main(args, cwd, timeout=900):
    """`python -m args...` in `cwd` with the repository importable; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def ok(result):
    assert result.returncode == 0, (
        f"{result.args}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    )
    return result


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    return video_clips.make_clips(str(tmp_path_factory.mktemp("clips")))


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# Kinetics: (label, youtube_id, start, end, clip name, folder under videos/ ("" = flat)).
KINETICS = [
    ("talking", "aaa", 0, 10, "h264", "talking"),
    ("talking", "bbb", 1, 11, "vp9", "talking"),
    ("riding bike", "ccc", 0, 10, "mjpeg", ""),
    ("riding bike", "ddd", 2, 12, "h264_444", "riding_bike"),
]
HEADER = "label,youtube_id,time_start,time_end,split\n"


def kinetics_folder(root, clips, damaged=False):
    """videos/ + train.csv (the 4 KINETICS videos) + val.csv (aaa, bbb: only "talking", so the validation
    CSV's own sorted labels would give it index 0, the training CSV's index 1).

    damaged: train.csv also lists an unreadable video (eee: a truncated file), one missing on disk (fff) and a
    malformed row (line 8).
    """
    rows = []
    for label, vid, start, end, clip, folder in KINETICS:
        ext = os.path.splitext(clips[clip])[1]
        dest = os.path.join(root, "videos", folder, f"{vid}_{start:06d}_{end:06d}{ext}")
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(clips[clip], dest)
        rows.append(f"{label},{vid},{start},{end},train\n")
    if damaged:
        with (
            open(clips["h264"], "rb") as f,
            open(os.path.join(root, "videos", "talking", "eee_000000_000010.mp4"), "wb") as out,
        ):
            out.write(f.read(3000))  # the header of a clip whose data is cut off
        rows += ["talking,eee,0,10,train\n", "talking,fff,0,10,train\n", "talking,ggg,x,10,train\n"]
    _write(os.path.join(root, "train.csv"), HEADER + "".join(rows))
    _write(os.path.join(root, "val.csv"), HEADER + "talking,aaa,0,10,val\ntalking,bbb,1,11,val\n")
    return root


def moments_folder(root, clips):
    """Moments in Time v1 layout: training/<label>/<file>, trainingSet.csv / validationSet.csv without a
    header, moments_categories.txt (`category,index`) beside them."""
    train = [
        ("talking/a.mp4", "talking", "h264"),
        ("running/b.webm", "running", "vp9"),
        ("running/c.avi", "running", "mjpeg"),
        ("talking/d.mkv", "talking", "h264_444"),
    ]
    for name, _, clip in train:
        dest = os.path.join(root, "training", name)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy(clips[clip], dest)
    _write(os.path.join(root, "trainingSet.csv"), "".join(f"{n},{label},3,0\n" for n, label, _ in train))
    _write(os.path.join(root, "validationSet.csv"), "talking/a.mp4,talking,3,0\nrunning/c.avi,running,2,1\n")
    _write(os.path.join(root, "moments_categories.txt"), "running,0\ntalking,1\n")
    return root


def _per_class(path):
    with open(path) as f:
        return {row["class_name"]: int(row["num_videos"]) for row in csv.DictReader(f)}


def cost_layer_names(model_path):
    from cost_tf import coefficients, loading

    return [layer.name for layer in coefficients.cost_layers(loading.load_model(model_path))]


def _json(path):
    with open(path) as f:
        return json.load(f)


# -- the README ------------------------------------------------------------------------------------------------


def readme_commands():
    """The `python -m` lines of the README's "Using it" shell block, in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("## Using it") :]
    block = section[section.index("```bash") + len("```bash") :]
    block = block[: block.index("```")]
    return [line for line in block.splitlines() if line.startswith("python -m ")]


def test_readme_command_lines_run_as_written(tmp_path, clips):
    commands = readme_commands()
    mains = [shlex.split(line)[2] for line in commands]
    assert mains == [
        "pipelines.convert",
        "pipelines.convert",
        "cost_tf.train",
        "cost_tf.evaluate",
        "export.saved_model",
        "export.onnx",
        "export.tflite",
        "cost_tf.coefficients",
        "cost_tf.train",
        "cost_tf.evaluate",
    ]
    folder = kinetics_folder(str(tmp_path), clips)
    for line in commands:
        args = shlex.split(line)[2:]
        args = [a.replace("_r50", "_tiny") if a.startswith("--arch=") else a for a in args]
        ok(run_main(args + SMALL.get(args[0], []), cwd=folder))

    with open(tmp_path / "k400" / "train" / "classes.txt") as f:
        assert f.read().splitlines() == ["riding bike", "talking"]
    assert _json(tmp_path / "k400" / "train" / "report.json")["converted"] == 4
    assert _json(tmp_path / "k400" / "val" / "report.json")["converted"] == 2
    for run, arch in (("x", "cost_a_tiny"), ("raw", "cost_b_tiny")):
        metrics = _json(tmp_path / "runs" / run / "metrics.json")
        assert (metrics["arch"], metrics["epochs"], metrics["steps"]) == (arch, 1, 1)
        evaluation = _json(tmp_path / "runs" / run / "eval_10x3.json")
        assert (evaluation["num_videos"], evaluation["views"]) == (2, "10x3")
        # val.csv holds only "talking": index 1 of the training classes, whatever the source.
        assert _per_class(tmp_path / "runs" / run / "per_class_10x3.csv") == {"riding bike": 0, "talking": 2}
    assert _json(tmp_path / "runs" / "raw" / "metrics.json")["skipped_videos"] == {
        "missing": 0,
        "bad_rows": 0,
        "unreadable": 0,
    }
    assert os.path.isfile(tmp_path / "serving" / "cost" / "1" / "saved_model.pb")
    assert os.path.getsize(tmp_path / "cost.onnx") > 0 and os.path.getsize(tmp_path / "cost.tflite") > 0
    with open(tmp_path / "runs" / "x" / "coefficients" / "coefficients.csv") as f:
        layers = list(csv.DictReader(f))
    assert [row["layer"] for row in layers] == cost_layer_names(tmp_path / "runs" / "x" / "model.keras")
    assert {row["variant"] for row in layers} == {"a"}


# -- train / evaluate mains on damaged video folders ---------------------------------------------------------


def test_train_and_evaluate_mains_on_a_damaged_kinetics_folder(tmp_path, clips):
    folder = kinetics_folder(str(tmp_path), clips, damaged=True)
    # The command line (sizes made small): fails with one line naming the bad row ...
    command = [
        "cost_tf.train",
        "--dataset=kinetics",
        "--annotations=train.csv",
        "--eval_annotations=val.csv",
        "--video_dir=videos",
        "--arch=cost_b_tiny",
        "--model_dir=run",
        "--epochs=2",
        "--batch_size=2",
        "--crop_size=32",
        "--num_frames=4",
        "--frame_stride=2",
        "--verbose=0",
    ]
    refused = run_main(command, cwd=folder)
    assert refused.returncode != 0
    assert "error: train.csv:8: time_start/time_end must be whole seconds" in refused.stderr
    assert "Traceback" not in refused.stderr and not os.path.exists(tmp_path / "run" / "model.keras")
    # ... and with --skip_bad_rows trains on the readable videos, counting every skip.
    trained = ok(run_main(command + ["--skip_bad_rows"], cwd=folder))
    assert "Skipped videos: 1 missing on disk, 1 bad annotation rows, 1 unreadable" in trained.stdout
    report = _json(tmp_path / "run" / "data_report.json")
    assert report["train"]["videos"] == 5 and report["eval"]["videos"] == 2
    assert report["train"]["missing"] == ["fff_000000_000010"] and report["eval"]["missing"] == []
    assert [row["line"] for row in report["train"]["bad_rows"]] == [8] and report["eval"]["bad_rows"] == []
    assert [u["path"] for u in report["unreadable"]] == [
        os.path.join("videos", "talking", "eee_000000_000010.mp4")
    ]
    metrics = _json(tmp_path / "run" / "metrics.json")
    assert (metrics["epochs"], metrics["steps"], metrics["num_eval"]) == (2, 4, 2)  # 5 videos // 2 per step
    assert metrics["skipped_videos"] == {"missing": 1, "bad_rows": 1, "unreadable": 1}
    config = _json(tmp_path / "run" / "config.json")
    assert config["class_names"] == ["riding bike", "talking"] and config["num_classes"] == 2
    assert config["eval_video_dir"] == "videos"  # --eval_video_dir defaults to --video_dir

    ok(run_main(["cost_tf.evaluate", "--model=run/model.keras", "--views=2x2"], cwd=folder))
    evaluation = _json(tmp_path / "run" / "eval_2x2.json")
    assert evaluation["num_videos"] == 2
    assert evaluation["skipped_videos"] == {"missing": [], "bad_rows": [], "unreadable": []}
    assert _per_class(tmp_path / "run" / "per_class_2x2.csv") == {"riding bike": 0, "talking": 2}
    # The unreadable video as the evaluation set: counted and reported, then a clear error (nothing to score).
    _write(os.path.join(folder, "broken.csv"), HEADER + "talking,eee,0,10,val\ntalking,fff,0,10,val\n")
    nothing = run_main(
        ["cost_tf.evaluate", "--model=run/model.keras", "--eval_annotations=broken.csv"], cwd=folder
    )
    assert nothing.returncode != 0 and "Traceback" not in nothing.stderr
    assert "error: No labelled video in the evaluation data (0 videos read)" in nothing.stderr
    assert "Skipping unreadable video" in nothing.stderr

    # The converter on the same folder: one line naming the row, then with --skip_bad_rows every skip reported.
    convert = [
        "pipelines.convert",
        "--dataset=kinetics",
        "--annotations=train.csv",
        "--video_dir=videos",
        "--output_dir=shards",
        "--short_side=48",
    ]
    refused = run_main(convert, cwd=folder)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert "error: train.csv:8: time_start/time_end must be whole seconds" in refused.stderr
    ok(run_main(convert + ["--skip_bad_rows"], cwd=folder))
    converted = _json(tmp_path / "shards" / "report.json")
    assert converted["converted"] == 4 and converted["missing"] == ["fff_000000_000010"]
    assert [row["line"] for row in converted["bad_rows"]] == [8]
    assert [entry["video"] for entry in converted["skipped"]] == ["eee_000000_000010"]


def test_train_and_evaluate_on_moments_and_explicit_classes(tmp_path, clips):
    from cost_tf import evaluate, train

    folder = moments_folder(str(tmp_path / "mit"), clips)
    config = train.TrainConfig(
        model_dir=str(tmp_path / "run"),
        dataset="moments",
        annotations=os.path.join(folder, "trainingSet.csv"),
        eval_annotations=os.path.join(folder, "validationSet.csv"),
        video_dir=os.path.join(folder, "training"),
        arch="c2d_tiny",
        epochs=1,
        batch_size=2,
        num_frames=4,
        frame_stride=2,
        crop_size=32,
        verbose=0,
        strategy="one_device",
    )
    metrics = train.train(config)
    assert (metrics["steps"], metrics["num_eval"]) == (2, 2)
    assert metrics["skipped_videos"] == {"missing": 0, "bad_rows": 0, "unreadable": 0}
    written = _json(tmp_path / "run" / "config.json")
    assert written["class_names"] == ["running", "talking"] and written["num_classes"] == 2
    report = evaluate.evaluate(evaluate.EvalConfig(model=str(tmp_path / "run" / "model.keras"), views="1x2"))
    assert report["num_videos"] == 2
    assert _per_class(tmp_path / "run" / "per_class_1x2.csv") == {"running": 1, "talking": 1}

    # Kinetics with --classes: the file's order is the index (talking first), for training and evaluation.
    kinetics = kinetics_folder(str(tmp_path / "k"), clips)
    _write(os.path.join(kinetics, "classes.txt"), "talking\nriding bike\nswimming\n")
    config = train.TrainConfig(
        model_dir=str(tmp_path / "k_run"),
        dataset="kinetics",
        annotations=os.path.join(kinetics, "train.csv"),
        eval_annotations=os.path.join(kinetics, "val.csv"),
        video_dir=os.path.join(kinetics, "videos"),
        classes=os.path.join(kinetics, "classes.txt"),
        arch="c2d_tiny",
        epochs=1,
        batch_size=2,
        num_frames=4,
        frame_stride=2,
        crop_size=32,
        verbose=0,
        strategy="one_device",
    )
    train.train(config)
    written = _json(tmp_path / "k_run" / "config.json")
    assert written["class_names"] == ["talking", "riding bike", "swimming"] and written["num_classes"] == 3
    evaluate.evaluate(evaluate.EvalConfig(model=str(tmp_path / "k_run" / "model.keras")))
    assert _per_class(tmp_path / "k_run" / "per_class_1x1.csv") == {
        "talking": 2,
        "riding bike": 0,
        "swimming": 0,
    }


def test_video_folders_train_mirrored_on_two_logical_cpus(tmp_path, clips):
    kinetics = kinetics_folder(str(tmp_path / "k"), clips, damaged=True)
    moments = moments_folder(str(tmp_path / "m"), clips)
    script = textwrap.dedent(f"""
        import json
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from cost_tf import distribute, train
        strategy = distribute.create_strategy("mirrored")
        small = dict(arch="c2d_tiny", epochs=1, batch_size=4, num_frames=4, frame_stride=2, crop_size=32,
                     verbose=0, strategy="mirrored")
        out = {{"replicas": strategy.num_replicas_in_sync}}
        out["kinetics"] = train.train(train.TrainConfig(
            model_dir={str(tmp_path / "k_run")!r}, dataset="kinetics", annotations={kinetics + "/train.csv"!r},
            eval_annotations={kinetics + "/val.csv"!r}, video_dir={kinetics + "/videos"!r}, skip_bad_rows=True,
            **small), strategy=strategy)
        out["moments"] = train.train(train.TrainConfig(
            model_dir={str(tmp_path / "m_run")!r}, dataset="moments", annotations={moments + "/trainingSet.csv"!r},
            eval_annotations={moments + "/validationSet.csv"!r}, video_dir={moments + "/training"!r}, **small),
            strategy=strategy)
        print(json.dumps(out))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert result.returncode == 0, result.stderr[-5000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    assert (out["kinetics"]["steps"], out["kinetics"]["num_eval"]) == (1, 2)  # 5 listed videos // 4
    assert out["kinetics"]["skipped_videos"] == {"missing": 1, "bad_rows": 1, "unreadable": 1}
    assert (out["moments"]["steps"], out["moments"]["num_eval"]) == (1, 2)


# -- the synthetic source: demo, compare, coefficients --------------------------------------------------------


def test_demo_compare_and_coefficients_mains(tmp_path):
    demo = ok(run_main(["cost_tf.demo", f"--output_dir={tmp_path}", "--epochs=1"], cwd=ROOT))
    summary = dict(
        line.split(":", 1)
        for line in demo.stdout.split("== cost-tf demo ==")[1].splitlines()
        if ":" in line and not line.startswith(" ")
    )
    top1 = float(summary["final top-1"])
    evaluation = _json(tmp_path / "eval_1x1.json")
    assert top1 == pytest.approx(evaluation["top1"], abs=5e-5) and evaluation["num_videos"] == 240
    assert summary["export saved_model"].strip() == str(tmp_path / "saved_model" / "1")
    assert os.path.getsize(tmp_path / "model.onnx") > 0
    # The README's coefficient command on the demo's model (CoST(b): reads the demo's own evaluation clips).
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    ok(
        run_main(
            ["cost_tf.coefficients", f"--model={tmp_path / 'model.keras'}", f"--out_dir={tmp_path / 'coef'}"],
            cwd=str(elsewhere),
        )
    )
    with open(tmp_path / "coef" / "coefficients.csv") as f:
        layers = list(csv.DictReader(f))
    assert [row["layer"] for row in layers] == cost_layer_names(tmp_path / "model.keras")
    assert {row["variant"] for row in layers} == {"b"}
    assert os.listdir(elsewhere) == []  # no second copy of the dataset under ./runs/synthetic
    # compare on the same data folder (written once by the demo, not again).
    ok(
        run_main(
            [
                "cost_tf.compare",
                f"--output_dir={tmp_path}",
                "--archs=c2d_tiny",
                "--epochs=1",
                "--seeds=3",
                f"--results={tmp_path / 'RESULTS.md'}",
            ],
            cwd=ROOT,
        )
    )
    with open(tmp_path / "RESULTS.md") as f:
        results = f.read()
    compared = _json(tmp_path / "c2d_tiny" / "seed3" / "metrics.json")
    row = next(line for line in results.splitlines() if line.startswith("| c2d_tiny |"))
    # best val top-1 | epoch of best (1 epoch: late) | top-1 at the end
    cells = [cell.strip() for cell in row.split("|")[2:5]]
    assert cells[1] == "1 (late)" and cells[2] == f"{100 * compared['top1']:.1f} %"
    assert "`python -m cost_tf.compare --epochs=1 --seeds=3`" in results
