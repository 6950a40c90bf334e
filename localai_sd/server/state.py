"""Everything one server instance owns: settings, image store, warm models, queues, gallery."""

from __future__ import annotations

from dataclasses import dataclass, field

from localai_sd import intake
from localai_sd.errors import InvalidRequest, LocalAISDError, ModelConfigError
from localai_sd.jobs.backend import JobBackend
from localai_sd.models import ModelConfig, load_config
from localai_sd.pipeline import memory
from localai_sd.pipeline.assets import AssetSet
from localai_sd.pipeline.img2img import EditSpec, prepare_edit
from localai_sd.pipeline.pipeline import GeneratedImage
from localai_sd.pipeline.request import GenerationRequest, Limits
from localai_sd.server.gallery_ops import GalleryOps
from localai_sd.server.images import ImageStore
from localai_sd.server.jobs import GenerationJob, GenerationQueue, InstallJobs
from localai_sd.server.models_cache import ModelCache
from localai_sd.server.schemas import ExtensionFields
from localai_sd.settings import Settings


@dataclass(frozen=True)
class Prepared:
    """A request ready to queue: the admitted request, its model, its edit (if any) and notes for the client."""

    request: GenerationRequest
    config: ModelConfig
    edit: EditSpec | None = None
    warnings: tuple[str, ...] = ()

    def job(self) -> GenerationJob:
        """The queue job for this request."""
        return GenerationJob(self.config, self.request, edit=self.edit)


@dataclass
class ServerState:
    """The per-app objects; built by ``create_app``, started and stopped by its lifespan."""

    settings: Settings
    images: ImageStore
    models: ModelCache
    gallery: GalleryOps
    installs: InstallJobs = field(default_factory=InstallJobs)
    queue: GenerationQueue = field(init=False)
    #: What runs generations: the local queue, or a cluster backend (``redis_url`` set).
    backend: JobBackend = field(init=False)
    ready: bool = False
    #: Peak memory a request may need, in bytes: the setting, or derived from the machine's RAM here, at
    #: startup (None when neither is known: no memory check, and ``mode: auto`` is fast).
    memory_budget: int | None = field(init=False)

    def __post_init__(self) -> None:
        """Create the generation queue bound to this state's runner; settle the memory budget."""
        self.memory_budget = memory.resolve_budget(self.settings.max_memory_bytes)
        self.queue = GenerationQueue(
            self.run_job, workers=self.settings.workers, max_waiting=self.settings.queue_size
        )
        self.backend = self.queue if self.settings.redis_url is None else cluster_backend(self.settings)

    def run_job(self, job: GenerationJob) -> list[GeneratedImage]:
        """Worker-thread body: lease the warm pipeline and generate, reporting steps and polling cancel."""
        with self.models.lease(job.config) as pipeline:
            if job.edit is None:  # test pipelines need not take ``edit``
                return pipeline.generate(job.request, on_step=job.on_step, should_cancel=job.cancelled)
            return pipeline.generate(
                job.request, on_step=job.on_step, should_cancel=job.cancelled, edit=job.edit
            )

    def prepare(self, body: ExtensionFields) -> tuple[GenerationRequest, ModelConfig]:
        """A JSON body's txt2img request and its model (see ``prepare_request``)."""
        prepared = self.prepare_request(raw_request(body), body.model)
        return prepared.request, prepared.config

    def prepare_request(
        self, raw: intake.RawRequest, model: str | None, edit: EditSpec | None = None
    ) -> Prepared:
        """Find the model (404), build the request through the intake (400s), check the edit against the
        request's size (400s: e.g. a mask selecting nothing), then admit it by memory (400)."""
        settings = self.settings
        config = load_config(settings.models_path, model or settings.default_model)
        image_size = None if edit is None else edit.image.size
        request = intake.build_request(
            raw,
            config=config,
            limits=Limits.from_settings(settings),
            default_mode=settings.default_mode,
            image_size=image_size,
        )
        warnings: tuple[str, ...] = ()
        if edit is not None:
            check_can_edit(config)
            warnings = prepare_edit(edit, request.width, request.height).warnings
        return Prepared(self.admit(request, config), config, edit, warnings)

    def warm_default_model(self) -> str:
        """Load the nets the default model's default request needs (UNet and decoder at its size and mode),
        so the first request pays no load; what was done, for the log."""
        try:
            prepared = self.prepare_request(intake.RawRequest(prompt=""), None)
        except LocalAISDError as exc:
            return f"not warming the default model: {exc}"
        request = prepared.request
        with self.models.lease(prepared.config) as pipeline:
            warm = getattr(pipeline, "warm", None)  # test pipelines may have none
            if warm is not None:
                warm(request.width, request.height, request.mode)
        return f"warmed {prepared.config.name!r} at {request.size}, mode {request.mode_label}"

    def admit(self, request: GenerationRequest, config: ModelConfig) -> GenerationRequest:
        """Resolve ``mode: auto`` and set the decoder tiling if the estimated peak fits the budget (else 400)."""
        settings = self.settings
        return intake.admit_for(
            request,
            self.memory_budget,
            low_memory=settings.low_memory,
            threads=settings.threads,
            backend=config.backend,
        )


def cluster_backend(settings: Settings) -> JobBackend:
    """The RQ backend (imported only when a Redis URL is set: ``rq`` is the optional ``cluster`` extra)."""
    try:
        from localai_sd.jobs.rq_backend import RQBackend
    except ImportError as exc:
        raise ModelConfigError(
            f"a Redis URL is set but the cluster extra is missing ({exc}): pip install 'localai-sd[cluster]'",
            code="cluster_not_installed",
        ) from None
    return RQBackend(settings)


def raw_request(body: ExtensionFields, prompt: str | None = None) -> intake.RawRequest:
    """The intake's raw values of a body or form (``prompt`` overrides the body's; ``step`` or ``steps``)."""
    text = prompt if prompt is not None else getattr(body, "prompt", None) or ""
    return intake.raw_from(body, text, step=body.step_count())


def check_can_edit(config: ModelConfig) -> None:
    """InvalidRequest (param ``model``) unless the model ships the VAE encoder edits need."""
    if not AssetSet.from_dir(config.asset_dir, config.backend).has_encoder:
        raise InvalidRequest(
            f"model {config.name!r} cannot edit images: its assets have no VAE encoder "
            "(AutoencoderKL-encoder-512-512-fp16.param/.bin)",
            param="model",
            code="model_cannot_edit",
        )
