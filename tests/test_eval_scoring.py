"""Multiple-choice scoring: the paper's prompt, reading letters out of model output, accuracy tables."""

from __future__ import annotations

import posixpath
import re

import pytest

from vidtune.eval.scoring import extract_choice, mc_prompt, score

OPTIONS = ["a dog", "a cat", "a red car", "two birds"]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("(B)", "B"),
        ("B", "B"),
        ("b", "B"),
        ("B.", "B"),
        ("The answer is C.", "C"),
        ("Answer: D", "D"),
        ("B. a cat", "B"),
        ("a red car", "C"),
        ("A red car.", "C"),
        ("I think it's option A, no wait, D", "D"),
        ("", None),
        ("   ", None),
        ("I don't know", None),
        ("E", None),
        ("The video shows a cat", "B"),
        ("(c) a red car", "C"),
        ("Best option: (A)", "A"),
        # Beyond the required table: prefixes before option text, out-of-range named letters, nesting.
        ("The correct answer is a cat", "B"),
        ("Option E", None),
        ("red car", "C"),
        ("a", "A"),  # a whole answer of one letter is that letter, whatever its case
        ("C is the one, not a dog", "C"),
    ],
)
def test_extract_choice(output, expected):
    assert extract_choice(output, OPTIONS) == expected


def test_extract_choice_respects_the_number_of_options():
    assert extract_choice("C", ["yes", "no"]) is None
    assert extract_choice("C", ["yes", "no", "maybe"]) == "C"


def test_prompt_is_the_papers_format():
    prompt = mc_prompt("What is the man holding?", ["a cup", "a phone", "nothing"])
    assert prompt == (
        "What is the man holding?\n"
        "A. a cup\n"
        "B. a phone\n"
        "C. nothing\n"
        "Answer with the option's letter from the given choices directly."
    )


def _row(benchmark, categories, answer, prediction):
    return {"benchmark": benchmark, "categories": categories, "answer": answer, "prediction": prediction}


ROWS = [
    _row("video-mme", {"duration": "short", "task_type": "Counting"}, "A", "A"),
    _row("video-mme", {"duration": "short", "task_type": "Counting"}, "B", "C"),
    _row("video-mme", {"duration": "short", "task_type": "OCR"}, "C", "C"),
    _row("video-mme", {"duration": "long", "task_type": "OCR"}, "D", None),  # unparseable: wrong
    _row("video-mme", {"duration": "long", "task_type": "Counting"}, "A", "A"),
    _row("video-mme", {"duration": "medium", "task_type": "OCR"}, "B", None),
    _row("mvbench", {"task": "action_sequence"}, "A", "A"),
    _row("mvbench", {"task": "action_sequence"}, "B", "B"),
    _row("mvbench", {"task": "object_shuffle"}, "C", "A"),
    _row("mvbench", {"task": "object_shuffle"}, "A", "a"),  # a lower-case prediction still matches
]


def _cells(table):
    return {(r["benchmark"], r["key"], r["value"]): (r["right"], r["total"]) for r in table.rows()}


def test_scores_are_summed_per_benchmark_and_category():
    table = score(ROWS)
    assert (table.overall.right, table.total) == (6, 10)
    assert table.accuracy == pytest.approx(0.6)
    assert _cells(table) == {
        ("all", "", ""): (6, 10),
        ("video-mme", "", ""): (3, 6),
        ("video-mme", "duration", "short"): (2, 3),
        ("video-mme", "duration", "medium"): (0, 1),
        ("video-mme", "duration", "long"): (1, 2),
        ("video-mme", "task_type", "Counting"): (2, 3),
        ("video-mme", "task_type", "OCR"): (1, 3),
        ("mvbench", "", ""): (3, 4),
        ("mvbench", "task", "action_sequence"): (2, 2),
        ("mvbench", "task", "object_shuffle"): (1, 2),
    }
    by_cell = {(r["benchmark"], r["key"], r["value"]): r["accuracy"] for r in table.rows()}
    assert by_cell[("video-mme", "duration", "short")] == pytest.approx(2 / 3)
    assert table.rows()[0]["benchmark"] == "all"


def test_by_limits_the_breakdowns():
    cells = _cells(score(ROWS, by=["duration"]))
    assert ("video-mme", "duration", "long") in cells
    assert not any(key in ("task_type", "task") for _, key, _ in cells)
    assert cells[("mvbench", "", "")] == (3, 4)


def test_metrics_are_named_for_mlflow():
    rows = ROWS + [_row("video-mme", {"sub_category": "Art/Design (2D)", "note": "x..y:z"}, "A", "A")]
    metrics = score(rows).metrics()
    assert metrics["accuracy"] == pytest.approx(7 / 11)
    assert metrics["video-mme.accuracy"] == pytest.approx(4 / 7)
    assert metrics["video-mme.duration.short.accuracy"] == pytest.approx(2 / 3)
    assert metrics["mvbench.task.object_shuffle.accuracy"] == pytest.approx(0.5)
    assert metrics["video-mme.sub_category.Art_Design _2D_.accuracy"] == 1.0
    for name in metrics:
        assert re.match(r"^[A-Za-z0-9_\-. /]+$", name), name
        # MLflow also rejects names that change under path normalisation.
        assert posixpath.normpath(name) == name, name


def test_format_shows_overall_first_then_breakdowns():
    text = score(ROWS).format()
    lines = text.splitlines()
    assert lines[0].split() == ["benchmark", "breakdown", "right", "total", "accuracy"]
    assert lines[2].split() == ["all", "6", "10", "60.0%"]
    assert any(line.split() == ["video-mme", "duration=short", "2", "3", "66.7%"] for line in lines)
    # Fixed width: every row's accuracy column ends at the same place.
    assert len({len(line) for line in lines[2:]}) == 1
