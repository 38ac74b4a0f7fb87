"""Inputs for the embedded demo, made on the spot: short videos whose answer lives in the frames.

Each video shows two colours one after the other; the instruction asks which comes first, so a model
can only answer from the frames in the right order. Two manifests in the two formats users have (LLaVA
and ShareGPT) and one corrupt video show the errors table at work.
"""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from vidtune.data.videogen import COLORS, VideoSpec, color_sequence, write_video

QUESTIONS = [
    "Which colour fills the video first?",
    "What colour appears at the start of the clip?",
    "Name the first colour shown in this video.",
]


# Sentences written for the demo (no third-party text): filler around one fact a question asks for.
FILLER = [
    "The river ran slowly past the old mill, where the wheel had not turned for many years.",
    "In the mornings the fishermen checked their nets and talked about the weather.",
    "A narrow road followed the water to the next village, lined with willows and stone walls.",
    "The market opened at dawn, and by noon most of the bread and cheese had been sold.",
    "Children crossed the wooden bridge on their way to school, counting the boats below.",
    "Every autumn the town held a fair with music, games and a contest for the largest pumpkin.",
    "The library kept maps of the valley drawn by surveyors more than a century ago.",
    "Rain came often in spring, and the fields turned green almost overnight.",
]


DOOR_QUESTIONS = [
    "What colour is the door of the ferry house?",
    "Read the story: which colour was the ferry house door painted?",
    "According to the text, what is the colour of the painted door?",
    "The story mentions a painted door. What colour is it?",
]


def write_demo_text(out: str | Path, documents: int = 12, seed: int = 0) -> dict[str, Path]:
    """Long-text QA for T2Vid: documents of 150-450 words hiding one fact, in the generic form, in
    LongAlpaca's and in LongQLoRA's (several documents, the answer naming the one that holds the fact),
    plus one row with an empty document (it lands in the errors table)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    colors = list(COLORS)
    generic, alpaca, qlora = [], [], []

    def filler(lo: int, hi: int) -> list[str]:
        return [rng.choice(FILLER) for _ in range(rng.randint(lo, hi))]

    for k in range(documents):
        color = colors[k % len(colors)]
        sentences = filler(8, 26)
        sentences.insert(rng.randrange(len(sentences)), f"The painted door of the ferry house is {color}.")
        doc = " ".join(sentences)
        question = rng.choice(DOOR_QUESTIONS)
        if k % 3 == 2:
            instruction = (
                "Below is a story. Memorize the story and answer my question after the story.\n"
                f"The story begins.\n{doc}\nNow the story ends.\n{question}"
            )
            alpaca.append({"id": f"t{k:03d}", "instruction": instruction, "output": color})
        elif k % 3 == 1:
            docs = [doc, " ".join(filler(6, 12)), " ".join(filler(6, 12))]
            rng.shuffle(docs)
            n = docs.index(doc) + 1
            text = "\n".join(f"Document [{i}] {d}" for i, d in enumerate(docs, 1))
            answer = f"The painted door of the ferry house is {color}, as stated in Document {n}."
            qlora.append({"id": f"t{k:03d}", "input": f"{text}\nQuestion: {question}", "output": answer})
        else:
            generic.append({"id": f"t{k:03d}", "context": doc, "question": question, "answer": color})
    generic.append({"id": "empty", "context": "", "question": "What is here?", "answer": "nothing"})
    paths = {
        "longqa": out / "longqa.jsonl",
        "longalpaca": out / "longalpaca.json",
        "longqlora": out / "longqlora.jsonl",
    }
    paths["longqa"].write_text("".join(json.dumps(r) + "\n" for r in generic))
    paths["longalpaca"].write_text(json.dumps(alpaca, indent=1))
    paths["longqlora"].write_text("".join(json.dumps(r) + "\n" for r in qlora))
    return paths


def write_demo_inputs(out: str | Path, videos: int = 24, seed: int = 0) -> dict[str, Path]:
    """Write videos and manifests under ``out``; returns the manifest paths by format."""
    out = Path(out)
    rng = random.Random(seed)
    pairs = [p for p in itertools.permutations(COLORS, 2)]
    llava, sharegpt = [], []
    for k in range(videos):
        first, second = pairs[k % len(pairs)]
        name = f"videos/clip-{k:03d}.mp4"
        spec = VideoSpec(
            frames=rng.choice([60, 75, 90]),
            fps=30,
            width=224,
            height=160,
            keyframe_interval=15,
            colors=color_sequence([first, second]),
        )
        write_video(out / name, spec)
        question = rng.choice(QUESTIONS)
        if k % 2 == 0:
            llava.append(
                {
                    "id": f"c{k:03d}",
                    "video": name,
                    "conversations": [
                        {"from": "human", "value": f"<video>\n{question}"},
                        {"from": "gpt", "value": first},
                    ],
                }
            )
        else:
            sharegpt.append(
                {
                    "messages": [
                        {"role": "user", "content": f"<video>{question}"},
                        {"role": "assistant", "content": first},
                    ],
                    "videos": [name],
                    "id": f"c{k:03d}",
                }
            )
    # A corrupt video and a missing one: the demo shows them landing in the errors table.
    (out / "videos" / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(rng.randbytes(2000)))
    llava.append(
        {
            "id": "corrupt",
            "video": "videos/corrupt.mp4",
            "conversations": [
                {"from": "human", "value": "<video>\nWhat is shown?"},
                {"from": "gpt", "value": "nothing"},
            ],
        }
    )
    sharegpt.append(
        {
            "id": "missing",
            "videos": ["videos/missing.mp4"],
            "messages": [
                {"role": "user", "content": "<video>What is shown?"},
                {"role": "assistant", "content": "nothing"},
            ],
        }
    )
    # Held out from training: every ordered pair once, answered before and after fine-tuning.
    heldout = []
    for k, (first, second) in enumerate(pairs):
        name = f"heldout/clip-{k:03d}.mp4"
        spec = VideoSpec(
            frames=60,
            fps=30,
            width=224,
            height=160,
            keyframe_interval=15,
            colors=color_sequence([first, second]),
        )
        write_video(out / name, spec)
        heldout.append(
            {
                "id": f"h{k:03d}",
                "video": name,
                "conversations": [
                    {"from": "human", "value": f"<video>\n{rng.choice(QUESTIONS)}"},
                    {"from": "gpt", "value": first},
                ],
            }
        )
    # The same held-out clips as a multiple-choice benchmark (generic JSONL) for `vidtune eval`.
    names = list(COLORS)
    mc = [
        {
            "id": h["id"],
            "video": h["video"],
            "question": h["conversations"][0]["value"].removeprefix("<video>\n"),
            "options": rng.sample(names, len(names)),
            "answer": h["conversations"][1]["value"],
            "category": {"first": h["conversations"][1]["value"]},
        }
        for h in heldout
    ]
    paths = {
        "llava": out / "llava.json",
        "sharegpt": out / "sharegpt.jsonl",
        "heldout": out / "heldout.json",
        "heldout-mc": out / "heldout-mc.jsonl",
    }
    paths["llava"].write_text(json.dumps(llava, indent=1))
    paths["sharegpt"].write_text("".join(json.dumps(r) + "\n" for r in sharegpt))
    paths["heldout"].write_text(json.dumps(heldout, indent=1))
    paths["heldout-mc"].write_text("".join(json.dumps(r) + "\n" for r in mc))
    return paths
