"""Image generation (txt2img, img2img) through stable-diffusion-cpp-python.

Two crashes of the 0.4.7 wrapper are guarded here, because either would take the whole
gateway down:

1. A failed load does not raise. `new_sd_ctx` returns a NULL pointer, the wrapper only checks
   `is None`, and the object's `__del__` later hands NULL to `free_sd_ctx` (segfault). We check
   the pointer ourselves, set it to None before anything can collect the object, and raise
   `LoadError` with the reasons sd.cpp logged.
2. sd.cpp keeps ONE process-wide progress callback. The wrapper's `progress_callback` argument
   installs a ctypes function that is garbage-collected when `generate_image` returns, and the
   next call (or the next load, whose tensor loader also reports progress) jumps into freed
   memory. We never pass it: a single module-level callback (never collected) is installed while
   any native call runs, dispatches to the reporter of the calling thread, and is reset to NULL
   when the last running call ends.

The wrapper's `verbose=False` silences sd.cpp by redirecting file descriptors 1 and 2 of the
whole process to /dev/null for the duration of every call, which would swallow the gateway's own
logs; we keep `verbose=True` and route sd.cpp's log lines into Python logging instead.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from backends.base import Backend
from backends.errors import BackendError, LoadError
from schemas.manifest import ModelSpec

log = logging.getLogger("nexa.backends.diffusion")
engine_log = logging.getLogger("nexa.backends.diffusion.engine")

MODEL_SUFFIXES = (".gguf", ".safetensors", ".ckpt", ".pt", ".pth", ".bin")
# spec.options passed to StableDiffusion() at load time.
LOAD_OPTIONS = {
    "clip_l_path", "clip_g_path", "t5xxl_path", "vae_path", "taesd_path", "control_net_path", "lora_model_dir",
    "wtype", "rng_type", "sampler_rng_type", "prediction", "offload_params_to_cpu", "enable_mmap",
    "keep_clip_on_cpu", "keep_control_net_on_cpu", "keep_vae_on_cpu", "flash_attn", "diffusion_flash_attn",
    "diffusion_conv_direct", "vae_conv_direct", "vae_decode_only", "image_resize_method", "tae_preview_only",
}
# spec.options applied to every generation.
GENERATE_OPTIONS = {"sample_method", "scheduler", "clip_skip", "vae_tiling", "eta", "guidance"}
# spec.options the gateway reads itself: defaults for requests that leave these out.
GATEWAY_OPTIONS = {"default_steps", "default_cfg_scale"}
DEFAULT_STEPS = 20
DEFAULT_CFG_SCALE = 7.0
PROGRESS_LOG_INTERVAL_S = 1.0

ProgressFn = Callable[[int, int], None]


@dataclass
class ImageParams:
    """One generation request, already validated by the route."""

    prompt: str
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int | None = None  # None: the model's default_steps option, else 20
    cfg_scale: float | None = None  # None: the model's default_cfg_scale option, else 7.0
    seed: int | None = None  # None or negative: random
    count: int = 1
    init_image: Any = None  # a PIL image for img2img
    strength: float = 0.75
    request_id: str | None = None  # only for log correlation


@dataclass
class GeneratedImage:
    image: Any  # PIL.Image.Image, RGB
    seed: int


# -- process-wide native state ---------------------------------------------------------------

_SD_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.WARNING, 3: logging.ERROR}
_state_lock = threading.Lock()
_load_lock = threading.Lock()  # loads run one at a time, so the errors they log are theirs
_reporters: dict[int, ProgressFn] = {}  # thread id -> reporter, while that thread is in a native call
_captured: list[str] | None = None  # sd.cpp warnings and errors while a load runs
_callbacks: dict[str, Any] = {}  # the ctypes callbacks, alive as long as the process


def _native():
    try:
        import stable_diffusion_cpp as sd_cpp
    except ImportError as exc:
        raise LoadError("stable-diffusion-cpp-python is not installed (pip install 'nexa-gateway[image]'): "
                        f"{exc}") from exc
    with _state_lock:
        if not _callbacks:
            _install_callbacks(sd_cpp)
    return sd_cpp


def _install_callbacks(sd_cpp: Any) -> None:
    @sd_cpp.sd_log_callback
    def on_log(level: int, text: bytes, data: Any) -> None:
        try:
            message = (text or b"").decode("utf-8", errors="replace").strip()
            if not message:
                return
            engine_log.log(_SD_LEVELS.get(level, logging.DEBUG), message, extra={"event": "engine_log"})
            captured = _captured
            if captured is not None and level >= 2:
                captured.append(re.sub(r"^\S+:\d+\s+-\s+", "", message))  # drop "model.cpp:229  - "
        except Exception:  # noqa: BLE001 - an exception must never cross into C
            pass

    @sd_cpp.sd_progress_callback
    def on_progress(step: int, steps: int, seconds: float, data: Any) -> None:
        try:
            reporter = _reporters.get(threading.get_ident())
            if reporter is not None:
                reporter(step, steps)
        except Exception:  # noqa: BLE001
            pass

    _callbacks["log"], _callbacks["progress"] = on_log, on_progress
    sd_cpp.sd_set_log_callback(on_log, None)
    # The wrapper's own `log_event` prints to stdout unless its logger is quiet.
    logging.getLogger("stable-diffusion-cpp-python").setLevel(logging.ERROR)


@contextmanager
def native_call(sd_cpp: Any, reporter: ProgressFn | None = None) -> Iterator[None]:
    """Around every call into sd.cpp: our progress callback is installed (so sd.cpp never
    prints its progress bar to stdout), dispatching to this thread's `reporter`; when the last
    running call ends it is reset to NULL, so sd.cpp holds no callback between calls."""
    thread = threading.get_ident()
    with _state_lock:
        if not _reporters:
            sd_cpp.sd_set_progress_callback(_callbacks["progress"], None)
        _reporters[thread] = reporter or (lambda step, steps: None)
    try:
        yield
    finally:
        with _state_lock:
            _reporters.pop(thread, None)
            if not _reporters:
                sd_cpp.sd_set_progress_callback(None, None)


def active_native_calls() -> int:
    return len(_reporters)


def _model_file(path: Path) -> Path:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in MODEL_SUFFIXES and p.is_file())
        if len(files) != 1:
            raise LoadError(f"{path} is a folder with {len(files)} model files ({', '.join(MODEL_SUFFIXES)}); "
                            "name one with `file:`")
        path = files[0]
    if not path.is_file():
        raise LoadError(f"model file {path} does not exist")
    if path.stat().st_size < 1024:
        raise LoadError(f"model file {path} is {path.stat().st_size} bytes: not a diffusion model")
    return path


def _split_options(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    unknown = sorted(set(options) - LOAD_OPTIONS - GENERATE_OPTIONS - GATEWAY_OPTIONS)
    if unknown:
        raise LoadError(f"unknown option(s) for stable-diffusion.cpp: {', '.join(unknown)}; known: "
                        f"{', '.join(sorted(LOAD_OPTIONS | GENERATE_OPTIONS | GATEWAY_OPTIONS))}")
    pick = lambda names: {k: v for k, v in options.items() if k in names}  # noqa: E731
    gateway = pick(GATEWAY_OPTIONS)
    try:
        steps = int(gateway.get("default_steps", DEFAULT_STEPS))
        cfg = float(gateway.get("default_cfg_scale", DEFAULT_CFG_SCALE))
    except (TypeError, ValueError):
        raise LoadError("options default_steps and default_cfg_scale must be numbers") from None
    if not (1 <= steps <= 50 and 0 <= cfg <= 30):
        raise LoadError("option default_steps must be 1..50 and default_cfg_scale 0..30")
    return pick(LOAD_OPTIONS), pick(GENERATE_OPTIONS), {"default_steps": steps, "default_cfg_scale": cfg}


class DiffusionBackend(Backend):
    capabilities = frozenset({"txt2img", "img2img"})
    in_child_process = True  # one generation is one native call that nothing can interrupt

    def __init__(self, spec: ModelSpec, path: Path, sd: Any, generate_options: dict[str, Any],
                 gateway_options: dict[str, Any]):
        super().__init__(spec, path)
        self.sd = sd
        self.generate_options = generate_options
        self.default_steps = gateway_options["default_steps"]
        self.default_cfg_scale = gateway_options["default_cfg_scale"]
        if sd.vae_decode_only:
            self.capabilities = frozenset({"txt2img"})  # no VAE encoder: no img2img

    @classmethod
    def load(cls, spec: ModelSpec, path: Path) -> "DiffusionBackend":
        sd_cpp = _native()
        from stable_diffusion_cpp import StableDiffusion

        path = _model_file(path)
        load_options, generate_options, gateway_options = _split_options(dict(spec.options))
        _check_choices(generate_options)
        kwargs: dict[str, Any] = {"model_path": str(path), "vae_decode_only": False, **load_options}
        if spec.n_threads:
            kwargs["n_threads"] = spec.n_threads
        global _captured
        started = time.monotonic()
        with _load_lock:
            _captured = []
            try:
                with native_call(sd_cpp):
                    sd = StableDiffusion(verbose=True, **kwargs)  # verbose: see the module docstring
            except (TypeError, ValueError, RuntimeError, OSError) as exc:
                raise LoadError(f"stable-diffusion.cpp could not load {path.name}: {exc}") from exc
            finally:
                reasons, _captured = _captured, None
                logging.getLogger("stable-diffusion-cpp-python").setLevel(logging.ERROR)
        if not _context_loaded(sd):
            _discard(sd)
            reason = "; ".join(dict.fromkeys(reasons[-4:])) or "no reason logged (see logger nexa.diffusion.engine)"
            raise LoadError(f"stable-diffusion.cpp could not load {path.name} (corrupt, truncated or not a "
                            f"Stable Diffusion model): {reason}")
        backend = cls(spec, path, sd, generate_options, gateway_options)
        log.info("diffusion model %s loaded from %s in %.2fs", spec.name, path.name, time.monotonic() - started,
                 extra={"event": "diffusion_loaded", "model": spec.name, "seconds": round(time.monotonic() - started, 3)})
        return backend

    def close(self) -> None:
        sd, self.sd = self.sd, None
        if sd is not None:
            sd.close()

    def info(self) -> dict[str, Any]:
        return {"file": self.path.name, "n_threads": self.sd.n_threads if self.sd else None,
                "default_steps": self.default_steps, "default_cfg_scale": self.default_cfg_scale}

    # -- generation ------------------------------------------------------------------------

    def generate(self, params: ImageParams, on_step: ProgressFn | None = None) -> list[GeneratedImage]:
        """Run one txt2img (no `init_image`) or img2img call; `count` images with seeds seed, seed+1, ..."""
        if self.sd is None:
            raise BackendError("the model is closed")
        if params.init_image is not None and "img2img" not in self.capabilities:
            raise BackendError(f"model {self.spec.name!r} was loaded with vae_decode_only and cannot do img2img")
        sd_cpp = _native()
        seed = params.seed if params.seed is not None and params.seed >= 0 else random.randrange(2**31)
        steps = params.steps or self.default_steps
        cfg = params.cfg_scale if params.cfg_scale is not None else self.default_cfg_scale
        kwargs: dict[str, Any] = {
            **self.generate_options,
            "prompt": params.prompt, "negative_prompt": params.negative_prompt or "",
            "width": params.width, "height": params.height, "sample_steps": steps, "cfg_scale": cfg,
            "seed": seed, "batch_count": params.count,
        }
        if params.init_image is not None:
            kwargs.update(init_image=params.init_image.convert("RGB"), strength=params.strength)
        reporter = _ProgressLog(self.spec.name, params.request_id, on_step)
        started = time.monotonic()
        try:
            with native_call(sd_cpp, reporter):
                images = self.sd.generate_image(**kwargs)
        except ValueError as exc:  # the wrapper's checks, or a NULL result from sd.cpp
            raise RuntimeError(f"stable-diffusion.cpp failed to generate: {exc}") from exc
        if len(images) != params.count:
            raise RuntimeError(f"stable-diffusion.cpp returned {len(images)} images instead of {params.count}")
        log.info("generated %d image(s) %dx%d in %.2fs", len(images), images[0].width, images[0].height,
                 time.monotonic() - started,
                 extra={"event": "image_generated", "model": self.spec.name, "request_id": params.request_id,
                        "steps": steps, "seconds": round(time.monotonic() - started, 3),
                        "mode": "img2img" if params.init_image is not None else "txt2img"})
        return [GeneratedImage(image=_plain(im), seed=seed + i) for i, im in enumerate(images)]


def _plain(image: Any) -> Any:
    """RGB, without the wrapper's `image.info` (its call arguments, ctypes arrays among them):
    nothing reads it, and it would stop the image from crossing from a worker process."""
    image = image.convert("RGB")
    image.info = {}
    return image


def _check_choices(options: dict[str, Any]) -> None:
    """A bad sampler or scheduler name fails the load, not every request."""
    from stable_diffusion_cpp import stable_diffusion as wrapper

    for name, choices in (("sample_method", wrapper.SAMPLE_METHOD_MAP), ("scheduler", wrapper.SCHEDULER_MAP)):
        value = options.get(name)
        if value is not None and str(value).strip().lower() not in choices:
            raise LoadError(f"option {name} {value!r} is not one of {', '.join(choices)}")


def _context_loaded(sd: Any) -> bool:
    model = getattr(getattr(sd, "_model", None), "model", None)
    return bool(model)  # a NULL ctypes pointer is falsy, a live one truthy


def _discard(sd: Any) -> None:
    """Make a half-built StableDiffusion safe to collect: with the NULL pointer replaced by None,
    the wrapper's `free_ctx` skips `free_sd_ctx(NULL)`, which would segfault."""
    inner = getattr(sd, "_model", None)
    if inner is not None:
        inner.model = None
    try:
        sd.close()
    except Exception:  # noqa: BLE001 - nothing native is left to free
        log.debug("closing a failed stable-diffusion.cpp load raised", exc_info=True)


class _ProgressLog:
    """Logs sampling progress (first step, then at most once a second, and the last step)."""

    def __init__(self, model: str, request_id: str | None, on_step: ProgressFn | None):
        self.model, self.request_id, self.on_step = model, request_id, on_step
        self.last = 0.0

    def __call__(self, step: int, steps: int) -> None:
        now = time.monotonic()
        if step >= 1 and (step == 1 or step >= steps or now - self.last >= PROGRESS_LOG_INTERVAL_S):
            self.last = now
            log.info("image generation step %d/%d", step, steps,
                     extra={"event": "image_progress", "model": self.model, "request_id": self.request_id,
                            "step": step, "steps": steps})
        if self.on_step is not None:
            self.on_step(step, steps)
