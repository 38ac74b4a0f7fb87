"""Evaluation: video benchmarks and Needle-in-a-Video-Haystack.

``benchmarks`` reads the public release formats (Video-MME, MVBench, TempCompass, a generic
multiple-choice JSONL) into one item record, ``scoring`` prompts as the paper did, extracts the chosen
letter and builds per-category accuracy tables, and ``niavh`` generates needle-in-a-haystack videos and
their heatmap.
"""
