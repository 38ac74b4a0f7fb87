"""Loaders for public video benchmark releases, each read into one :class:`EvalItem` record.

Supported, in the shape their authors publish them:

* Video-MME: the parquet release (or the same rows as a JSON array), options written "A. text";
* MVBench: one JSON array per task, the answer given as the text of one candidate, some with a segment;
* TempCompass multi-choice QA: ``{video_id: {dimension: [{"question", "answer"}]}}`` with the options
  written into the question;
* a generic multiple-choice JSONL for anything else.

Every loader returns ``(items, skipped)``. A row that cannot become an item is reported in ``skipped`` as
``(where, reason)`` so an evaluation says how many questions it did not ask; one bad row never stops a load.
Where a row lives is ``file:line`` for JSONL, ``file[index]`` for arrays and parquet (0-based), and
``file[video_id][dimension][index]`` for TempCompass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vidtune.eval.scoring import LETTERS

Skipped = list[tuple[str, str]]
Loaded = tuple[list["EvalItem"], Skipped]

VIDEO_MME_CATEGORIES = ("duration", "domain", "sub_category", "task_type")

# "A. text", "(A) text", "A) text", "A: text"; the letter may be lower case in hand-written sets.
_LETTERED = re.compile(r"^\s*(?:\(([A-Za-z])\)|([A-Za-z])\s*[.):])\s*(.*?)\s*$", re.S)


@dataclass
class EvalItem:
    id: str  # unique within the benchmark
    benchmark: str  # "video-mme" | "mvbench" | "tempcompass" | "mc"
    video: str  # path or URI, already joined with the caller's video root
    question: str
    options: list[str]  # texts only, without their letters
    answer: str  # the correct letter
    categories: dict[str, str] = field(default_factory=dict)  # what scores are broken down by
    start: float | None = None  # segment in seconds, when the benchmark gives one
    end: float | None = None


class _Collector:
    """Gathers items and skipped rows; a repeated id is skipped, since scores are keyed by id."""

    def __init__(self) -> None:
        self.items: list[EvalItem] = []
        self.skipped: Skipped = []
        self._ids: set[str] = set()

    def add(self, where: str, build: Callable[[], EvalItem]) -> None:
        try:
            item = build()
        except (KeyError, TypeError, ValueError) as e:
            self.skip(where, _reason(e))
            return
        if item.id in self._ids:
            self.skip(where, f"duplicate id {item.id!r}")
            return
        self._ids.add(item.id)
        self.items.append(item)

    def skip(self, where: str, reason: str) -> None:
        self.skipped.append((where, reason))

    def result(self) -> Loaded:
        return self.items, self.skipped


def _reason(e: Exception) -> str:
    if isinstance(e, KeyError):
        return f"missing key {e.args[0]!r}"
    return str(e)


def split_lettered(lines: Iterable[str]) -> list[str]:
    """Turn ``["A. a dog", "(B) a cat", ...]`` into ``["a dog", "a cat", ...]``.

    Accepts "A. text", "(A) text", "A) text" and "A: text". The letters must run A, B, C, ... in order,
    because the answer key refers to options by letter: a gap or a reordering would silently shift every
    answer, so it raises ``ValueError`` instead.
    """
    texts = []
    for i, line in enumerate(lines):
        if not isinstance(line, str):
            raise ValueError(f"option {i} is not a string: {line!r}")
        m = _LETTERED.match(line)
        if not m:
            raise ValueError(f"option {line!r} does not start with a letter")
        letter = (m.group(1) or m.group(2)).upper()
        if i >= len(LETTERS) or letter != LETTERS[i]:
            expected = LETTERS[i] if i < len(LETTERS) else f"at most {len(LETTERS)} options"
            raise ValueError(f"option {line!r}: expected letter {expected}, got {letter}")
        if not m.group(3):
            raise ValueError(f"option {letter} has no text")
        texts.append(m.group(3))
    return texts


def _join(root: str | None, name: str) -> str:
    # Roots may be URIs (s3://...), so join as strings rather than through Path, which would mangle "//".
    if not root or name.startswith("/") or "://" in name:
        return name
    return root.rstrip("/") + "/" + name


def _text(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} is empty or not a string")
    return value.strip()


def _options(options: Any) -> list[str]:
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ValueError("options is not a list of strings")
    if not 2 <= len(options) <= len(LETTERS):
        raise ValueError(f"{len(options)} options; expected 2 to {len(LETTERS)}")
    return options


def _letter(answer: Any, n_options: int) -> str:
    if not isinstance(answer, str):
        raise ValueError(f"answer {answer!r} is not a string")
    letter = answer.strip().upper()
    if len(letter) != 1 or letter not in LETTERS[:n_options]:
        raise ValueError(f"answer {answer!r} is not one of the letters {LETTERS[:n_options]}")
    return letter


def _segment(row: dict[str, Any]) -> tuple[float | None, float | None]:
    start, end = row.get("start"), row.get("end")
    if start is None and end is None:
        return None, None
    try:
        s, e = float(start), float(end)
    except (TypeError, ValueError):
        raise ValueError(f"segment start={start!r} end={end!r} is not two numbers") from None
    if not 0 <= s < e:
        raise ValueError(f"segment start={s} end={e} is not a forward interval")
    return s, e


def _categories(row: dict[str, Any], keys: Iterable[str]) -> dict[str, str]:
    return {k: str(row[k]) for k in keys if row.get(k) not in (None, "")}


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_video_mme(annotations: str | Path, video_root: str) -> Loaded:
    """Video-MME from its parquet release or the same rows as a JSON array.

    The video is ``{video_root}/{videoID}.mp4``; scores break down by duration, domain, sub_category and
    task_type.
    """
    path = Path(annotations)
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    else:
        rows = _read_json(path)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON array of questions")

    out = _Collector()
    for i, row in enumerate(rows):

        def build(row: Any = row) -> EvalItem:
            if not isinstance(row, dict):
                raise ValueError("row is not an object")
            options = split_lettered(_options(row["options"]))
            return EvalItem(
                id=str(row["question_id"]),
                benchmark="video-mme",
                video=_join(video_root, f"{_text(row, 'videoID')}.mp4"),
                question=_text(row, "question"),
                options=options,
                answer=_letter(row["answer"], len(options)),
                categories=_categories(row, VIDEO_MME_CATEGORIES),
            )

        out.add(f"{path}[{i}]", build)
    return out.result()


def load_mvbench(json_dir: str | Path, video_roots: dict[str, str], tasks: list[str] | None = None) -> Loaded:
    """MVBench: ``{json_dir}/{task}.json`` per task, videos under ``video_roots[task]``.

    The answer is the text of one candidate and becomes that candidate's letter. ``tasks`` picks tasks
    (default: every JSON file in ``json_dir``).
    """
    json_dir = Path(json_dir)
    if tasks is None:
        tasks = sorted(p.stem for p in json_dir.glob("*.json"))
    missing_files = [t for t in tasks if not (json_dir / f"{t}.json").is_file()]
    if missing_files:
        raise FileNotFoundError(f"no task JSON in {json_dir} for: {', '.join(missing_files)}")
    # Checked before reading anything: a task without a video folder would otherwise skip every row.
    missing_roots = [t for t in tasks if t not in video_roots]
    if missing_roots:
        raise ValueError(f"video_roots has no folder for task(s): {', '.join(missing_roots)}")

    out = _Collector()
    for task in tasks:
        path = json_dir / f"{task}.json"
        try:
            rows = _read_json(path)
        except (OSError, ValueError) as e:
            out.skip(str(path), f"unreadable task file: {e}")
            continue
        if not isinstance(rows, list):
            out.skip(str(path), "task file is not a JSON array")
            continue
        for i, row in enumerate(rows):

            def build(row: Any = row, task: str = task, i: int = i) -> EvalItem:
                if not isinstance(row, dict):
                    raise ValueError("row is not an object")
                candidates = _options(row["candidates"])
                answer = row["answer"]
                if answer not in candidates:
                    raise ValueError(f"answer {answer!r} is not among the candidates")
                start, end = _segment(row)
                return EvalItem(
                    id=f"mvbench/{task}/{i}",
                    benchmark="mvbench",
                    video=_join(video_roots[task], _text(row, "video")),
                    question=_text(row, "question"),
                    options=[str(c) for c in candidates],
                    answer=LETTERS[candidates.index(answer)],
                    categories={"task": task},
                    start=start,
                    end=end,
                )

            out.add(f"{path}[{i}]", build)
    return out.result()


def _split_question(text: str) -> tuple[str, list[str]]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    # Options are the trailing lettered block beginning at "A": a question may itself contain a line
    # such as "B: ..." only before that block.
    for k, line in enumerate(lines):
        m = _LETTERED.match(line)
        if m and (m.group(1) or m.group(2)).upper() == "A":
            question = "\n".join(lines[:k]).strip()
            if not question:
                raise ValueError("question text before the options is empty")
            return question, split_lettered(lines[k:])
    raise ValueError("no lettered options (A. ...) in the question")


def load_tempcompass(json_path: str | Path, video_root: str) -> Loaded:
    """TempCompass multi-choice QA: options are split out of the question; the answer is "B. text".

    The video is ``{video_root}/{video_id}.mp4``; scores break down by dimension (speed, direction, ...).
    """
    path = Path(json_path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object keyed by video id")

    out = _Collector()
    for video_id, dims in data.items():
        if not isinstance(dims, dict):
            out.skip(f"{path}[{video_id}]", "entry is not an object keyed by dimension")
            continue
        for dim, qas in dims.items():
            if not isinstance(qas, list):
                out.skip(f"{path}[{video_id}][{dim}]", "dimension is not a list of questions")
                continue
            for i, qa in enumerate(qas):

                def build(qa: Any = qa, video_id: str = video_id, dim: str = dim, i: int = i) -> EvalItem:
                    if not isinstance(qa, dict):
                        raise ValueError("row is not an object")
                    question, options = _split_question(_text(qa, "question"))
                    m = _LETTERED.match(_text(qa, "answer"))
                    if not m:
                        raise ValueError(f"answer {qa['answer']!r} does not start with a letter")
                    return EvalItem(
                        id=f"tempcompass/{video_id}/{dim}/{i}",
                        benchmark="tempcompass",
                        video=_join(video_root, f"{video_id}.mp4"),
                        question=question,
                        options=options,
                        answer=_letter(m.group(1) or m.group(2), len(options)),
                        categories={"dimension": dim},
                    )

                out.add(f"{path}[{video_id}][{dim}][{i}]", build)
    return out.result()


def _mc_answer(answer: Any, options: list[str]) -> str:
    if isinstance(answer, str):
        stripped = answer.strip()
        if len(stripped) == 1 and stripped.upper() in LETTERS[: len(options)]:
            return stripped.upper()
        folded = [o.strip().casefold() for o in options]
        if stripped.casefold() in folded:
            return LETTERS[folded.index(stripped.casefold())]
    raise ValueError(f"answer {answer!r} is neither an option letter nor an option text")


def _mc_options(options: Any) -> list[str]:
    options = _options(options)
    # Sets exported from other tools often keep "A. " on each option; strip them only when every option
    # is lettered in order, so a text that merely starts with "A:" is left alone.
    try:
        return split_lettered(options)
    except ValueError:
        return options


def load_mc_jsonl(path: str | Path, video_root: str | None = None) -> Loaded:
    """Generic multiple choice, one JSON object a line.

    Keys: ``id``, ``video`` (relative paths join ``video_root``), ``question``, ``options`` (texts),
    ``answer`` (a letter or an option's text), optional ``category`` (a string, or a dict of breakdowns)
    and ``start``/``end`` in seconds.
    """
    path = Path(path)
    out = _Collector()
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                out.skip(where, f"invalid JSON: {e.msg}")
                continue

            def build(row: Any = row) -> EvalItem:
                if not isinstance(row, dict):
                    raise ValueError("line is not a JSON object")
                missing = [k for k in ("id", "video", "question", "options", "answer") if k not in row]
                if missing:
                    raise ValueError(f"missing key(s): {', '.join(missing)}")
                options = _mc_options(row["options"])
                category = row.get("category")
                if isinstance(category, dict):
                    categories = {str(k): str(v) for k, v in category.items()}
                elif category is None:
                    categories = {}
                else:
                    categories = {"category": str(category)}
                start, end = _segment(row)
                return EvalItem(
                    id=str(row["id"]),
                    benchmark="mc",
                    video=_join(video_root, _text(row, "video")),
                    question=_text(row, "question"),
                    options=options,
                    answer=_mc_answer(row["answer"], options),
                    categories=categories,
                    start=start,
                    end=end,
                )

            out.add(where, build)
    return out.result()


LOADERS: dict[str, Callable[..., Loaded]] = {
    "video-mme": load_video_mme,
    "mvbench": load_mvbench,
    "tempcompass": load_tempcompass,
    "mc": load_mc_jsonl,
}


def load_benchmark(name: str, **kwargs: Any) -> Loaded:
    """Load benchmark ``name`` with its loader's keyword arguments (see the ``load_*`` functions)."""
    loader = LOADERS.get(name.strip().lower())
    if loader is None:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(LOADERS)}")
    return loader(**kwargs)
