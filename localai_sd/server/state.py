"""Everything one server instance owns: settings, image store, warm models, queues, gallery."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from localai_sd.errors import InvalidRequest
from localai_sd.models import ModelConfig, load_config
from localai_sd.pipeline import memory
from localai_sd.pipeline.pipeline import GeneratedImage
from localai_sd.pipeline.request import GenerationRequest, Limits, check_limits
from localai_sd.server.gallery_ops import GalleryOps
from localai_sd.server.images import ImageStore
from localai_sd.server.jobs import GenerationJob, GenerationQueue, InstallJobs
from localai_sd.server.models_cache import ModelCache
from localai_sd.server.schemas import ImageGenerationBody
from localai_sd.settings import Settings

#: LocalAI's default size for this endpoint (OpenAI's 1024x1024 crashed its NCNN backend).
DEFAULT_SIZE = "512x512"


@dataclass
class ServerState:
    """The per-app objects; built by ``create_app``, started and stopped by its lifespan."""

    settings: Settings
    images: ImageStore
    models: ModelCache
    gallery: GalleryOps
    installs: InstallJobs = field(default_factory=InstallJobs)
    queue: GenerationQueue = field(init=False)
    ready: bool = False
    #: Peak memory a request may need, in bytes: the setting, or derived from the machine's RAM here, at
    #: startup (None when neither is known: no memory check).
    memory_budget: int | None = field(init=False)

    def __post_init__(self) -> None:
        """Create the generation queue bound to this state's runner; settle the memory budget."""
        self.memory_budget = memory.resolve_budget(self.settings.max_memory_bytes)
        self.queue = GenerationQueue(
            self.run_job, workers=self.settings.workers, max_waiting=self.settings.queue_size
        )

    def run_job(self, job: GenerationJob) -> list[GeneratedImage]:
        """Worker-thread body: lease the warm pipeline and generate, reporting steps and polling cancel."""
        with self.models.lease(job.config) as pipeline:
            return pipeline.generate(job.request, on_step=job.on_step, should_cancel=job.cancelled)

    def prepare(self, body: ImageGenerationBody) -> tuple[GenerationRequest, ModelConfig]:
        """Validate the body into a request (400s), find the model (404), then admit it by memory (400)."""
        settings = self.settings
        limits = Limits.from_settings(settings)
        asked_steps = body.step_count()
        request = GenerationRequest.create(
            body.prompt,
            negative_prompt=body.negative_prompt,
            size=body.size or DEFAULT_SIZE,
            steps=asked_steps if asked_steps is not None else settings.default_steps,
            mode=self.mode(body.mode),
            seed=body.seed,
            sampler=body.sampler,
            schedule=body.schedule,
            cfg_scale=body.cfg_scale,
            n=body.n,
            limits=limits,
        )
        config = load_config(settings.models_path, body.model or settings.default_model)
        if asked_steps is None and config.step is not None:
            request = replace(request, steps=config.step)
            check_limits(request, limits)
        return self.admit(request, config), config

    def admit(self, request: GenerationRequest, config: ModelConfig) -> GenerationRequest:
        """The request with its decoder tiling, if its estimated peak memory fits the budget (else 400)."""
        if self.memory_budget is None:
            return request
        settings = self.settings
        setup = memory.setup_for(
            request, low_memory=settings.low_memory, threads=settings.threads, backend=config.backend
        )
        return memory.admit(request, self.memory_budget, setup)

    def mode(self, mode: int | None) -> int:
        """LocalAI's ``mode``: 0 is plain convolution, any other integer winograd+sgemm (its docs use 2)."""
        if mode is None:
            return self.settings.default_mode
        if mode < 0:
            raise InvalidRequest(
                f"mode {mode} must be 0 (low memory) or a positive integer (faster)", param="mode"
            )
        return 1 if mode else 0
