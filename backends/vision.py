"""Vision chat (MULTIMODAL, gguf): a GGUF language model plus a projector (mmproj) file,
through llama-cpp-python's multimodal chat handlers (libmtmd).

The handler does what only it knows: render its chat template with image markers,
decode the images, run the vision encoder and write text and image embeddings
into the language model's context. Generation then goes through
`LlamaBackend.generate`, the same token loop as text chat, so vision answers have
exact token counts (image positions included in `prompt_tokens`), stop
sequences that never leak, a cancellation check between tokens, and honour
`max_tokens` exactly (the handler's own create_completion can overshoot it).

What the stock handlers do that a gateway cannot have, and is overridden here:
- the projector is loaded on the first chat call: here it is loaded, and checked
  (see backends/mmproj.py: a bad file can kill the process), at load time;
- images are fetched with urllib when not data: URLs: here only data: URLs and
  base64 are read (the route layer fetches allowed http(s) URLs beforehand), by the
  one decoder and the one Pillow opener in backends/media.py;
- stdout/stderr are silenced by re-pointing the process's file descriptors,
  which races with every other thread: here libmtmd's log goes to Python logging;
- MTMDChatHandler hands list content to the model's template, which most text
  templates cannot render: here content is flattened to text with the media
  marker where each image goes, as llama.cpp's own server does.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from backends import llama_private as private
from backends import mmproj as projector
from backends.base import Cancelled, ChatOptions, Delta, SamplingParams
from backends.chat_template import CHATML_TEMPLATE, template_error
from backends.errors import BackendError, ContextLengthExceeded, LoadError
from backends.llama import LlamaBackend
from backends.media import MediaError, as_data_url, content_parts, decode_image, image_part, native_bytes
from schemas.manifest import Device, ModelSpec

log = logging.getLogger("nexa.backends.vision")

# Manifest `handler:` -> llama_cpp.llama_chat_format class. "mtmd" renders the model's own chat
# template (right for any model whose GGUF carries one: Gemma 3, Qwen2.5-VL, SmolVLM, ...);
# the others bring the fixed prompt format of the model family they are named after.
HANDLERS: dict[str, str] = {
    "mtmd": "MTMDChatHandler",
    "gemma3": "MTMDChatHandler",
    "gemma4": "Gemma4ChatHandler",
    "llava-1.5": "Llava15ChatHandler",
    "llava-1.6": "Llava16ChatHandler",
    "obsidian": "ObsidianChatHandler",
    "moondream": "MoondreamChatHandler",
    "nanollava": "NanoLlavaChatHandler",
    "llama3-vision-alpha": "Llama3VisionAlphaChatHandler",
    "minicpm-v-2.6": "MiniCPMv26ChatHandler",
    "qwen2.5-vl": "Qwen25VLChatHandler",
}
DEFAULT_HANDLER = "mtmd"
MIN_CTX = 256  # llama.cpp pads smaller contexts and then fails oddly with image chunks

# -- libmtmd's log, routed to Python logging ---------------------------------------------

_log_lock = threading.Lock()
_log_capture = threading.local()
_log_callback: Any = None  # kept referenced: libmtmd holds the pointer


def _route_mtmd_log() -> None:
    """Send libmtmd's log (which includes prompt text at info level) to `nexa.vision` at debug."""
    global _log_callback
    with _log_lock:
        if _log_callback is not None:
            return
        import llama_cpp

        @llama_cpp.llama_log_callback
        def callback(level: int, text: bytes, user_data: Any) -> None:
            message = (text or b"").decode("utf-8", "replace")
            lines = getattr(_log_capture, "lines", None)
            if lines is not None:
                lines.append(message)
            if message.strip():
                log.log(logging.WARNING if level == 3 else logging.DEBUG, "%s", message.rstrip(),
                        extra={"event": "mtmd_log"})

        for name in ("mtmd_log_set", "mtmd_helper_log_set"):
            function = private.mtmd_function(name)
            if function is not None:
                function.argtypes = [llama_cpp.llama_log_callback, ctypes.c_void_p]
                function.restype = None
                function(callback, None)
        _log_callback = callback


@contextmanager
def _captured_log() -> Iterator[list[str]]:
    lines: list[str] = []
    _log_capture.lines = lines
    try:
        yield lines
    finally:
        _log_capture.lines = None


# -- images ------------------------------------------------------------------------------


def read_image(url: str, max_pixels: int | None = None) -> bytes:
    """Image bytes llama.cpp can decode, from a data: URL or base64; other formats via Pillow.

    `max_pixels` is the model's own `options.max_image_pixels`; without it the gateway has already
    applied `server.max_image_pixels` before the image got here."""
    try:
        return native_bytes(decode_image(url), max_pixels)
    except MediaError as exc:
        raise BackendError(str(exc)) from None


def prepare_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-style messages -> what the handlers read: image parts as
    {"type": "image_url", "image_url": {"url": <data URL>}}, only in user messages."""
    prepared = []
    for index, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            try:
                for part in content_parts(content):
                    if not part.is_image:
                        parts.append({"type": "text", "text": part.text})
                        continue
                    if message.get("role") != "user":
                        raise BackendError(f"messages[{index}]: images are accepted only in user messages")
                    parts.append(image_part(as_data_url(part.url)))
            except MediaError as exc:
                raise BackendError(f"messages[{index}]: {exc}") from None
            if message.get("role") != "user":  # text parts only (checked above): the plain string every template reads
                parts = "".join(p["text"] for p in parts)
            message = {**message, "content": parts}
        prepared.append(message)
    return prepared


# -- the handler overrides -----------------------------------------------------------------


class _GatewayHandler:
    """Mixed in before a llama-cpp-python handler class (Llava15ChatHandler or MTMDChatHandler family)."""

    gateway_template: str | None = None
    gateway_use_gpu: bool = True
    max_image_pixels: int | None = None  # options.max_image_pixels

    def _init_mtmd_context(self, llama_model: Any) -> None:
        if self.mtmd_ctx is not None:
            return
        import llama_cpp

        mtmd = private.mtmd_lib(self)
        params = mtmd.mtmd_context_params_default()
        params.use_gpu = self.gateway_use_gpu
        params.print_timings = False
        params.n_threads = llama_model.n_threads
        if hasattr(params, "flash_attn_type"):
            enabled = llama_model.context_params.flash_attn_type == llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
            params.flash_attn_type = (llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED if enabled
                                      else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED)
        name = Path(self.clip_model_path).name
        with _captured_log() as lines:
            ctx = mtmd.mtmd_init_from_file(self.clip_model_path.encode(), llama_model.model, params)
        if not ctx:
            reason = projector.explain("".join(lines))
            raise LoadError(f"llama.cpp could not load projector {name}" + (f": {reason}" if reason else ""))
        self.mtmd_ctx = ctx
        private.on_close(llama_model, self._free_mtmd)
        if not mtmd.mtmd_support_vision(ctx):
            raise LoadError(f"projector {name} has no vision encoder")

    def _free_mtmd(self) -> None:
        if self.mtmd_ctx is not None:
            private.mtmd_lib(self).mtmd_free(self.mtmd_ctx)
            self.mtmd_ctx = None

    def _create_bitmap_from_bytes(self, image_bytes: bytes) -> Any:
        buffer = (ctypes.c_uint8 * len(image_bytes)).from_buffer(bytearray(image_bytes))
        mtmd = private.mtmd_lib(self)
        bitmap = mtmd.mtmd_helper_bitmap_init_from_buf(self.mtmd_ctx, buffer, len(image_bytes), False)
        if bitmap is None:
            raise BackendError("an image could not be decoded")
        return bitmap

    def load_image(self, image_url: str) -> bytes:
        return read_image(image_url, self.max_image_pixels)

    # MTMDChatHandler family only:
    def _get_chat_template(self, llama_model: Any) -> str:
        return self.gateway_template or CHATML_TEMPLATE

    def _get_template_messages(self, messages: list[dict], media_marker: str) -> list[dict]:
        flat = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):  # already prepared: text and image_url parts only
                content = "".join(media_marker if p.is_image else p.text for p in content_parts(content))
            flat.append({**message, "content": content})
        return flat


def handler_class(name: str) -> type:
    if name not in HANDLERS:
        raise LoadError(f"unknown vision handler {name!r}; choose one of {', '.join(HANDLERS)}")
    from llama_cpp import llama_chat_format

    base = getattr(llama_chat_format, HANDLERS[name], None)
    if base is None:
        raise LoadError(f"vision handler {name!r} needs {HANDLERS[name]}, which this llama-cpp-python lacks")
    return type(f"Nexa{base.__name__}", (_GatewayHandler, base), {})


# -- the backend ---------------------------------------------------------------------------


def locate(spec: ModelSpec, path: Path) -> tuple[Path, Path]:
    """(language model file, projector file). A relative `mmproj` is looked up beside the model
    first, then in the working directory; a folder `source` holds the model and maybe the projector."""
    folder = path if path.is_dir() else path.parent
    raw = spec.mmproj or ""
    if raw.startswith(("hf:", "pypi:")):
        raise LoadError(f"mmproj {raw!r}: this gateway reads projectors from local paths only so far")
    given = Path(raw).expanduser()
    candidates = [given] if given.is_absolute() else [folder / given, Path.cwd() / given]
    mmproj = next((c for c in candidates if c.is_file()), None)
    if mmproj is None:
        raise LoadError(f"projector file not found: {', '.join(str(c) for c in candidates)}")
    model = path
    if path.is_dir():
        ggufs = [p for p in sorted(path.glob("*.gguf")) if p.resolve() != mmproj.resolve() and "mmproj" not in p.name.lower()]
        if len(ggufs) != 1:
            raise LoadError(f"{path} is a folder with {len(ggufs)} language-model .gguf files; name one with `file:`")
        model = ggufs[0]
    return model, mmproj


class VisionBackend(LlamaBackend):
    capabilities = frozenset({"chat", "complete", "vision"})
    counts_beside = False  # counting evaluates images through the model's own libmtmd context

    def __init__(self, spec: ModelSpec, path: Path, llm: Any):
        super().__init__(spec, path, llm)
        self.handler: Any = None
        self.handler_name = spec.handler or DEFAULT_HANDLER
        self.mmproj: Path | None = None
        self.projector: projector.ProjectorInfo | None = None
        self.image_tokens: int | None = None
        self._images_in_cache = False

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "VisionBackend":
        options = dict(spec.options)
        probe = bool(options.pop("mmproj_probe", True))
        probe_timeout = float(options.pop("mmproj_probe_timeout_s", 300))
        max_pixels = options.pop("max_image_pixels", None)  # else server.max_image_pixels, checked by the gateway
        handler_cls = handler_class(spec.handler or DEFAULT_HANDLER)
        if spec.nctx < MIN_CTX:
            raise LoadError(f"nctx {spec.nctx} is too small for a vision model; use at least {MIN_CTX}")
        model, mmproj = locate(spec, path)
        info = projector.check(mmproj)  # names missing tensors before libmtmd can crash on them
        probed = projector.probe(model, mmproj, probe_timeout) if probe else {}
        backend = super().load(spec.model_copy(update={"options": options}), model)
        backend.spec = spec
        try:
            backend._attach(handler_cls, mmproj, max_pixels)
        except BaseException:
            backend.close()
            raise
        backend.mmproj, backend.projector = mmproj, info
        backend.image_tokens = probed.get("image_tokens") if info.projector_type in projector.FIXED_GRID else None
        log.info("vision model %s: projector %s (%s), handler %s", spec.name, mmproj.name, info.projector_type,
                 backend.handler_name, extra={"event": "vision_loaded", "model": spec.name,
                                              "projector_type": info.projector_type, "handler": backend.handler_name})
        return backend

    def _attach(self, handler_cls: type, mmproj: Path, max_pixels: int | None) -> None:
        """Create the handler and its libmtmd context now, so a bad projector fails the load."""
        from llama_cpp.llama_chat_format import MTMDChatHandler

        _route_mtmd_log()
        handler = handler_cls(clip_model_path=str(mmproj), verbose=False)
        handler.gateway_use_gpu = self.spec.device != Device.cpu and self.spec.n_gpu_layers != 0
        handler.max_image_pixels = int(max_pixels) if max_pixels is not None else None
        template = self.spec.options.get("chat_template")
        if isinstance(handler, MTMDChatHandler):
            handler.gateway_template = template or self.llm.metadata.get("tokenizer.chat_template") or CHATML_TEMPLATE
        elif template:
            handler.CHAT_FORMAT = template  # must write content.image_url.url where each image goes
        handler._init_mtmd_context(self.llm)
        self.handler = handler

    def close(self) -> None:
        super().close()  # Llama.close() frees the libmtmd context first (a callback on its exit stack)
        self.handler = None

    def info(self) -> dict[str, Any]:
        return {**super().info(), "mmproj": self.mmproj.name if self.mmproj else None, "handler": self.handler_name,
                "projector_type": self.projector.projector_type if self.projector else None,
                "image_tokens": self.image_tokens}

    # -- generation ------------------------------------------------------------------------

    def chat(self, messages: list[dict], params: SamplingParams, cancelled: Cancelled,
             options: ChatOptions | None = None) -> Iterator[Delta]:
        # LlamaBackend.chat does tools, tool_choice and response_format on top of `_chat_tokens`,
        # which here is the handler's prefill: all of that works with images too.
        return super().chat(prepare_messages(messages), params, cancelled, options)

    def count_chat(self, messages: list[dict], options: ChatOptions | None = None) -> int:
        # Image positions count, as in `prompt_tokens`: the handler evaluates the images to know them.
        return super().count_chat(prepare_messages(messages), options)

    def _chat_tokens(self, messages: list[dict], **template_vars: Any) -> list[int]:
        return self.prefill(messages, template_vars)

    def render_prompt(self, messages: list[dict], options: ChatOptions | None = None) -> str:
        # The handler builds this model's prompt around image embeddings, inside the context: there is
        # no prompt text to show. Tokenizing works as for every GGUF model.
        raise BackendError(f"model {self.spec.name!r} is MULTIMODAL: its vision handler builds the prompt around "
                           "image embeddings, so there is no prompt text to render", param="model")

    def prefill(self, messages: list[dict], template_vars: dict[str, Any] | None = None) -> list[int]:
        """Let the handler evaluate text and images into the context; return the prompt's token ids,
        with -1 at image positions (so no later prompt can reuse them as a cached prefix)."""
        llm = self.llm
        llm.input_ids.fill(-1)
        self._images_in_cache = True
        try:
            pending = self.handler(llama=llm, messages=messages, stream=True, max_tokens=1, **(template_vars or {}))
        except (BackendError, LoadError):
            raise
        except ValueError as exc:
            text = str(exc)
            if "exceeds n_ctx" in text:
                raise ContextLengthExceeded(f"the prompt with its images does not fit this model's context of "
                                   f"{llm.n_ctx()} tokens ({text.split(':', 1)[-1].strip()})") from None
            raise BackendError(f"the images could not be prepared: {text}") from None
        except Exception as exc:  # noqa: BLE001 - jinja raises many kinds: the messages do not fit the template
            raise template_error(exc) from None
        close = getattr(pending, "close", None)
        if close is not None:
            close()  # the handler's own generation was never started
        n = llm.n_tokens
        if n == 0:
            raise BackendError("the prompt is empty")
        if private.needs_eval(llm) or int(llm.input_ids[n - 1]) == -1:
            raise BackendError("the chat template ended the prompt with an image; it must end with text")
        return llm.input_ids[:n].tolist()

    def complete(self, prompt: str | list[int], params: SamplingParams, cancelled: Cancelled) -> Iterator[Delta]:
        if self._images_in_cache:
            self.llm.reset()  # never match a text prompt against positions that held image embeddings
            self._images_in_cache = False
        return super().complete(prompt, params, cancelled)
