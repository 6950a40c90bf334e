"""LocalAI-compatible model gallery: URL forms, verified downloads, install/delete, preload.

Modules: ``urls`` (URL resolution and mirrors), ``download`` (atomic, verified, resumable
downloads with progress events), ``install`` (gallery YAML, install requests, install/delete,
available models) and ``preload`` (PRELOAD_MODELS / PRELOAD_MODELS_CONFIG).
"""
