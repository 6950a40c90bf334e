"""The files of one model's asset directory, per backend, and the .param text for a given image size.

File names follow the LocalAI gallery entries (``stablediffusion.yaml``: EdVince Stable-Diffusion-NCNN x86
assets; ``tinydream.yaml``: symisc tiny-dream bins). The directory may be read-only: nothing is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from localai_sd.errors import AssetError, ModelConfigError
from localai_sd.pipeline import params
from localai_sd.pipeline.param_check import sd_blob_shapes
from localai_sd.pipeline.param_hints import add_shape_hints

Backend = Literal["stablediffusion", "tinydream"]
NetName = Literal["text_encoder", "unet", "vae_decoder", "vae_encoder"]

BACKENDS: tuple[str, ...] = ("stablediffusion", "tinydream")
NETS: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
#: Sizes with a pre-shaped ``-opt`` param in the stablediffusion set.
OPT_SIZES = ((256, 256), (512, 512))


@dataclass(frozen=True)
class NetFiles:
    """Where one net's graph and weights live; ``opt_param`` takes ``{w}``/``{h}``, None if there is none."""

    base_param: str
    weights: str
    layout: params.ReshapeLayout | None
    opt_param: str | None = None


#: EdVince x86 asset names (LocalAI gallery ``stablediffusion.yaml``).
STABLEDIFFUSION_NETS: dict[str, NetFiles] = {
    "text_encoder": NetFiles("FrozenCLIPEmbedder-fp16.param", "FrozenCLIPEmbedder-fp16.bin", None),
    "unet": NetFiles(
        "UNetModel-base-MHA-fp16.param",
        "UNetModel-MHA-fp16.bin",
        params.UNET_LAYOUT,
        "UNetModel-{w}-{h}-MHA-fp16-opt.param",
    ),
    "vae_decoder": NetFiles(
        "AutoencoderKL-base-fp16.param",
        "AutoencoderKL-fp16.bin",
        params.VAE_LAYOUT,
        "AutoencoderKL-{w}-{h}-fp16-opt.param",
    ),
    # The encoder param is exported at 512x512 without shape hints: it is its own base param.
    "vae_encoder": NetFiles(
        "AutoencoderKL-encoder-512-512-fp16.param",
        "AutoencoderKL-encoder-512-512-fp16.bin",
        params.VAE_LAYOUT,
    ),
}

#: tiny-dream names (LocalAI gallery ``tinydream.yaml``): base params only, no log_sigmas.bin, no encoder.
TINYDREAM_NETS: dict[str, NetFiles] = {
    "text_encoder": NetFiles("FrozenCLIPEmbedder-fp16.param", "FrozenCLIPEmbedder-fp16.bin", None),
    "unet": NetFiles("UNetModel-fp16.param", "UNetModel-fp16.bin", params.UNET_LAYOUT),
    "vae_decoder": NetFiles("AutoencoderKL-fp16.param", "AutoencoderKL-fp16.bin", params.VAE_LAYOUT),
}

VOCAB = "vocab.txt"
LOG_SIGMAS = "log_sigmas.bin"


def _backend_nets(backend: str) -> dict[str, NetFiles]:
    """The net table of a backend; ModelConfigError for an unknown backend."""
    if backend == "stablediffusion":
        return STABLEDIFFUSION_NETS
    if backend == "tinydream":
        return TINYDREAM_NETS
    raise ModelConfigError(f"backend {backend!r} is not supported: use one of {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class AssetSet:
    """One model's asset directory for a backend: file paths, checks and size-specific .param text."""

    root: Path
    backend: str

    @classmethod
    def from_dir(cls, path: str | Path, backend: str = "stablediffusion") -> AssetSet:
        """Describe the asset dir ``path``; ModelConfigError if it is not a directory or the backend is unknown."""
        _backend_nets(backend)
        root = Path(path)
        if not root.is_dir():
            raise ModelConfigError(f"asset directory {str(root)!r} does not exist or is not a directory")
        return cls(root=root, backend=backend)

    @property
    def nets(self) -> dict[str, NetFiles]:
        """The net table of this backend."""
        return _backend_nets(self.backend)

    def _net(self, net: str) -> NetFiles:
        """The files of ``net``; AssetError if this backend has no such net."""
        if net not in self.nets:
            raise AssetError(f"backend {self.backend!r} has no {net} net (nets: {', '.join(self.nets)})")
        return self.nets[net]

    def required_files(self) -> list[str]:
        """Relative names of every file the txt2img pipeline needs."""
        names = [f for net in ("text_encoder", "unet", "vae_decoder") for f in self._required_of(net)]
        names.append(VOCAB)
        if self.backend == "stablediffusion":
            names.append(LOG_SIGMAS)
        return names

    def _required_of(self, net: str) -> list[str]:
        """Base param, weights and (stablediffusion) the 256/512 opt params of ``net``."""
        files = self._net(net)
        names = [files.base_param, files.weights]
        if files.opt_param:
            names += [files.opt_param.format(w=w, h=h) for w, h in OPT_SIZES]
        return names

    def check(self) -> None:
        """Raise ModelConfigError if the dir is gone, AssetError naming every missing required file."""
        if not self.root.is_dir():
            raise ModelConfigError(f"asset directory {str(self.root)!r} does not exist or is not a directory")
        missing = [name for name in self.required_files() if not (self.root / name).is_file()]
        if missing:
            raise AssetError(
                f"asset directory {str(self.root)!r} is missing required file(s): {', '.join(missing)}"
            )

    @property
    def has_encoder(self) -> bool:
        """True when the optional img2img VAE encoder param and weights are both present."""
        files = self.nets.get("vae_encoder")
        return files is not None and all((self.root / n).is_file() for n in (files.base_param, files.weights))

    def weights_path(self, net: str) -> Path:
        """Path of ``net``'s .bin weights."""
        return self.root / self._net(net).weights

    def base_param_path(self, net: str) -> Path:
        """Path of ``net``'s base (any-size) .param."""
        return self.root / self._net(net).base_param

    def opt_param_path(self, net: str, width: int, height: int) -> Path | None:
        """Path of ``net``'s pre-shaped param for width x height if the backend has one there, else None."""
        files = self._net(net)
        if files.opt_param is None or (width, height) not in OPT_SIZES:
            return None
        path = self.root / files.opt_param.format(w=width, h=height)
        return path if path.is_file() else None

    def param_path(self, net: str, width: int = 512, height: int = 512) -> Path:
        """The .param file ``param_text`` reads for this size: the -opt param if any, else the base."""
        return self.opt_param_path(net, width, height) or self.base_param_path(net)

    @property
    def vocab_path(self) -> Path:
        """Path of the CLIP BPE vocab.txt."""
        return self.root / VOCAB

    @property
    def log_sigmas_path(self) -> Path | None:
        """Path of log_sigmas.bin (1000 float32), or None for backends without it (compute the sigmas)."""
        return self.root / LOG_SIGMAS if self.backend == "stablediffusion" else None

    def param_text(self, net: str, width: int = 512, height: int = 512) -> str:
        """The .param text of ``net`` for a width x height image: the -opt param if any, else the rewritten base."""
        files = self._net(net)
        if files.layout is None:
            return read_text(self.root / files.base_param)
        params.check_size(width, height)
        opt = self.opt_param_path(net, width, height)
        if opt is not None:
            return read_text(opt)
        base = self.root / files.base_param
        text = params.rewrite_param(read_text(base), width, height, files.layout, name=base.name)
        return add_shape_hints(text, hint_shapes(net, width, height), name=base.name)


#: The text context the hints assume: one 77-token chunk (EdVince's opt params hint the same).
HINT_CONTEXT_ROWS = 77


def hint_shapes(net: str, width: int, height: int) -> dict:
    """The I/O shapes of ``net`` with unknown extents fixed for shape hints (a one-chunk context)."""
    return {
        blob: tuple(HINT_CONTEXT_ROWS if v is None else v for v in shape)
        for blob, shape in sd_blob_shapes(net, width, height).items()
    }


def read_text(path: Path) -> str:
    """Read a text asset; AssetError naming the file if it is missing or not UTF-8 text."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise AssetError(f"asset file {path.name!r} is missing from {str(path.parent)!r}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise AssetError(f"asset file {path.name!r} cannot be read as text: {err}") from err
