"""localai-sd: Stable Diffusion 1.x on the CPU through ncnn, LocalAI-compatible."""

__version__ = "0.1.0"
