"""Request and response bodies of the image routes.

`/v1/txt2img` and `/v1/img2img` keep the original Nexa field names (`image_path`, `cfg_scale`,
`sample_steps`, ...) and answer `{"created", "data": [{"base64", "url"}]}`; img2img also takes
the input image inline (`image`: base64 or a data URL) and `strength`.
`/v1/images/generations` is OpenAI's shape (`n`, `size`, `response_format`), plus the same
engine knobs as extensions. Limits keep one request from holding a CPU for an hour: sizes up to
1024x1024 (stable-diffusion.cpp rounds each side up to a multiple of 64) and at most 50 steps.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

MAX_SIDE = 1024
MAX_STEPS = 50
MAX_PROMPT_CHARS = 4000
MAX_IMAGES = 4
SIZE_PATTERN = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class _EngineFields(_Lenient):
    """Knobs every image route accepts. None means the model's default (its manifest
    options `default_steps` / `default_cfg_scale`, else 20 steps and cfg 7)."""

    model: str | None = None
    negative_prompt: str | None = Field("", max_length=MAX_PROMPT_CHARS)
    cfg_scale: float | None = Field(None, ge=0, le=30)
    sample_steps: int | None = Field(None, ge=1, le=MAX_STEPS,
                                     validation_alias=AliasChoices("sample_steps", "steps", "num_inference_steps"))
    seed: int | None = Field(None, ge=-1, le=2**32 - 1, description="-1 or absent: random")


class Txt2ImgRequest(_EngineFields):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    image_path: str | None = Field("", description="unused by txt2img; must be empty")
    width: int = Field(256, ge=1, le=MAX_SIDE)
    height: int = Field(256, ge=1, le=MAX_SIDE)


class Img2ImgRequest(_EngineFields):
    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    image_path: str | None = Field(None, description="a file inside the manifest's server.image_input_dirs")
    image: str | None = Field(None, description="the input image as base64 or a data: URL")
    strength: float = Field(0.75, ge=0, le=1, description="how far to move away from the input image")
    width: int | None = Field(None, ge=1, le=MAX_SIDE, description="default: the input image's, fit into 1024")
    height: int | None = Field(None, ge=1, le=MAX_SIDE)


class ImageGenerationRequest(_EngineFields):
    """OpenAI `POST /v1/images/generations`; `quality`, `style`, `user` are accepted and ignored."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    n: int = Field(1, ge=1, le=MAX_IMAGES)
    size: str | None = Field("512x512", description="WxH, each side 1..1024; 'auto' is 512x512")
    response_format: Literal["b64_json", "url"] | None = "b64_json"
    output_format: Literal["png"] | None = None
    stream: bool | None = None

    @field_validator("stream")
    @classmethod
    def _no_stream(cls, value: bool | None) -> bool | None:
        if value:
            raise ValueError("streaming partial images is not supported; leave stream out")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return None
        match = SIZE_PATTERN.match(value)
        if not match:
            raise ValueError("size must look like '512x512' (width x height)")
        width, height = int(match[1]), int(match[2])
        if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
            raise ValueError(f"each side of size must be between 1 and {MAX_SIDE}")
        return f"{width}x{height}"

    def dimensions(self) -> tuple[int, int]:
        if self.size is None:
            return 512, 512
        width, height = self.size.split("x")
        return int(width), int(height)


class NexaImage(BaseModel):
    base64: str
    url: str


class NexaImageResponse(BaseModel):
    created: float
    data: list[NexaImage]


class OpenAIImage(BaseModel):
    b64_json: str | None = None
    url: str | None = None


class OpenAIImageResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
