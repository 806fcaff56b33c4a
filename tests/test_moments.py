"""Tests of pipelines/moments.py (Moments in Time annotations as released)."""

import os

import pytest

from pipelines import annotations as ann
from pipelines import moments

CATEGORIES = "blocking,1\nbicycling,0\nasking,2\n"
TRAINING_SET = (
    "blocking/getty-blocking-a-shot-video-id1.mp4,blocking,3,0\n"
    "bicycling/yt-AbC_d-eF0_12.mp4,bicycling,2,1\n"
    "asking/flickr-0-5-6-7-asking.mp4,asking,4,0\n"
    "asking/missing-video.mp4,asking,3,1\n"
)


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()
    return str(path)


@pytest.fixture
def layout(tmp_path):
    videos = tmp_path / "training"
    paths = [
        touch(videos / "blocking" / "getty-blocking-a-shot-video-id1.mp4"),
        touch(videos / "bicycling" / "yt-AbC_d-eF0_12.mp4"),
        touch(videos / "asking" / "flickr-0-5-6-7-asking.webm"),  # other extension
    ]
    (tmp_path / "moments_categories.txt").write_text(CATEGORIES)
    (tmp_path / "trainingSet.csv").write_text(TRAINING_SET)
    return tmp_path, str(videos), str(tmp_path / "trainingSet.csv"), paths


def test_reads_released_files(layout):
    root, videos, csv_path, paths = layout
    records, report = moments.read_moments(csv_path, videos)  # categories beside csv
    assert report.classes == ["bicycling", "blocking", "asking"]
    assert records == [
        ann.VideoRecord(paths[0], 1, "blocking", "blocking/getty-blocking-a-shot-video-id1.mp4"),
        ann.VideoRecord(paths[1], 0, "bicycling", "bicycling/yt-AbC_d-eF0_12.mp4"),
        ann.VideoRecord(paths[2], 2, "asking", "asking/flickr-0-5-6-7-asking.mp4"),
    ]
    assert report.missing == ["asking/missing-video.mp4"]
    assert report.num_rows == 4 and report.bad_rows == []


def test_categories_given_explicitly(layout, tmp_path):
    root, videos, csv_path, _ = layout
    other = tmp_path / "elsewhere" / "cats.txt"
    os.makedirs(other.parent)
    other.write_text("asking,0\nbicycling,1\nblocking,2\n")
    records, report = moments.read_moments(csv_path, videos, categories=str(other))
    assert [r.label_index for r in records] == [2, 1, 0]
    records, report = moments.read_moments(csv_path, videos, categories=["asking", "blocking", "bicycling"])
    assert [r.label_index for r in records] == [1, 2, 0]


BAD_ROWS = [
    ("asking/x.mp4,asking,3\n", "expected 4 fields"),  # short row
    ("asking/x.mp4,asking,3,1,9\n", "expected 4 fields"),
    ("asking/x.mp4,asking,three,1\n", "positive/negative responses must be integers"),
    ("asking/x.mp4,asking,3,-1\n", "positive/negative responses must be integers"),
    ("asking/x.mp4,dancing,3,1\n", "unknown label 'dancing'"),
    (",asking,3,1\n", "empty filename"),
    ("bicycling/yt-AbC_d-eF0_12.mp4,bicycling,1,1\n", "repeats line 2"),
]


@pytest.mark.parametrize("row,reason", BAD_ROWS)
def test_bad_row_raises_with_file_and_line(layout, row, reason):
    root, videos, _, _ = layout
    csv_path = root / "validationSet.csv"
    csv_path.write_text(
        "blocking/getty-blocking-a-shot-video-id1.mp4,blocking,3,0\n"
        "bicycling/yt-AbC_d-eF0_12.mp4,bicycling,2,1\n\n" + row
    )
    with pytest.raises(ann.AnnotationError) as info:
        moments.read_moments(str(csv_path), videos)
    assert str(info.value).startswith(f"{csv_path}:4: ")
    assert reason in str(info.value)


def test_skip_bad_rows_counts_them(layout):
    root, videos, _, paths = layout
    csv_path = root / "validationSet.csv"
    csv_path.write_text(
        "blocking/getty-blocking-a-shot-video-id1.mp4,blocking,3\n"
        "bicycling/yt-AbC_d-eF0_12.mp4,bicycling,2,1\n"
        "asking/flickr-0-5-6-7-asking.mp4,jumping,4,0\n"
        "asking/nope.mp4,asking,1,0\n"
    )
    records, report = moments.read_moments(str(csv_path), videos, skip_bad_rows=True)
    assert [r.video_path for r in records] == [paths[1]]
    assert [row["line"] for row in report.bad_rows] == [1, 3]
    assert "unknown label 'jumping'" in report.bad_rows[1]["reason"]
    assert report.missing == ["asking/nope.mp4"]
    assert report.num_rows == 4


@pytest.mark.parametrize(
    "content,expected",
    [
        ("bicycling,0\nblocking\n", r"cats.txt:2: expected 'category,index'"),
        ("bicycling,0\nblocking,x\n", r"cats.txt:2: expected 'category,index'"),
        ("bicycling,0\nblocking,0\n", r"cats.txt:2: category 'blocking' or index 0"),
        ("bicycling,0\nbicycling,1\n", r"cats.txt:2: category 'bicycling' or index 1"),
        ("bicycling,0\nblocking,2\n", r"indices must be 0..1; missing \[1\]"),
        ("\n", "lists no classes"),
    ],
)
def test_malformed_categories_file(layout, content, expected):
    root, videos, csv_path, _ = layout
    path = root / "cats.txt"
    path.write_text(content)
    with pytest.raises(ann.AnnotationError, match=expected):
        moments.read_moments(csv_path, videos, categories=str(path))


def test_unreadable_categories_file(layout):
    root, videos, csv_path, _ = layout
    os.remove(root / "moments_categories.txt")
    with pytest.raises(ann.AnnotationError, match="cannot read categories file .*moments_categories.txt"):
        moments.read_moments(csv_path, videos)
    (root / "bad.txt").write_bytes(b"\xff\xfe,0\n")
    with pytest.raises(ann.AnnotationError, match="bad.txt: not UTF-8"):
        moments.read_moments(csv_path, videos, categories=str(root / "bad.txt"))
