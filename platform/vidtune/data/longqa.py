"""Long-text QA inputs for T2Vid, in the forms users have, read into (document, question, answer).

Presets:

* ``generic``: ``context`` / ``question`` / ``answer`` fields (renamed through ``fields``);
* ``longalpaca``: LongAlpaca-12k, where ``instruction`` holds an intro, the document and, after a
  "Now the paper ends." style marker, the question; ``output`` is the answer.

A row that cannot become a sample (not an object, a missing or empty field, no end marker, not UTF-8)
comes back as a :class:`~vidtune.data.manifests.ManifestError` with its file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from vidtune.data.manifests import ManifestError, entries_of

# LongAlpaca's template: "Below is a paper. Memorize ... The paper begins. \n DOC \n Now the paper ends. \n Q"
_ALPACA = re.compile(
    r"^\s*(?:Below is[^\n]*\n)?\s*(?:The \w+ begins\.)?\s*(?P<doc>.*?)\s*Now the \w+ ends\.\s*(?P<q>.*?)\s*$",
    re.S,
)
PRESETS = ("generic", "longalpaca")
# The paper's question-length filter per preset (words).
QUESTION_WORDS = {"longalpaca": 500}


@dataclass
class LongQA:
    id: str
    document: str
    question: str
    answer: str
    origin: str


def split_longalpaca(instruction: str) -> tuple[str, str]:
    """(document, question) of a LongAlpaca instruction."""
    m = _ALPACA.match(instruction)
    if not m or not m.group("doc").strip() or not m.group("q").strip():
        raise ValueError("no 'Now the ... ends.' marker between document and question")
    return m.group("doc").strip(), m.group("q").strip()


def parse_longqa(obj: Any, preset: str, fields: dict[str, str], index: int) -> tuple[str, str, str, str]:
    """(id, document, question, answer) of one row; ``ValueError`` says what is wrong with it."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")

    def text(key: str) -> str:
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"field '{key}' is missing or empty")
        return value

    sample_id = str(obj.get(fields.get("id", "id"), index))
    if preset == "longalpaca":
        doc, question = split_longalpaca(text(fields.get("instruction", "instruction")))
        return sample_id, doc, question, text(fields.get("answer", "output")).strip()
    return (
        sample_id,
        text(fields.get("context", "context")),
        text(fields.get("question", "question")).strip(),
        text(fields.get("answer", "answer")).strip(),
    )


def read_longqa(
    uri: str,
    *,
    preset: str = "generic",
    fields: dict[str, str] | None = None,
    endpoint_url: str | None = None,
) -> Iterator[LongQA | ManifestError]:
    """Every row of one long-QA file (JSON array or JSONL), as a sample or an error with file:line."""
    for n, (line, obj) in enumerate(entries_of(uri, endpoint_url)):
        origin = f"{uri}:{line}"
        if isinstance(obj, ValueError):
            yield ManifestError(origin, str(obj))
            continue
        try:
            yield LongQA(*parse_longqa(obj, preset, fields or {}, n), origin=origin)
        except ValueError as exc:
            yield ManifestError(origin, str(exc), str(obj.get("id", "")) if isinstance(obj, dict) else "")
