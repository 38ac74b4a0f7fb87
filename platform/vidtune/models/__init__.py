"""Model families (one adapter per Hugging Face video-LLM family) and tiny offline models."""
