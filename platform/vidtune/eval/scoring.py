"""Multiple-choice evaluation: the prompt the paper used, reading the chosen letter back, score tables.

The prompt follows Sparrow/T2Vid so numbers are comparable with theirs; :func:`extract_choice` turns free
model output into a letter (or ``None``, which scores as wrong); :func:`score` builds overall and
per-category accuracy, printable as text and loggable as MLflow metrics.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

LETTERS = "ABCDEFGHIJ"
ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."


def mc_prompt(question: str, options: list[str]) -> str:
    """The question, each option on its own line as "A. text", then the answer instruction."""
    if len(options) > len(LETTERS):
        raise ValueError(f"{len(options)} options; at most {len(LETTERS)} can be lettered")
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {text}" for i, text in enumerate(options)]
    lines.append(ANSWER_INSTRUCTION)
    return "\n".join(lines)


# Applied repeatedly, so "Answer: The correct option is (B)" comes down to "(B)".
_PREFIX = re.compile(
    r"^(?:the\s+|my\s+)?(?:correct\s+|best\s+|right\s+|final\s+)?(?:answer|option|choice)\b(?:\s+is)?\s*[:\-]?\s*",
    re.I,
)
_SINGLE = re.compile(r"^[(\[]?([A-Za-z])[)\]]?[.:)]?$")
_PAREN = re.compile(r"\(([A-Za-z])\)")
_KEYWORD = re.compile(r"\b(?:option|answer|choice)(?:\s+is)?\s*[:\-]?\s*\(?([A-Za-z])(?![A-Za-z0-9'’])", re.I)
_LONE = re.compile(r"(?<![A-Za-z0-9'’])([A-Z])(?![A-Za-z0-9'’])")
# After a lone "A" or "I" a lower-case word means English ("A red car", "I think"), not an option letter.
_ENGLISH_AFTER = re.compile(r"\s+[a-z]")
_LOWER_LETTER_END = re.compile(r"\s*(?:[.,;:!)]|$)")


def _norm(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text.casefold()).strip()


def _letter_mentions(text: str) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for m in _PAREN.finditer(text):
        found.append((m.start(1), m.group(1).upper()))
    for m in _KEYWORD.finditer(text):
        letter = m.group(1)
        # "answer is a cat" names no letter: a lower-case letter after the keyword only counts when
        # nothing but punctuation follows it ("answer is c.").
        if letter.islower() and not _LOWER_LETTER_END.match(text, m.end(1)):
            continue
        found.append((m.start(1), letter.upper()))
    for m in _LONE.finditer(text):
        if m.group(1) in "AI" and _ENGLISH_AFTER.match(text, m.end(1)):
            continue
        found.append((m.start(1), m.group(1)))
    return sorted(found)


def _by_text(text: str, options: list[str]) -> str | None:
    out = _norm(text)
    if not out:
        return None
    normed = [_norm(o) for o in options]
    padded = f" {out} "
    inside = [i for i, o in enumerate(normed) if o and f" {o} " in padded]
    # "a red car" also contains "red car": keep only the longest of options nested in one another.
    inside = [i for i in inside if not any(j != i and f" {normed[i]} " in f" {normed[j]} " for j in inside)]
    if len(inside) == 1:
        return LETTERS[inside[0]]
    if inside:
        return None
    holding = [i for i, o in enumerate(normed) if f" {out} " in f" {o} "]
    return LETTERS[holding[0]] if len(holding) == 1 else None


def extract_choice(output: str, options: list[str]) -> str | None:
    """The letter a model's ``output`` chose among ``options``, or ``None`` when it cannot be told.

    Rules, in order; only letters within ``len(options)`` are answers ("E" with four options is none):

    1. Strip whitespace, markdown emphasis and answer prefixes ("The answer is", "Answer:", "The correct
       answer is", "Best option:", "Option", ...), case-insensitively and repeatedly.
    2. What remains is a single letter, optionally bracketed or followed by "." ":" ")": that letter, in
       either case ("b", "(B)", "B."). Out of range gives ``None``.
    3. What remains equals one option's text, ignoring case and punctuation ("A red car." is C): that one.
       This comes before letters so an option starting with the article "A" is not read as letter A.
    4. Explicit letter mentions anywhere: "(c)" in either case; "option B" / "answer is B" (lower case
       only when only punctuation follows); an upper-case letter standing alone ("B.", "B)", "B:",
       "... no wait, D"), except "A" and "I" followed by a lower-case word, which are English. When
       several are named, the LAST wins, since models correct themselves toward the end.
    5. Option texts: exactly one option's text inside the output (nested options count once, the longest
       wins), else the output inside exactly one option's text.

    Anything else (empty, "I don't know", ambiguous text) is ``None``.
    """
    n = min(len(options), len(LETTERS))
    valid = LETTERS[:n]
    text = output.strip().strip("*`\"'").strip()
    while text:
        stripped = _PREFIX.sub("", text, count=1).strip().strip("*`\"'").strip()
        if stripped == text:
            break
        text = stripped
    if not text:
        return None

    m = _SINGLE.match(text)
    if m:
        letter = m.group(1).upper()
        return letter if letter in valid else None

    exact = [i for i, o in enumerate(options[:n]) if _norm(o) and _norm(o) == _norm(text)]
    if len(exact) == 1:
        return LETTERS[exact[0]]

    mentions = [letter for _, letter in _letter_mentions(text) if letter in valid]
    if mentions:
        return mentions[-1]

    return _by_text(text, options[:n])


@dataclass
class Tally:
    right: int = 0
    total: int = 0

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0

    def add(self, correct: bool) -> None:
        self.right += int(correct)
        self.total += 1


@dataclass
class ScoreTable:
    """Overall accuracy, per benchmark, and per (benchmark, category key, category value)."""

    overall: Tally = field(default_factory=Tally)
    benchmarks: dict[str, Tally] = field(default_factory=dict)
    groups: dict[tuple[str, str, str], Tally] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return self.overall.accuracy

    @property
    def total(self) -> int:
        return self.overall.total

    def rows(self) -> list[dict[str, Any]]:
        """One dict per line (overall, each benchmark, each breakdown) for CSV or JSON.

        The overall line has benchmark "all"; a benchmark's own line has empty key and value.
        """

        def row(benchmark: str, key: str, value: str, t: Tally) -> dict[str, Any]:
            return {
                "benchmark": benchmark,
                "key": key,
                "value": value,
                "right": t.right,
                "total": t.total,
                "accuracy": t.accuracy,
            }

        out = [row("all", "", "", self.overall)]
        for bench in sorted(self.benchmarks):
            out.append(row(bench, "", "", self.benchmarks[bench]))
            for b, key, value in sorted((k for k in self.groups if k[0] == bench), key=_natural):
                out.append(row(b, key, value, self.groups[(b, key, value)]))
        return out

    def metrics(self) -> dict[str, float]:
        """Accuracies (and counts) under MLflow-safe names: ``accuracy``, ``video-mme.accuracy``,
        ``video-mme.duration.short.accuracy``, ``count``, ``video-mme.count``."""
        out = {"accuracy": self.overall.accuracy, "count": float(self.overall.total)}
        for bench, t in self.benchmarks.items():
            b = _metric_part(bench)
            out[f"{b}.accuracy"] = t.accuracy
            out[f"{b}.count"] = float(t.total)
        for (bench, key, value), t in self.groups.items():
            out[".".join(_metric_part(p) for p in (bench, key, value)) + ".accuracy"] = t.accuracy
        return out

    def format(self) -> str:
        """A fixed-width text table: overall first, then each benchmark followed by its breakdowns."""
        lines = [("benchmark", "breakdown", "right", "total", "accuracy")]
        for r in self.rows():
            breakdown = f"{r['key']}={r['value']}" if r["key"] else ""
            lines.append(
                (r["benchmark"], breakdown, str(r["right"]), str(r["total"]), f"{100 * r['accuracy']:.1f}%")
            )
        widths = [max(len(line[c]) for line in lines) for c in range(5)]
        text = []
        for i, line in enumerate(lines):
            cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1])]
            cells += [line[c].rjust(widths[c]) for c in range(2, 5)]
            text.append("  ".join(cells).rstrip())
            if i == 0:
                text.append("  ".join("-" * w for w in widths))
        return "\n".join(text)


def _natural(group: tuple[str, str, str]) -> tuple:
    """Numbers in category values sort as numbers: depth=5% before depth=50% before depth=100%."""
    return tuple(tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", part)) for part in group)


def _metric_part(text: str) -> str:
    # MLflow accepts alphanumerics, "_", "-", ".", " " and "/" in metric names, but treats "/" as a path
    # separator (and rejects "..", which also changes meaning), so each part keeps neither.
    part = re.sub(r"[^A-Za-z0-9_\- ]", "_", str(text)).strip()
    return part or "_"


def _is_correct(row: dict[str, Any]) -> bool:
    prediction = row.get("prediction")
    if prediction is None:
        return False
    return str(prediction).strip().upper() == str(row["answer"]).strip().upper()


def score(rows: list[dict[str, Any]], by: list[str] | None = None) -> ScoreTable:
    """Accuracy over ``rows`` (each with ``benchmark``, ``categories``, ``answer``, ``prediction``).

    A ``None`` prediction (unparseable output) counts as wrong. ``by`` limits which category keys are
    broken down; by default every key present is.
    """
    table = ScoreTable()
    benchmarks: dict[str, Tally] = defaultdict(Tally)
    groups: dict[tuple[str, str, str], Tally] = defaultdict(Tally)
    for row in rows:
        correct = _is_correct(row)
        bench = str(row["benchmark"])
        table.overall.add(correct)
        benchmarks[bench].add(correct)
        for key, value in (row.get("categories") or {}).items():
            if by is None or key in by:
                groups[(bench, str(key), str(value))].add(correct)
    table.benchmarks = dict(benchmarks)
    table.groups = dict(groups)
    return table
