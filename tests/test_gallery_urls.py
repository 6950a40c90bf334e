"""URL resolution and mirror rewriting of gallery URLs (LocalAI's forms, REFERENCE.md §2.1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from localai_sd.errors import GalleryError
from localai_sd.gallery.urls import apply_mirrors, looks_like_url, resolve_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "github:go-skynet/model-gallery/stablediffusion.yaml",
            "https://raw.githubusercontent.com/go-skynet/model-gallery/main/stablediffusion.yaml",
        ),
        (
            "github:go-skynet/model-gallery/stablediffusion.yaml@dev",
            "https://raw.githubusercontent.com/go-skynet/model-gallery/dev/stablediffusion.yaml",
        ),
        (
            "github://mudler/LocalAI/gallery/index.yaml@master",
            "https://raw.githubusercontent.com/mudler/LocalAI/master/gallery/index.yaml",
        ),
        ("github:o/r/a:b/c.yaml", "https://raw.githubusercontent.com/o/r/main/a:b/c.yaml"),
        (
            "huggingface://owner/repo/sub/dir/file.bin",
            "https://huggingface.co/owner/repo/resolve/main/sub/dir/file.bin",
        ),
        (
            "huggingface://owner/repo/sub/file.bin@v2",
            "https://huggingface.co/owner/repo/resolve/v2/sub/file.bin",
        ),
        ("https://example.com/a/b.yaml?x=1", "https://example.com/a/b.yaml?x=1"),
        ("http://127.0.0.1:9/a.yaml", "http://127.0.0.1:9/a.yaml"),
        (
            "https://github.com/o/r/blob/main/dir/x.yaml",
            "https://raw.githubusercontent.com/o/r/main/dir/x.yaml",
        ),
    ],
)
def test_remote_forms_resolve(url: str, expected: str) -> None:
    source = resolve_url(url)
    assert source.url == expected
    assert not source.is_local


def test_local_forms_resolve_to_paths(tmp_path: Path) -> None:
    assert resolve_url(f"file://{tmp_path}/a%20b.yaml").path == tmp_path / "a b.yaml"
    assert resolve_url(str(tmp_path / "x.yaml")).path == tmp_path / "x.yaml"
    assert resolve_url("relative/x.yaml").path == Path("relative/x.yaml")


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x.yaml",
        "s3://bucket/x",
        "github:owner/repo",
        "github:owner//file.yaml",
        "github:o/r/../x.yaml",
        "github:o/r/x.yaml@",
        "huggingface://owner/repo",
        "file://otherhost/x.yaml",
        "https:///nohost",
        "",
    ],
)
def test_bad_forms_are_gallery_errors(url: str) -> None:
    with pytest.raises(GalleryError):
        resolve_url(url)


def test_mirror_rewrites_resolved_prefix() -> None:
    mirrors = (("https://raw.githubusercontent.com/", "http://127.0.0.1:1/raw/"),)
    source = resolve_url("github:o/r/x.yaml@b", mirrors)
    assert source.url == "http://127.0.0.1:1/raw/o/r/b/x.yaml"
    assert apply_mirrors("https://other.example/x", mirrors) == "https://other.example/x"


def test_first_matching_mirror_wins() -> None:
    mirrors = (("https://github.com/a/", "http://m1/"), ("https://github.com/", "http://m2/"))
    assert apply_mirrors("https://github.com/a/x", mirrors) == "http://m1/x"
    assert apply_mirrors("https://github.com/b/x", mirrors) == "http://m2/b/x"


@pytest.mark.parametrize(
    ("text", "is_url"),
    [
        ("stablediffusion", False),
        ("model-gallery@stablediffusion", False),
        ("github:o/r/x.yaml", True),
        ("./x.yaml", True),
        ("x.yaml", True),
        ("http://h/x", True),
    ],
)
def test_looks_like_url(text: str, is_url: bool) -> None:
    assert looks_like_url(text) is is_url
