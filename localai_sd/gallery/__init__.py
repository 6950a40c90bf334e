"""LocalAI-compatible model gallery: URL forms, verified downloads, install/delete, preload.

Modules: ``urls`` (URL resolution and mirrors), ``streams`` (chunked copies with sha256, progress
and cancellation), ``http_fetch`` (HTTP GETs with timeouts, retries and Range resume),
``download`` (atomic, verified downloads with progress events), ``definitions`` (gallery YAML:
file specs, model definitions, index entries), ``catalog`` (fetching galleries, finding entries,
available models), ``store`` (what is installed: lock, manifests, delete), ``install`` (install
requests and the installer) and ``preload`` (PRELOAD_MODELS / PRELOAD_MODELS_CONFIG).
"""
