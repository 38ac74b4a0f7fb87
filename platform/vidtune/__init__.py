"""vidtune: a Ray-native platform for data-efficient fine-tuning of video LLMs (T2Vid, arXiv 2411.19951)."""

__version__ = "0.1.0"
