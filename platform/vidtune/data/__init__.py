"""Data stages: the clip schema, decoding and sampling, manifests, shards, mixing, Ray Data pipelines."""
