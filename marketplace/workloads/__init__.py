"""Buyer workloads on the marketplace: files, fine-tune jobs and inference
deployments, and the OpenAI- and Together-compatible API over them (``/v1/``)."""
