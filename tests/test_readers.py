"""pipelines/readers.py: the class-list reader shared by train, evaluate and coefficients."""

import pytest
import tensorflow as tf

from pipelines.annotations import AnnotationError
from pipelines.readers import read_class_names


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_one_name_per_line_keeps_commas_in_names(tmp_path):
    # classes.txt as pipelines.convert writes it: Kinetics class names may hold commas.
    path = _write(tmp_path, "classes.txt", "abseiling\nclean and jerk, weightlifting\n\nzumba\n")
    assert read_class_names(path) == ["abseiling", "clean and jerk, weightlifting", "zumba"]


def test_moments_categories_are_ordered_by_index(tmp_path):
    path = _write(tmp_path, "moments_categories.txt", "running,2\nasking,0\nbaking,1\n")
    assert read_class_names(path) == ["asking", "baking", "running"]


def test_a_utf8_bom_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffcafé\nthé\n".encode())
    assert read_class_names(str(path)) == ["café", "thé"]


def test_remote_paths_go_through_gfile():
    path = "ram://cost_tf_test_readers/classes.txt"
    tf.io.gfile.makedirs("ram://cost_tf_test_readers")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write("walking,1\nsitting,0\n")
    assert read_class_names(path) == ["sitting", "walking"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a\nb\na\n", "classes.txt:3: class 'a' repeats line 1"),
        ("\n\n", "lists no classes"),
        ("x,0\ny,2\n", "category indices must be 0..1; missing [1]"),
    ],
)
def test_bad_lists_name_the_file_and_line(tmp_path, text, message):
    path = _write(tmp_path, "classes.txt", text)
    with pytest.raises(AnnotationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        read_class_names(path)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(AnnotationError, match="nope.txt"):
        read_class_names(str(tmp_path / "nope.txt"))
