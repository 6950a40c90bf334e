"""The four SD1 ncnn nets behind numpy in / numpy out wrappers: the ONLY module that imports ncnn.

Blob names and I/O contracts follow the EdVince Stable-Diffusion-NCNN x86 .param files (see the project's
DESIGN notes): CLIP ``token``/``multiplier``/``cond`` -> ``conds``; UNet ``in0``..``c_out`` -> ``outout``
(already the denoised latent); VAE decoder ``input.1`` -> ``815``; VAE encoder ``in0`` -> ``out0``/``out1``.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import ncnn
import numpy as np

from localai_sd.errors import AssetError, Cancelled, InvalidRequest, OutOfMemory
from localai_sd.pipeline.deepcache import find_deep_feature
from localai_sd.pipeline.netspec import (
    CONTEXT_LENGTH,
    EMBED_DIM,
    LATENT_CHANNELS,
    NCNN_OUT_OF_MEMORY,
    VAE_SCALE,
    VAE_SCALING,
    NetOptions,
    WeightReader,
    Weights,
    decoder_options,
    default_threads,
    unet_options,
)
from localai_sd.pipeline.param_check import check_param, sd_blob_shapes
from localai_sd.pipeline.param_shapes import Shape

_capsule_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_capsule_pointer.restype = ctypes.c_void_p
_capsule_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]


def apply_options(options: NetOptions, opt: ncnn.Option) -> None:
    """Copy our options onto an ncnn Option."""
    opt.use_vulkan_compute = False
    opt.num_threads = options.threads
    opt.lightmode = options.light_mode
    opt.use_winograd_convolution = options.winograd
    opt.use_sgemm_convolution = options.sgemm
    opt.use_winograd63_convolution = options.winograd63
    opt.use_winograd43_convolution = options.winograd43
    opt.use_winograd23_convolution = options.winograd23
    opt.use_fp16_packed = options.fp16
    opt.use_fp16_storage = options.fp16
    opt.use_fp16_arithmetic = options.fp16
    opt.use_bf16_storage = options.bf16_storage
    opt.use_packing_layout = True


class _ReaderAdapter(ncnn.DataReader):
    """ncnn's DataReader over a WeightReader: ``read(buf, size)`` receives a PyCapsule holding the address."""

    def __init__(self, reader: WeightReader):
        super().__init__()
        self.reader = reader

    def read(self, buf: object, size: int) -> int:
        address = _capsule_pointer(buf, None)
        self.reader.read_into(memoryview((ctypes.c_char * size).from_address(address)).cast("B"))
        return size


def _check(ret: int, message: str) -> None:
    """Raise AssetError(message) when an ncnn call returned non-zero."""
    if ret != 0:
        raise AssetError(f"{message} (ncnn returned {ret})")


def load_net(
    param_text: str,
    param_name: str,
    weights: Weights,
    options: NetOptions,
    blob_shapes: Mapping[str, Shape] | None = None,
) -> ncnn.Net:
    """Build an ncnn Net from .param text (in memory) and a .bin path or a weight reader.

    The text is checked first (:func:`param_check.check_param`, against the I/O ``blob_shapes`` when given),
    so a malformed .param is an AssetError naming the file and line instead of a crash inside ncnn.
    """
    check_param(param_text, param_name, blob_shapes)
    net = ncnn.Net()
    apply_options(options, net.opt)
    _check(net.load_param_mem(param_text), f"asset file {param_name!r} is not a valid ncnn .param")
    if not isinstance(weights, Path):
        _check(net.load_model(_ReaderAdapter(weights)), f"the weight reader does not fit {param_name!r}")
        return net
    if not weights.is_file():
        raise AssetError(f"asset file {weights.name!r} is missing from {str(weights.parent)!r}")
    ret = net.load_model(str(weights))
    if ret != 0:
        net.clear()
        raise AssetError(
            f"asset file {weights.name!r} is truncated or corrupt (ncnn load_model returned {ret})"
        )
    return net


def stream_weights(param_text: str, reader: WeightReader, name: str = "param") -> None:
    """Load ``param_text`` with plain fp32 options and feed its weights from ``reader`` (the .bin layout)."""
    net = ncnn.Net()
    apply_options(NetOptions(threads=1, winograd=False, sgemm=False, fp16=False), net.opt)
    net.opt.use_packing_layout = False
    try:
        _check(net.load_param_mem(param_text), f"{name}: ncnn cannot parse this .param")
        _check(net.load_model(_ReaderAdapter(reader)), f"{name}: ncnn cannot load weights for this .param")
    finally:
        net.clear()


def _as_float32(array: np.ndarray) -> np.ndarray:
    """A C-contiguous float32 copy/view of ``array`` (what ncnn.Mat(ndarray) needs)."""
    return np.ascontiguousarray(array, dtype=np.float32)


def _owned_mat(array: np.ndarray) -> ncnn.Mat:
    """An ncnn Mat holding its own copy of a C-contiguous float32 array.

    ncnn.Mat(ndarray) borrows the array's memory without a refcount; ncnn (light mode) dereferences the
    refcount of an input blob consumed by an in-place layer, which segfaults on a borrowed Mat. ``array``
    must stay alive during the clone, which the caller's reference guarantees.
    """
    return ncnn.Mat(array).clone()


class NcnnModel:
    """One loaded ncnn net: runs extractions, counts time inside ncnn, can be released with close()."""

    #: Blob names this net must have (checked at load).
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    #: Which SD1 net this is (the asset set's name for it).
    net_name = ""

    def __init__(self, net: ncnn.Net, name: str, options: NetOptions):
        self._net: ncnn.Net | None = net
        self.name = name
        self.options = options
        self.ncnn_seconds = 0.0
        self.runs = 0
        #: This net's own blob and workspace pools, so release_memory() can hand them back to the OS.
        self._pools = (ncnn.PoolAllocator(), ncnn.PoolAllocator())
        self._check_blobs()

    @classmethod
    def _from_text(
        cls, param_text: str, param_name: str, weights: Weights, options: NetOptions, width: int, height: int
    ):  # -> Self
        """Check and load ``param_text`` for a width x height image, then wrap the net."""
        shapes = sd_blob_shapes(cls.net_name, width, height)
        return cls(load_net(param_text, param_name, weights, options, shapes), param_name, options)

    def _check_blobs(self) -> None:
        """AssetError naming the param if a blob of the I/O contract is absent."""
        names = {blob.name for blob in self._require().blobs()}
        missing = [b for b in (*self.inputs, *self.outputs) if b not in names]
        if missing:
            self.close()
            raise AssetError(f"asset file {self.name!r} lacks blob(s) {', '.join(missing)} of the net's I/O")

    def _require(self) -> ncnn.Net:
        """The live ncnn Net; RuntimeError after close()."""
        if self._net is None:
            raise RuntimeError(f"net {self.name!r} was closed")
        return self._net

    def _extractor(self) -> ncnn.Extractor:
        """A fresh extractor on this net's pools (it runs on the thread count the net was loaded with)."""
        extractor = self._require().create_extractor()
        extractor.set_blob_allocator(self._pools[0])
        extractor.set_workspace_allocator(self._pools[1])
        return extractor

    def _extract(
        self, extractor: ncnn.Extractor, feeds: dict[str, ncnn.Mat], outputs: tuple[str, ...]
    ) -> list[np.ndarray]:
        """Feed Mats and extract ``outputs`` as numpy copies; caller keeps the backing arrays alive."""
        try:
            for blob, mat in feeds.items():
                _check(extractor.input(blob, mat), f"{self.name}: cannot set input {blob!r}")
            results = []
            for blob in outputs:
                ret, mat = extractor.extract(blob)
                if ret == NCNN_OUT_OF_MEMORY:
                    raise OutOfMemory(self.out_of_memory_message())
                if ret != 0:
                    raise AssetError(f"{self.name}: ncnn failed to compute {blob!r} (returned {ret})")
                results.append(np.array(mat, dtype=np.float32, copy=True))
            return results
        finally:
            extractor.clear()  # hand every blob back to the pools, also after a failure

    def out_of_memory_message(self) -> str:
        """What ran out of memory, at what size and convolution mode, and what to try."""
        width, height = getattr(self, "width", 0), getattr(self, "height", 0)
        size = f" at {width}x{height}" if width else ""
        mode = "mode 1 (winograd/sgemm)" if self.options.winograd else "mode 0 (plain convolution)"
        return (
            f"ran out of memory running the {self.net_name.replace('_', ' ')}{size} in {mode}; "
            "try a smaller size, --mode 0, or --low-memory"
        )

    def _run(self, feeds: dict[str, ncnn.Mat], outputs: tuple[str, ...]) -> list[np.ndarray]:
        """One extraction with all of the net's threads, timed."""
        start = time.perf_counter()
        try:
            return self._extract(self._extractor(), feeds, outputs)
        finally:
            self.ncnn_seconds += time.perf_counter() - start
            self.runs += 1

    def _run_concurrently(
        self, jobs: list[dict[str, ncnn.Mat]], outputs: tuple[str, ...]
    ) -> list[list[np.ndarray]]:
        """Several extractions at once over the shared weights, each on the net's own thread count.

        ncnn releases the GIL while it computes, so each job runs on its own cores with no OpenMP barriers
        between the jobs; the pools are thread-safe. Results equal running the jobs one after another.
        (ncnn's gemm and winograd layers split their work by the thread count given at load time, so a net
        meant for this is loaded with its share of the cores, not all of them.)
        """
        start = time.perf_counter()
        try:
            extractors = [self._extractor() for _ in jobs]
            with ThreadPoolExecutor(len(jobs), thread_name_prefix=f"ncnn-{self.net_name}") as pool:
                futures = [
                    pool.submit(self._extract, extractor, feeds, outputs)
                    for extractor, feeds in zip(extractors, jobs, strict=True)
                ]
                return [future.result() for future in futures]
        finally:
            self.ncnn_seconds += time.perf_counter() - start
            self.runs += len(jobs)

    def release_memory(self) -> None:
        """Free the pooled activations and workspace of past runs (weights stay; the next run re-allocates)."""
        for pool in self._pools:
            pool.clear()

    def close(self) -> None:
        """Release the net's weights and memory; the object is unusable afterwards."""
        if self._net is not None:
            self._net.clear()
            self._net = None
            self.release_memory()


def _scalar(value: float) -> np.ndarray:
    """A 1-element float32 array for ncnn scalar inputs (t, c_in, c_out)."""
    return np.array([value], dtype=np.float32)


def _output(array: np.ndarray, shape: tuple[int, ...], net: str) -> np.ndarray:
    """A net's output reshaped to the contract's shape; AssetError naming the net if its size differs."""
    if array.size != int(np.prod(shape)):
        raise AssetError(
            f"{net}: the output has {array.size} values where {shape} was expected; the .param is wrong"
        )
    return array.reshape(shape)


def _check_shape(array: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    """InvalidRequest naming ``what`` unless ``array`` has exactly ``shape``."""
    if tuple(array.shape) != shape:
        raise InvalidRequest(f"{what} has shape {tuple(array.shape)}; this net expects {shape}")


class TextEncoder(NcnnModel):
    """FrozenCLIPEmbedder: 77 tokens + multipliers, appended after previous chunks -> (77k, 768) conds."""

    inputs = ("token", "multiplier", "cond")
    outputs = ("conds",)
    net_name = "text_encoder"

    @classmethod
    def load(
        cls, param_text: str, param_name: str, weights: Weights, *, threads: int | None = None
    ) -> TextEncoder:
        """Load the text encoder (the CLIP graph does not depend on the image size)."""
        return cls._from_text(
            param_text, param_name, weights, NetOptions(threads=threads or default_threads()), 512, 512
        )

    def __call__(
        self, tokens: np.ndarray, multipliers: np.ndarray, cond: np.ndarray | None = None
    ) -> np.ndarray:
        """Encode one 77-token chunk and return ``cond`` (previous chunks) with it appended."""
        token_ids = np.ascontiguousarray(tokens, dtype=np.int32)
        weights = _as_float32(multipliers)
        _check_shape(token_ids, (CONTEXT_LENGTH,), "tokens")
        _check_shape(weights, (CONTEXT_LENGTH,), "multipliers")
        previous = None if cond is None else _as_float32(cond)
        if previous is not None and (previous.ndim != 2 or previous.shape[1] != EMBED_DIM):
            raise InvalidRequest(f"cond has shape {previous.shape}; expected (77*k, {EMBED_DIM})")
        feeds = {
            "token": _owned_mat(token_ids.view(np.float32)),  # Embed reads the raw int32 bits
            "multiplier": _owned_mat(weights),
            "cond": ncnn.Mat(EMBED_DIM, 0) if previous is None else _owned_mat(previous),
        }
        (conds,) = self._run(feeds, self.outputs)
        return conds.reshape(-1, EMBED_DIM)

    def encode(
        self, chunks: list[tuple[np.ndarray, np.ndarray]], should_cancel: Callable[[], bool] | None = None
    ) -> np.ndarray:
        """Encode (tokens, multipliers) chunks in order into one (77*len(chunks), 768) array.

        ``should_cancel`` is asked before each chunk; when it answers True, Cancelled is raised.
        """
        cond = None
        for tokens, multipliers in chunks:
            if should_cancel is not None and should_cancel():
                raise Cancelled("prompt encoding was cancelled")
            cond = self(tokens, multipliers, cond)
        if cond is None:
            raise InvalidRequest("no prompt chunks to encode: at least one 77-token chunk is required")
        return cond


class _Sized(NcnnModel):
    """A net built for one image size."""

    width = 0
    height = 0

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(4, height/8, width/8)."""
        return (LATENT_CHANNELS, self.height // VAE_SCALE, self.width // VAE_SCALE)

    @classmethod
    def _sized(
        cls, param_text: str, param_name: str, weights: Weights, options: NetOptions, width: int, height: int
    ):  # -> Self
        """Load the net for width x height and remember the size."""
        model = cls._from_text(param_text, param_name, weights, options, width, height)
        model.width, model.height = width, height
        return model


class UNet(_Sized):
    """UNetModel: (latent, t, cond, c_in, c_out) -> denoised latent ``x + c_out * eps``."""

    inputs = ("in0", "in1", "in2", "c_in", "c_out")
    outputs = ("outout",)
    net_name = "unet"
    #: How many evaluations :meth:`pair` runs at once (2 when loaded with ``concurrent_pairs``).
    lanes = 1
    #: DeepCache's deep feature: the blob the last skip Concat takes first (None: no such Concat).
    deep_feature: str | None = None

    @classmethod
    def load(
        cls,
        param_text: str,
        param_name: str,
        weights: Weights,
        width: int,
        height: int,
        *,
        mode: int = 0,
        threads: int | None = None,
        concurrent_pairs: bool = False,
    ) -> UNet:
        """Load the UNet for a width x height image with the LocalAI ``mode`` options.

        ``concurrent_pairs`` loads it on half the threads so that :meth:`pair` runs cond and uncond side by
        side (single calls then use half the cores); it has no effect with fewer than 2 threads.
        """
        options = unet_options(mode, threads)
        lanes = 2 if concurrent_pairs and options.threads >= 2 else 1
        options = replace(options, threads=options.threads // lanes)
        model = cls._sized(param_text, param_name, weights, options, width, height)
        model.lanes = lanes
        model.deep_feature = find_deep_feature(param_text)
        return model

    def _feeds(
        self, latent: np.ndarray, t: float, cond: np.ndarray, c_in: float, c_out: float
    ) -> dict[str, ncnn.Mat]:
        """Checked input Mats for one evaluation (each owns its data)."""
        x = _as_float32(latent)
        _check_shape(x, self.latent_shape, "latent")
        context = _as_float32(cond)
        if context.ndim != 2 or context.shape[1] != EMBED_DIM or context.shape[0] % CONTEXT_LENGTH:
            raise InvalidRequest(f"cond has shape {context.shape}; expected (77*k, {EMBED_DIM})")
        return {
            "in0": _owned_mat(x),
            "in1": _owned_mat(_scalar(t)),
            "in2": _owned_mat(context),
            "c_in": _owned_mat(_scalar(c_in)),
            "c_out": _owned_mat(_scalar(c_out)),
        }

    def __call__(
        self, latent: np.ndarray, t: float, cond: np.ndarray, c_in: float, c_out: float
    ) -> np.ndarray:
        """One UNet evaluation; returns the denoised latent (4, h, w)."""
        (denoised,) = self._run(self._feeds(latent, t, cond, c_in, c_out), self.outputs)
        return _output(denoised, self.latent_shape, self.name)

    def pair(
        self, latent: np.ndarray, t: float, cond: np.ndarray, uncond: np.ndarray, c_in: float, c_out: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """The cond and uncond evaluations of one guided step: side by side when loaded for it, else in turn.

        Same results as two calls; side by side was measured faster at 2 threads (no OpenMP barriers between
        the cores; benchmarks/RESULTS.md) at the cost of a second set of activations.
        """
        jobs = [self._feeds(latent, t, c, c_in, c_out) for c in (cond, uncond)]
        if self.lanes < 2:
            cond_d, uncond_d = [self._run(feeds, self.outputs)[0] for feeds in jobs]
        else:
            (cond_d,), (uncond_d,) = self._run_concurrently(jobs, self.outputs)
        return _output(cond_d, self.latent_shape, self.name), _output(uncond_d, self.latent_shape, self.name)

    def evaluate(
        self,
        jobs: list[tuple[np.ndarray, float, np.ndarray, float, float, np.ndarray | None]],
        *,
        keep_feature: bool,
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """DeepCache evaluations: each job is (latent, t, cond, c_in, c_out, cached deep feature or None).

        A job with a feature feeds it as the ``deep_feature`` blob, so ncnn computes only the shallow branch;
        ``keep_feature`` also extracts the feature (before the output: light mode frees it afterwards). Two jobs
        run side by side when the net was loaded for pairs. Returns (denoised, feature or None) per job.
        """
        if self.deep_feature is None:
            raise AssetError(f"{self.name}: the UNet has no skip Concat, so DeepCache cannot run on it")
        feeds = []
        for latent, t, cond, c_in, c_out, feature in jobs:
            job = self._feeds(latent, t, cond, c_in, c_out)
            if feature is not None:
                job[self.deep_feature] = _owned_mat(_as_float32(feature))
            feeds.append(job)
        outputs = (self.deep_feature, *self.outputs) if keep_feature else self.outputs
        if len(feeds) == 2 and self.lanes >= 2:
            results = self._run_concurrently(feeds, outputs)
        else:
            results = [self._run(job, outputs) for job in feeds]
        return [
            (_output(r[-1], self.latent_shape, self.name), r[0] if keep_feature else None) for r in results
        ]


class VAEDecoder(_Sized):
    """AutoencoderKL decoder: latent (4, h, w) -> raw image (3, H, W), about [-1, 1]."""

    inputs = ("input.1",)
    outputs = ("815",)
    net_name = "vae_decoder"

    @classmethod
    def load(
        cls,
        param_text: str,
        param_name: str,
        weights: Weights,
        width: int,
        height: int,
        *,
        threads: int | None = None,
        reference_options: bool = False,
    ) -> VAEDecoder:
        """Load the decoder for a width x height image (winograd on unless reference_options)."""
        options = decoder_options(threads, reference=reference_options)
        return cls._sized(param_text, param_name, weights, options, width, height)

    def __call__(self, latent: np.ndarray) -> np.ndarray:
        """Decode a latent (scaled by 1/0.18215 here) to the raw (3, H, W) float output."""
        x = _as_float32(np.asarray(latent, dtype=np.float32) / VAE_SCALING)
        _check_shape(x, self.latent_shape, "latent")
        (image,) = self._run({"input.1": _owned_mat(x)}, self.outputs)
        return _output(image, (3, self.height, self.width), self.name)


class VAEEncoder(_Sized):
    """AutoencoderKL encoder: image (3, H, W) in [-1, 1] -> (mean, std) latents (4, h, w)."""

    inputs = ("in0",)
    outputs = ("out0", "out1")
    net_name = "vae_encoder"

    @classmethod
    def load(
        cls,
        param_text: str,
        param_name: str,
        weights: Weights,
        width: int,
        height: int,
        *,
        threads: int | None = None,
    ) -> VAEEncoder:
        """Load the img2img encoder for a width x height image."""
        return cls._sized(param_text, param_name, weights, decoder_options(threads), width, height)

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encode a (3, H, W) image scaled to [-1, 1]; returns (mean, std) of the latent distribution."""
        x = _as_float32(image)
        _check_shape(x, (3, self.height, self.width), "image")
        mean, std = self._run({"in0": _owned_mat(x)}, self.outputs)
        return _output(mean, self.latent_shape, self.name), _output(std, self.latent_shape, self.name)
