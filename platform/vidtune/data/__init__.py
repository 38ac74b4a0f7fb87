"""Data stages: the clip schema, decoding and sampling, manifests, shards, mixing and the Ray Data pipelines."""
