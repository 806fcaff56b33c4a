"""Tests of pipelines/kinetics.py (and the shared pipelines/annotations.py)."""

import os

import pytest

from pipelines import annotations as ann
from pipelines import kinetics

FOOTBALL = "passing American football (in game)"
TEA = 'making "tea", slowly'  # quotes and a comma: CSV quoting needed

TRAIN_CSV = f'''label,youtube_id,time_start,time_end,split,is_cc
abseiling,aaa,10,20,train,0
"{FOOTBALL}",bbb,0,10,train,0
"making ""tea"", slowly",ccc,5,15,train,1
abseiling,ddd,1,11,train,0
"{FOOTBALL}",eee,3,13,train,0
abseiling,fff,30.0,40.0,train,0
'''


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return str(path)


@pytest.fixture
def layout(tmp_path):
    """Per-class folders, a flat file, other extensions; 'eee' has no file."""
    videos = tmp_path / "videos"
    paths = {
        "aaa": touch(videos / "abseiling" / "aaa_000010_000020.mp4"),
        "bbb": touch(videos / FOOTBALL / "bbb_000000_000010.webm"),
        "ccc": touch(videos / "ccc_000005_000015.mkv"),  # flat
        "ddd": touch(videos / "abseiling" / "ddd.avi"),  # named by youtube id only
        "fff": touch(videos / "abseiling" / "fff_000030_000040.mp4"),
    }
    touch(videos / "abseiling" / "notes.txt")  # not a video: ignored
    train = tmp_path / "train.csv"
    train.write_text(TRAIN_CSV)
    return tmp_path, str(videos), str(train), paths


def test_reads_released_csv(layout):
    root, videos, train, paths = layout
    records, report = kinetics.read_kinetics(train, videos)
    assert report.classes == sorted(["abseiling", FOOTBALL, TEA])
    assert report.num_rows == 6
    assert report.missing == ["eee_000003_000013"]
    assert report.bad_rows == []
    index = {name: i for i, name in enumerate(report.classes)}
    assert records == [
        ann.VideoRecord(paths["aaa"], index["abseiling"], "abseiling", "aaa_000010_000020"),
        ann.VideoRecord(paths["bbb"], index[FOOTBALL], FOOTBALL, "bbb_000000_000010"),
        ann.VideoRecord(paths["ccc"], index[TEA], TEA, "ccc_000005_000015"),
        ann.VideoRecord(paths["ddd"], index["abseiling"], "abseiling", "ddd_000001_000011"),
        ann.VideoRecord(paths["fff"], index["abseiling"], "abseiling", "fff_000030_000040"),
    ]


def test_classes_file_and_training_csv_define_the_index(layout):
    root, videos, train, _ = layout
    classes = root / "classes.txt"
    classes.write_text(f"{TEA}\nabseiling\n\n{FOOTBALL}\nzumba\n")
    records, report = kinetics.read_kinetics(train, videos, classes=str(classes))
    assert report.classes == [TEA, "abseiling", FOOTBALL, "zumba"]
    assert [r.label_index for r in records] == [1, 2, 0, 1, 1]
    # A validation CSV with only some classes still uses the training index.
    val = root / "validate.csv"
    val.write_text(f'label,youtube_id,time_start,time_end,split\n"{FOOTBALL}",bbb,0,10,validate\n')
    records, report = kinetics.read_kinetics(val, videos, train_annotations=train)
    assert report.classes == sorted(["abseiling", FOOTBALL, TEA])
    assert records[0].label_index == report.classes.index(FOOTBALL)
    records, report = kinetics.read_kinetics(val, videos)  # own labels only
    assert report.classes == [FOOTBALL] and records[0].label_index == 0


def test_test_split_without_label_column(layout):
    root, videos, _, paths = layout
    test = root / "test.csv"
    test.write_text("youtube_id,time_start,time_end,split\naaa,10,20,test\nzzz,0,10,test\n")
    records, report = kinetics.read_kinetics(test, videos)
    assert records == [ann.VideoRecord(paths["aaa"], -1, "", "aaa_000010_000020")]
    assert report.missing == ["zzz_000000_000010"]
    assert report.classes == []


def test_prefers_the_class_folder_when_a_clip_appears_twice(layout):
    root, videos, train, paths = layout
    other = touch(os.path.join(videos, "zzz_other", "aaa_000010_000020.mp4"))
    records, _ = kinetics.read_kinetics(train, videos)
    assert records[0].video_path == paths["aaa"] != other


BAD_ROWS = [
    ("abseiling,aaa,10\n", "expected 5 fields"),  # short row
    ("abseiling,aaa,10,20,train,0\n", "expected 5 fields"),  # extra field
    ("abseiling,aaa,ten,20,train\n", "time_start/time_end must be whole seconds"),
    ("abseiling,aaa,1.5,20,train\n", "time_start/time_end must be whole seconds"),
    ("abseiling,aaa,-3,20,train\n", "time_start/time_end must be whole seconds"),
    ("abseiling,aaa,20,10,train\n", "time_end 10 is not after time_start 20"),
    ("abseiling,,10,20,train\n", "empty youtube_id"),
    ("zumba,aaa,10,20,train\n", "unknown label 'zumba'"),
    ("abseiling,bbb,0,10,train\n", "clip bbb_000000_000010 repeats line 3"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS)
def test_bad_row_raises_with_file_and_line(tmp_path, row, reason):
    videos = tmp_path / "videos"
    os.makedirs(videos)
    csv_path = tmp_path / "val.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "\n"  # blank lines are skipped but counted as lines
        "abseiling,bbb,0,10,train\n" + row
    )
    classes = tmp_path / "classes.txt"
    classes.write_text("abseiling\n")
    with pytest.raises(ann.AnnotationError) as info:
        kinetics.read_kinetics(str(csv_path), str(videos), classes=str(classes))
    assert str(info.value).startswith(f"{csv_path}:4: ")
    assert reason in str(info.value)


def test_skip_bad_rows_counts_them(layout):
    root, videos, _, paths = layout
    csv_path = root / "val.csv"
    csv_path.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,aaa,10,20,val\n"
        "abseiling,aaa,x,20,val\n"
        "abseiling,bbb\n"
        "zumba,ccc,5,15,val\n"
        "abseiling,fff,30,40,val\n"
    )
    classes = root / "classes.txt"
    classes.write_text("abseiling\n")
    records, report = kinetics.read_kinetics(str(csv_path), videos, classes=str(classes), skip_bad_rows=True)
    assert [r.video_id for r in records] == ["aaa_000010_000020", "fff_000030_000040"]
    assert [(row["file"], row["line"]) for row in report.bad_rows] == [
        (str(csv_path), 3),
        (str(csv_path), 4),
        (str(csv_path), 5),
    ]
    assert "unknown label 'zumba'" in report.bad_rows[2]["reason"]
    assert report.num_rows == 5


def test_bad_header_and_unreadable_files(layout):
    root, videos, train, _ = layout
    bad_header = root / "bad.csv"
    bad_header.write_text("label,id,start,end\nabseiling,aaa,10,20\n")
    with pytest.raises(ann.AnnotationError, match=r"bad.csv:1: expected a header"):
        kinetics.read_kinetics(str(bad_header), videos)
    with pytest.raises(ann.AnnotationError, match="cannot read Kinetics annotations"):
        kinetics.read_kinetics(str(root / "nope.csv"), videos)
    with pytest.raises(ann.AnnotationError, match="video directory .* does not exist"):
        kinetics.read_kinetics(train, str(root / "no_videos"))


@pytest.mark.parametrize("kind", ["missing", "directory", "binary", "empty", "repeat"])
def test_unreadable_classes_file(layout, kind):
    root, videos, train, _ = layout
    path = root / "classes.txt"
    if kind == "directory":
        os.mkdir(path)
    elif kind == "binary":
        path.write_bytes(b"abseiling\n\xff\xfe\x00bad\n")
    elif kind == "empty":
        path.write_text("\n\n")
    elif kind == "repeat":
        path.write_text("abseiling\nzumba\nabseiling\n")
    expected = {
        "missing": "cannot read classes file .*classes.txt",
        "directory": "cannot read classes file .*is a directory",
        "binary": "cannot read classes file .*not UTF-8",
        "empty": "classes file .*lists no classes",
        "repeat": "classes.txt:3: class 'abseiling' repeats line 1",
    }[kind]
    with pytest.raises(ann.AnnotationError, match=expected):
        kinetics.read_kinetics(train, videos, classes=str(path))
