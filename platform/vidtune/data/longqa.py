"""Long-text QA inputs for T2Vid, in the forms users have, read into (document, question, answer).

Presets:

* ``generic``: ``context`` / ``question`` / ``answer`` fields (renamed through ``fields``);
* ``longalpaca``: LongAlpaca-12k, where ``instruction`` holds an intro, the document and, after a
  "Now the paper ends." style marker, the question; ``output`` is the answer.
* ``longqlora``: LongQLoRA-SFT-Data (Vicuna-style ``input`` / ``output`` rows), where ``input`` holds
  the documents and, after the last ``Question:`` marker (or in its last paragraph), the question.
  An answer that names the document it came from ("... (Document 3)", "Document ID: 3") is rewritten
  as the T2Vid paper did: the short answer, then ``Document ID: N``, with the question asking for both.

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
# LongQLoRA: the question follows the last "Question:" marker, else it is the last paragraph.
_QUESTION_MARK = re.compile(r"(?:^|\n)\s*(?:question|q)\s*:\s*", re.I)
# A document reference inside an answer: "Document ID: 3", "document [3]", "(Doc 3)", "Document #3".
_DOC_REF = re.compile(
    r"(?:\b(?:according to|as (?:stated|given|shown) in|see|from|in)\s+(?:the\s+)?)?"
    r"[(\[]?\s*\b(?:document|doc)\.?\s*(?:id)?\s*[:#]?\s*\[?(\d+)\]?\s*[)\]]?",
    re.I,
)
_LEAD = re.compile(r"^\s*(?:short answer|answer|the answer is)\s*[:,-]?\s*", re.I)
ASK_FOR_BOTH = (
    "Answer briefly, then give the ID of the document that contains the answer as 'Document ID: N'."
)
PRESETS = ("generic", "longalpaca", "longqlora")
# The paper's question-length filter per preset (words).
QUESTION_WORDS = {"longalpaca": 500, "longqlora": 30}


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


def split_longqlora(text: str) -> tuple[str, str]:
    """(documents, question) of a LongQLoRA ``input``."""
    marks = list(_QUESTION_MARK.finditer(text))
    if marks:
        doc, question = text[: marks[-1].start()], text[marks[-1].end() :]
    else:
        doc, _, question = text.strip().rpartition("\n\n")
    if not doc.strip() or not question.strip():
        raise ValueError("no question after the documents (no 'Question:' marker or final paragraph)")
    return doc.strip(), question.strip()


def rewrite_document_answer(question: str, answer: str) -> tuple[str, str]:
    """The paper's LongQLoRA rewrite: a long answer naming its document becomes the short answer
    (its first sentence, reference removed) then ``Document ID: N``; the question asks for both.
    An answer without a document reference comes back unchanged."""
    refs = _DOC_REF.findall(answer)
    if not refs:
        return question, answer
    text = _LEAD.sub("", _DOC_REF.sub(" ", answer))
    text = re.sub(r"\s+", " ", text).strip(" .;,:-")
    # The first sentence is the short answer; the rest is the long answer's supporting text.
    short = re.split(r"(?<=[.!?])\s+", text, maxsplit=1)[0].rstrip(" .")
    if not short:
        raise ValueError("the answer holds only a document reference")
    return f"{question} {ASK_FOR_BOTH}", f"{short[0].upper()}{short[1:]}.\nDocument ID: {refs[0]}"


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
    if preset == "longqlora":
        doc, question = split_longqlora(text(fields.get("input", "input")))
        question, answer = rewrite_document_answer(question, text(fields.get("answer", "output")).strip())
        return sample_id, doc, question, answer
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
