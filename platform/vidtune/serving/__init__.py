"""Serving: a fine-tuned video LLM behind an OpenAI-compatible HTTP endpoint on Ray Serve.

``api`` is the wire format (requests, responses, errors), ``media`` fetches and decodes the videos and
images a request names, ``engine`` loads the model and answers batches of requests, ``app`` is the Ray
Serve deployment with its FastAPI ingress, and ``stage`` starts it from a job file (``vidtune serve``).
"""
