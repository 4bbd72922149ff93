"""Image routes without an engine: input paths, output files, inline images, request limits."""

from __future__ import annotations

import base64
import io
import os

import pytest
from PIL import Image
from pydantic import ValidationError

from gateway.api.openai.images import _fit
from gateway.http.core import HTTPError
from gateway.media.inputs import decode_inline, open_image, resolve_input_path
from gateway.media.output import ImageStore, default_output_dir
from schemas.images import ImageGenerationRequest, Img2ImgRequest, Txt2ImgRequest
from schemas.manifest import ServerSettings


def png(size=(8, 8), colour=(1, 2, 3)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def tree(tmp_path):
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    (allowed / "sub" / "a.png").write_bytes(png())
    (outside / "secret.png").write_bytes(png())
    (allowed / "link.png").symlink_to(outside / "secret.png")
    (allowed / "dirlink").symlink_to(outside)
    (allowed / "inner.png").symlink_to(allowed / "sub" / "a.png")
    return allowed, outside


def status(call) -> int:
    with pytest.raises(HTTPError) as caught:
        call()
    return caught.value.status


def test_input_paths_resolve_inside_the_allowed_folders(tree):
    allowed, _ = tree
    real = allowed.resolve() / "sub" / "a.png"
    assert resolve_input_path("sub/a.png", [str(allowed)]) == real
    assert resolve_input_path(str(allowed / "sub" / "a.png"), [str(allowed)]) == real
    assert resolve_input_path("inner.png", [str(allowed)]) == real  # a link that stays inside is fine
    assert resolve_input_path("sub/a.png", ["/nonexistent-folder", str(allowed)]) == real


@pytest.mark.parametrize("raw", ["../outside/secret.png", "sub/../../outside/secret.png", "link.png",
                                 "dirlink/secret.png", "/etc/passwd", "{outside}/secret.png"])
def test_traversal_and_symlink_escapes_are_403(tree, raw):
    allowed, outside = tree
    assert status(lambda: resolve_input_path(raw.format(outside=outside), [str(allowed)])) == 403


def test_no_allowed_folders_means_no_paths_and_missing_files_are_400(tree):
    allowed, _ = tree
    assert status(lambda: resolve_input_path("sub/a.png", [])) == 403
    assert status(lambda: resolve_input_path("sub/missing.png", [str(allowed)])) == 400
    assert status(lambda: resolve_input_path("sub", [str(allowed)])) == 400
    assert status(lambda: resolve_input_path("a\x00.png", [str(allowed)])) == 400


def test_output_files_get_unique_names_and_only_those_are_served(tmp_path):
    store = ImageStore(tmp_path / "out")
    names = {store.save(b"png-bytes") for _ in range(5)}
    assert len(names) == 5
    for name in names:
        assert store.path_of(name).read_bytes() == b"png-bytes"
    (tmp_path / "out" / "notes.txt").write_text("private")
    os.symlink(tmp_path / "out" / "notes.txt", tmp_path / "out" / f"img-{'a' * 32}.png")
    for bad in ("notes.txt", "../out/notes.txt", f"img-{'a' * 32}.png", f"img-{'b' * 32}.png", "img-x.png", ".."):
        assert status(lambda: store.path_of(bad)) == 404


def test_default_output_dir_follows_the_nexa_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv("NEXA_CACHE_ROOT", str(tmp_path))
    assert default_output_dir() == tmp_path / "outputs"
    monkeypatch.delenv("NEXA_CACHE_ROOT")
    assert default_output_dir().parts[-3:] == (".cache", "nexa", "outputs")


def test_inline_images_as_base64_or_data_url():
    data = png()
    assert decode_inline(base64.b64encode(data).decode()) == data
    assert decode_inline("data:image/png;base64," + base64.b64encode(data).decode()) == data
    assert decode_inline(base64.encodebytes(data).decode()) == data  # line-wrapped base64
    for bad in ("not base64!", "data:image/png,rawbytes", ""):
        assert status(lambda: decode_inline(bad)) == 400
    assert open_image(data, "image", 64).size == (8, 8)
    assert status(lambda: open_image(b"GIF89a-but-not-really", "image", 64)) == 400


def test_missing_sides_follow_the_input_aspect_ratio():
    assert _fit((64, 64), None, None) == (64, 64)
    assert _fit((4000, 2000), None, None) == (1024, 512)
    assert _fit((300, 200), 150, None) == (150, 100)
    assert _fit((300, 200), None, 100) == (150, 100)


def test_request_limits():
    assert Txt2ImgRequest(prompt="x").width == 256  # the original server's defaults
    for bad in ({"width": 1025}, {"height": 0}, {"sample_steps": 51}, {"cfg_scale": -1}, {"seed": -2}):
        with pytest.raises(ValidationError):
            Txt2ImgRequest(prompt="x", **bad)
    assert Txt2ImgRequest(prompt="x", steps=4).sample_steps == 4
    assert Img2ImgRequest(prompt="x", image="aaaa").width is None
    with pytest.raises(ValidationError):
        Img2ImgRequest(prompt="x", strength=1.5)
    assert ImageGenerationRequest(prompt="x", size="64x128").dimensions() == (64, 128)
    assert ImageGenerationRequest(prompt="x", size="auto").dimensions() == (512, 512)
    assert ImageGenerationRequest(prompt="x").response_format == "b64_json"
    for bad in ({"size": "1024"}, {"size": "2048x64"}, {"n": 0}, {"n": 5}, {"response_format": "gif"},
                {"stream": True}, {"prompt": ""}):
        with pytest.raises(ValidationError):
            ImageGenerationRequest(**{"prompt": "x", **bad})


def test_manifest_image_folders_must_be_absolute():
    assert ServerSettings(image_input_dirs=["/srv/in", "~/pictures"]).image_output_dir is None
    with pytest.raises(ValidationError):
        ServerSettings(image_input_dirs=["relative/in"])
    with pytest.raises(ValidationError):
        ServerSettings(image_output_dir="out")


def test_the_output_folder_keeps_only_the_newest_images(tmp_path):
    import os

    from gateway.media.output import ImageStore

    store = ImageStore(tmp_path, keep=3)
    names = []
    for i in range(5):
        names.append(store.save(b"\x89PNG fake %d" % i))
        os.utime(tmp_path / names[-1], ns=(i * 10**9, i * 10**9))  # distinct, ordered mtimes
    store._prune()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[2:])


@pytest.mark.parametrize("error, status_code", [(28, 507), (5, 500)])  # ENOSPC, EIO
def test_a_failed_image_write_is_a_clear_error_and_leaves_no_file(tmp_path, monkeypatch, error, status_code):
    import gateway.media.output as images

    def full(out, data):
        out.write(data[:10])  # part of it made it to disk, as on a disk that fills up mid-write
        out.flush()
        raise OSError(error, os.strerror(error))

    store = ImageStore(tmp_path / "out")
    kept = store.save(b"an earlier image")
    monkeypatch.setattr(images, "_write", full)
    with pytest.raises(HTTPError) as info:
        store.save(b"\x89PNG" + b"x" * 1000)
    assert info.value.status == status_code
    if error == 28:
        assert "no space left on device" in info.value.message and info.value.code == "insufficient_storage"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [kept]  # no 0-byte or partial file


def test_image_urls_use_the_public_url_and_forwarded_headers_only_when_trusted():
    from types import SimpleNamespace

    from gateway.api.openai.images import _file_url
    from gateway.http.core import Request

    def url(headers: dict, **server) -> str:
        gw = SimpleNamespace(manifest=SimpleNamespace(server=ServerSettings(port=8000, **server)))
        return _file_url(gw, Request("POST", "/v1/txt2img", headers=headers), "img-1.png")

    forged = {"host": "gw.internal:8000", "x-forwarded-proto": "https", "x-forwarded-host": "evil.example"}
    # By default a client's forwarded headers are not believed: its Host is.
    assert url(forged) == "http://gw.internal:8000/v1/images/files/img-1.png"
    assert url({"host": "bad host/"}) == "http://127.0.0.1:8000/v1/images/files/img-1.png"
    # Behind a proxy that sets them (the first of a chain is what the client used).
    trusted = {**forged, "x-forwarded-host": "ai.example.com, proxy.local", "x-forwarded-proto": "HTTPS, http"}
    assert url(trusted, trust_forwarded_headers=True) == "https://ai.example.com/v1/images/files/img-1.png"
    assert url({**forged, "x-forwarded-proto": "gopher"}, trust_forwarded_headers=True).startswith("http://evil.example/")
    # The manifest's public URL wins over every header.
    public = "https://example.org/nexa/"
    assert url(forged, public_url=public, trust_forwarded_headers=True) == \
        "https://example.org/nexa/v1/images/files/img-1.png"
    for bad in ("ftp://x", "https://u@x", "https://x?y=1", "example.org"):
        with pytest.raises(ValidationError):
            ServerSettings(public_url=bad)
