"""ncnn itself: options, loading a checked .param with its weights, and running extractions. The ONLY module
that imports ncnn.

Everything here is numpy in, numpy out: :class:`NcnnModel` takes named float32 arrays, copies them into ncnn
Mats it owns, and returns copies of the outputs, so the SD nets in ``nets.py`` never touch ncnn types.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ncnn
import numpy as np

from localai_sd.errors import AssetError, OutOfMemory
from localai_sd.pipeline.netspec import NCNN_OUT_OF_MEMORY, NetOptions, WeightReader, Weights
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


def owned_mat(array: np.ndarray) -> ncnn.Mat:
    """An ncnn Mat holding its own copy of a C-contiguous float32 array; an empty (0, w) array is a w x 0 Mat.

    ncnn.Mat(ndarray) borrows the array's memory without a refcount; ncnn (light mode) dereferences the
    refcount of an input blob consumed by an in-place layer, which segfaults on a borrowed Mat. ``array``
    must stay alive during the clone, which the caller's reference guarantees.
    """
    if array.size == 0:
        return ncnn.Mat(int(array.shape[-1]), 0)
    return ncnn.Mat(np.ascontiguousarray(array, dtype=np.float32)).clone()


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
        self, extractor: ncnn.Extractor, feeds: Mapping[str, np.ndarray], outputs: tuple[str, ...]
    ) -> list[np.ndarray]:
        """Feed the arrays (as owned Mats) and extract ``outputs`` as numpy copies."""
        try:
            mats = {
                blob: owned_mat(array) for blob, array in feeds.items()
            }  # alive until the extraction ends
            for blob, mat in mats.items():
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

    def _run(self, feeds: Mapping[str, np.ndarray], outputs: tuple[str, ...]) -> list[np.ndarray]:
        """One extraction with all of the net's threads, timed."""
        start = time.perf_counter()
        try:
            return self._extract(self._extractor(), feeds, outputs)
        finally:
            self.ncnn_seconds += time.perf_counter() - start
            self.runs += 1

    def _run_concurrently(
        self, jobs: list[dict[str, np.ndarray]], outputs: tuple[str, ...]
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
