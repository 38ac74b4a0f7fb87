"""Benchmark loaders on small files in the public release formats; bad rows are reported with where."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vidtune.eval.benchmarks import (
    EvalItem,
    load_benchmark,
    load_mc_jsonl,
    load_mvbench,
    load_tempcompass,
    load_video_mme,
    split_lettered,
)


def _mme_row(i, duration, videoID, task_type, options, answer):
    return {
        "video_id": f"{i:03d}",
        "duration": duration,
        "domain": "Knowledge",
        "sub_category": "Humanity & History",
        "url": f"https://www.youtube.com/watch?v={videoID}",
        "videoID": videoID,
        "question_id": f"{i:03d}-1",
        "task_type": task_type,
        "question": f"Question {i}?",
        "options": options,
        "answer": answer,
    }


MME_ROWS = [
    _mme_row(1, "short", "fFjv93ACGo8", "Counting Problem", ["A. one", "B. two", "C. three", "D. four"], "B"),
    _mme_row(2, "medium", "JKpqYvAdIsw", "OCR Problems", ["A. red", "B. blue", "C. green", "D. white"], "D"),
    # Letters out of order: the answer key would point at the wrong text, so the row is refused.
    _mme_row(3, "long", "BH_2bjNsQyI", "Action Reasoning", ["A. x", "C. y", "B. z", "D. w"], "A"),
    _mme_row(4, "long", "aRxhGb5FaiM", "Action Reasoning", ["A. up", "B. down", "C. left", "D. right"], "E"),
]


def _check_mme(items, skipped, path):
    assert [i.id for i in items] == ["001-1", "002-1"]
    first = items[0]
    assert first == EvalItem(
        id="001-1",
        benchmark="video-mme",
        video="/data/videomme/fFjv93ACGo8.mp4",
        question="Question 1?",
        options=["one", "two", "three", "four"],
        answer="B",
        categories={
            "duration": "short",
            "domain": "Knowledge",
            "sub_category": "Humanity & History",
            "task_type": "Counting Problem",
        },
    )
    assert items[1].answer == "D" and items[1].options[3] == "white"
    assert items[1].categories["duration"] == "medium"
    assert [w for w, _ in skipped] == [f"{path}[2]", f"{path}[3]"]
    assert "expected letter B" in skipped[0][1]
    assert "'E'" in skipped[1][1]


def test_video_mme_parquet(tmp_path):
    path = tmp_path / "test-00000-of-00001.parquet"
    pq.write_table(pa.Table.from_pylist(MME_ROWS), path)
    items, skipped = load_video_mme(path, "/data/videomme/")
    _check_mme(items, skipped, path)


def test_video_mme_json_gives_the_same_items(tmp_path):
    path = tmp_path / "videomme.json"
    path.write_text(json.dumps(MME_ROWS))
    items, skipped = load_video_mme(path, "/data/videomme")
    _check_mme(items, skipped, path)


def _write_mvbench(tmp_path):
    d = tmp_path / "json"
    d.mkdir()
    (d / "action_sequence.json").write_text(
        json.dumps(
            [
                {
                    "video": "ZS9XR.mp4",
                    "question": "What happened after the person took the food?",
                    "candidates": ["Ate the medicine.", "Tidied up the blanket.", "Put down the cup."],
                    "answer": "Tidied up the blanket.",
                    "start": 12.5,
                    "end": 20,
                },
                {
                    "video": "X2Y3Z.mp4",
                    "question": "What did the person do first?",
                    "candidates": ["Opened the door.", "Sat down."],
                    "answer": "Stood up.",
                    "start": 0,
                    "end": 8.0,
                },
            ]
        )
    )
    (d / "object_shuffle.json").write_text(
        json.dumps(
            [
                {
                    "video": "video_1234.mp4",
                    "question": "Where is the hidden object at the end of the game?",
                    "candidates": ["Under the first object", "Under the second object", "Under the third"],
                    "answer": "Under the third",
                }
            ]
        )
    )
    roots = {"action_sequence": "s3://bench/mvbench/star/Charades_v1_480", "object_shuffle": "/mv/perception"}
    return d, roots


def test_mvbench_answer_text_becomes_a_letter_and_segments_are_kept(tmp_path):
    d, roots = _write_mvbench(tmp_path)
    items, skipped = load_mvbench(d, roots)
    assert [i.id for i in items] == ["mvbench/action_sequence/0", "mvbench/object_shuffle/0"]
    seq, shuffle = items
    assert seq.video == "s3://bench/mvbench/star/Charades_v1_480/ZS9XR.mp4"
    assert seq.options == ["Ate the medicine.", "Tidied up the blanket.", "Put down the cup."]
    assert seq.answer == "B"
    assert (seq.start, seq.end) == (12.5, 20.0)
    assert seq.categories == {"task": "action_sequence"}
    assert shuffle.answer == "C" and shuffle.video == "/mv/perception/video_1234.mp4"
    assert (shuffle.start, shuffle.end) == (None, None)
    assert shuffle.categories == {"task": "object_shuffle"}
    assert skipped == [(f"{d / 'action_sequence.json'}[1]", "answer 'Stood up.' is not among the candidates")]


def test_mvbench_task_selection_and_missing_roots(tmp_path):
    d, roots = _write_mvbench(tmp_path)
    items, _ = load_mvbench(d, roots, tasks=["object_shuffle"])
    assert [i.id for i in items] == ["mvbench/object_shuffle/0"]
    with pytest.raises(ValueError, match="action_sequence"):
        load_mvbench(d, {"object_shuffle": "/mv"})
    with pytest.raises(FileNotFoundError, match="fine_grained_action"):
        load_mvbench(d, roots, tasks=["fine_grained_action"])


def test_tempcompass_splits_options_out_of_the_question(tmp_path):
    path = tmp_path / "multi-choice.json"
    path.write_text(
        json.dumps(
            {
                "1006": {
                    "speed": [
                        {
                            "question": "What is the speed of the car?\nA. slow\nB. normal\nC. fast",
                            "answer": "C. fast",
                        }
                    ],
                    "direction": [
                        {
                            "question": "Which way is the boat moving?\n(A) left\n(B) right\n(C) closer",
                            "answer": "(B) right",
                        },
                        {"question": "Is the boat moving?", "answer": "A. yes"},
                    ],
                }
            }
        )
    )
    items, skipped = load_tempcompass(path, "/tc/videos")
    assert len(items) == 2
    speed, direction = items
    assert speed.id == "tempcompass/1006/speed/0"
    assert speed.question == "What is the speed of the car?"
    assert speed.options == ["slow", "normal", "fast"]
    assert speed.answer == "C"
    assert speed.video == "/tc/videos/1006.mp4"
    assert speed.categories == {"dimension": "speed"}
    assert direction.options == ["left", "right", "closer"]
    assert direction.answer == "B"
    assert direction.categories == {"dimension": "direction"}
    assert skipped == [(f"{path}[1006][direction][1]", "no lettered options (A. ...) in the question")]


def test_mc_jsonl_reports_bad_lines_by_file_and_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [
        {
            "id": "q1",
            "video": "clips/a.mp4",
            "question": "Colour?",
            "options": ["red", "blue"],
            "answer": "B",
        },
        "",
        "{not json",
        {"id": "q2", "video": "b.mp4", "question": "Count?", "answer": "A"},
        {
            "id": "q3",
            "video": "/abs/c.mp4",
            "question": "Which animal?",
            "options": ["a dog", "a cat", "a bird"],
            "answer": "a bird",
            "category": "animals",
            "start": 1.5,
            "end": 4,
        },
        {
            "id": "q4",
            "video": "d.mp4",
            "question": "Where?",
            "options": ["A. inside", "B. outside"],
            "answer": "b",
            "category": {"scene": "street", "length": "short"},
        },
        {"id": "q5", "video": "e.mp4", "question": "Which?", "options": ["x", "y"], "answer": "z"},
    ]
    path.write_text("\n".join(row if isinstance(row, str) else json.dumps(row) for row in lines) + "\n")
    items, skipped = load_mc_jsonl(path, video_root="/data/mine")
    assert [i.id for i in items] == ["q1", "q3", "q4"]
    q1, q3, q4 = items
    assert (q1.video, q1.options, q1.answer, q1.categories) == (
        "/data/mine/clips/a.mp4",
        ["red", "blue"],
        "B",
        {},
    )
    assert (q3.video, q3.answer, q3.start, q3.end) == ("/abs/c.mp4", "C", 1.5, 4.0)
    assert q3.categories == {"category": "animals"}
    assert q4.options == ["inside", "outside"] and q4.answer == "B"
    assert q4.categories == {"scene": "street", "length": "short"}
    assert [w for w, _ in skipped] == [f"{path}:3", f"{path}:4", f"{path}:7"]
    assert skipped[0][1].startswith("invalid JSON")
    assert skipped[1][1] == "missing key(s): options"
    assert "neither an option letter nor an option text" in skipped[2][1]


def test_split_lettered_forms_and_order():
    assert split_lettered(["A. one", "(B) two", "C) three", "D: four"]) == ["one", "two", "three", "four"]
    with pytest.raises(ValueError, match="expected letter B"):
        split_lettered(["A. one", "C. two"])
    with pytest.raises(ValueError, match="does not start with a letter"):
        split_lettered(["one", "two"])


def test_load_benchmark_dispatches_and_names_the_known_ones(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        json.dumps({"id": 1, "video": "v.mp4", "question": "?", "options": ["a", "b"], "answer": "A"})
    )
    items, skipped = load_benchmark("mc", path=path)
    assert [i.id for i in items] == ["1"] and skipped == []
    with pytest.raises(ValueError, match="video-mme, mvbench, tempcompass, mc"):
        load_benchmark("egoschema")
