"""Manifests in LLaVA and ShareGPT / LLaMA-Factory form; bad lines come back with file:line."""

import json

import pytest

from vidtune.data.manifests import ManifestError, ManifestRecord, parse_sample, read_manifest


def test_llava_and_sharegpt_give_the_same_messages():
    llava = {
        "id": 1,
        "video": "v.mp4",
        "conversations": [{"from": "human", "value": "<video>\nWhat?"}, {"from": "gpt", "value": "A cat."}],
    }
    sharegpt = {
        "id": "1",
        "videos": ["v.mp4"],
        "messages": [
            {"role": "user", "content": "<video>\nWhat?"},
            {"role": "assistant", "content": "A cat."},
        ],
    }
    assert (
        parse_sample(llava)
        == parse_sample(sharegpt)
        == (
            "1",
            "v.mp4",
            [{"role": "user", "content": "<video>\nWhat?"}, {"role": "assistant", "content": "A cat."}],
        )
    )


def test_missing_placeholder_is_added_and_image_alias_mapped():
    _, _, msgs = parse_sample(
        {
            "id": "x",
            "video": "v.mp4",
            "conversations": [{"from": "human", "value": "Describe it."}, {"from": "gpt", "value": "ok"}],
        }
    )
    assert msgs[0]["content"] == "<video>\nDescribe it."
    _, _, msgs = parse_sample(
        {
            "id": "x",
            "video": "v.mp4",
            "conversations": [
                {"from": "human", "value": "<image>\nDescribe it."},
                {"from": "gpt", "value": "ok"},
            ],
        }
    )
    assert msgs[0]["content"] == "<video>\nDescribe it."


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ({"id": "x", "conversations": []}, "no video"),
        ({"id": "x", "video": "v", "conversations": [{"from": "human", "value": "hi"}]}, "no assistant"),
        ({"id": "x", "video": "v", "conversations": [{"from": "bot", "value": "hi"}]}, "unknown role"),
        ({"id": "x", "videos": ["a", "b"], "messages": []}, "one video per sample"),
        (
            {
                "id": "x",
                "video": "v",
                "conversations": [
                    {"from": "human", "value": "<video><video>"},
                    {"from": "gpt", "value": "a"},
                ],
            },
            "one <video>",
        ),
    ],
)
def test_bad_entries_say_why(entry, words):
    with pytest.raises(ValueError, match=words):
        parse_sample(entry)


def test_jsonl_bad_lines_reported_with_file_and_line(tmp_path):
    good = {
        "id": "a",
        "video": "a.mp4",
        "conversations": [{"from": "human", "value": "<video>q"}, {"from": "gpt", "value": "r"}],
    }
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n{not json\n\n" + json.dumps({"id": "b"}) + "\n")
    items = list(read_manifest(str(path), video_root="/data"))
    assert isinstance(items[0], ManifestRecord) and items[0].video == "/data/a.mp4"
    assert items[0].origin == f"{path}:1"
    errors = [i for i in items if isinstance(i, ManifestError)]
    assert [(e.origin, e.id) for e in errors] == [(f"{path}:2", ""), (f"{path}:4", "b")]
    assert "invalid JSON" in errors[0].reason and "no video" in errors[1].reason


def test_json_array_lines_and_broken_file(tmp_path):
    entries = [
        {
            "id": str(i),
            "video": f"s3://bucket/{i}.mp4",
            "conversations": [{"from": "human", "value": "<video>q"}, {"from": "gpt", "value": "r"}],
        }
        for i in range(3)
    ]
    entries[1]["conversations"] = []
    path = tmp_path / "m.json"
    path.write_text(json.dumps(entries, indent=2))
    items = list(read_manifest(str(path), video_root="/ignored"))
    assert [type(i).__name__ for i in items] == ["ManifestRecord", "ManifestError", "ManifestRecord"]
    assert items[0].video == "s3://bucket/0.mp4"  # URLs are kept as they are
    assert items[1].origin == f"{path}:{json.dumps(entries, indent=2).splitlines().index('  {', 2) + 1}"
    path.write_text('[\n {"id": "1"},\n {"id": 2,,}\n]')
    with pytest.raises(ValueError, match=r"m\.json:3: invalid JSON"):
        list(read_manifest(str(path)))
