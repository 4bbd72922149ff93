"""The child process of `backends.mmproj.probe`: load a projector and encode one image.

It runs apart from the gateway because a broken projector file can crash libmtmd (SIGSEGV,
SIGABRT); then only this process dies, and its exit signal and log explain why. It reads just
the language model's vocabulary and hyper-parameters (vocab_only), so it is cheap even for
large models, and imports nothing of ours so that it starts fast.

    python -m backends.mmproj_probe MODEL.gguf MMPROJ.gguf

Prints `STAGE ...` lines as it goes and a JSON line {"image_tokens": n} on success.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
import zlib


def tiny_png(size: int = 8) -> bytes:
    """A grey PNG written with zlib alone, so the child needs no image library."""
    raw = b"".join(b"\x00" + b"\x80" * (3 * size) for _ in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _child(model: str, mmproj: str) -> int:
    import llama_cpp
    import llama_cpp.mtmd_cpp as mtmd

    def stage(text: str) -> None:
        print("STAGE " + text, flush=True)

    stage("reading the language model's vocabulary")
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    text_model = llama_cpp.llama_model_load_from_file(model.encode(), params)
    if not text_model:
        print(f"error: llama.cpp could not read {model}", file=sys.stderr)
        return 3
    stage("loading the projector")
    ctx_params = mtmd.mtmd_context_params_default()
    ctx_params.use_gpu = False
    ctx_params.print_timings = False
    ctx_params.n_threads = max(1, min(4, os.cpu_count() or 1))
    ctx = mtmd.mtmd_init_from_file(mmproj.encode(), text_model, ctx_params)
    if not ctx:
        return 3
    if not mtmd.mtmd_support_vision(ctx):
        print("error: the projector has no vision encoder", file=sys.stderr)
        return 3
    stage("encoding a test image")
    data = tiny_png()
    bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(ctx, (ctypes.c_uint8 * len(data)).from_buffer(bytearray(data)),
                                                   len(data), False)
    chunks = mtmd.mtmd_input_chunks_init()
    text = mtmd.mtmd_input_text()
    marker = mtmd.mtmd_default_marker()
    text.text, text.text_len, text.add_special, text.parse_special = marker, len(marker), False, True
    if not bitmap or mtmd.mtmd_tokenize(ctx, chunks, ctypes.byref(text), (mtmd.mtmd_bitmap_p_ctypes * 1)(bitmap), 1):
        print("error: the test image could not be tokenized", file=sys.stderr)
        return 3
    image_tokens = 0
    for i in range(mtmd.mtmd_input_chunks_size(chunks)):
        chunk = mtmd.mtmd_input_chunks_get(chunks, i)
        if mtmd.mtmd_input_chunk_get_type(chunk) == mtmd.MTMD_INPUT_CHUNK_TYPE_IMAGE:
            image_tokens += mtmd.mtmd_input_chunk_get_n_tokens(chunk)
            if mtmd.mtmd_encode_chunk(ctx, chunk) != 0:
                print("error: encoding the test image failed", file=sys.stderr)
                return 3
    print(json.dumps({"image_tokens": image_tokens}), flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m backends.mmproj_probe MODEL.gguf MMPROJ.gguf", file=sys.stderr)
        sys.exit(2)
    sys.exit(_child(sys.argv[1], sys.argv[2]))
