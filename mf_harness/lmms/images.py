"""Images as lmms-eval's wrapper for each family prepares them, and a doc's visuals loaded with clear errors.

Row ``image_prep`` (`mf_harness.core.arch.PromptStyle`): Qwen2/2.5-VL re-encode as JPEG q85 (lmms-eval's
own ``encode_image_to_data_url``) and resize with qwen-vl-utils' rule, Qwen3-VL resizes only, Gemma 3 and
GLM-4V re-encode only, the others pass the PIL image to the processor.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from mf_harness.errors import DataError, MfHarnessError

__all__ = ["ImagePrep", "IMAGE_PREP", "load_visuals", "qwen_fetch_image", "open_rgb"]

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _jpeg_q85(image: Image.Image) -> Image.Image:
    """lmms-eval's ``encode_image_to_data_url(JPEG, q85, RGB)``, decoded back, as the HF/qwen loaders do."""
    from lmms_eval.models.model_utils.media_encoder import encode_image_to_data_url

    url = encode_image_to_data_url(image, image_format="JPEG", mime_type="image/jpeg", convert_rgb=True, quality=85)
    data = base64.b64decode(url.split("base64,", 1)[1])
    with io.BytesIO(data) as bio:
        img = Image.open(bio)
        img.load()
    return img.convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """qwen-vl-utils' ``to_rgb``: transparent images go on white."""
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.split()[3])
        return white
    return image.convert("RGB")


def _smart_resize(img: Image.Image, min_pixels: int, max_pixels: int, factor: int) -> Image.Image:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    width, height = img.size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return img.resize((w, h))


def qwen_fetch_image(image: Image.Image, min_pixels: int, max_pixels: int, factor: int = 28) -> Image.Image:
    """lmms-eval's image path for Qwen2/2.5-VL: JPEG q85 data URL, decoded, RGB, resized by qwen-vl-utils' rule."""
    return _smart_resize(_jpeg_q85(image), min_pixels, max_pixels, factor)



@dataclass(frozen=True)
class ImagePrep:
    """One checkpoint's image preparation: ``prep(image) -> image``."""

    kind: str  # a key of IMAGE_PREP
    min_pixels: int | None = None
    max_pixels: int | None = None
    factor: int = 28  # patch size x merge size (Qwen)

    def __call__(self, image: Image.Image) -> Image.Image:
        return IMAGE_PREP[self.kind](image, self)


IMAGE_PREP: dict[str, Callable[[Image.Image, ImagePrep], Image.Image]] = {
    # Qwen2/2.5-VL: data URL (JPEG q85) through qwen_vl_utils.fetch_image (patch 14 x merge 2 = 28)
    "qwen_jpeg": lambda im, p: qwen_fetch_image(im, p.min_pixels, p.max_pixels, p.factor),
    # Qwen3-VL: the PIL image through qwen_vl_utils.fetch_image(image_patch_size=16): factor 32, no JPEG
    "qwen": lambda im, p: _smart_resize(_to_rgb(im), p.min_pixels, p.max_pixels, p.factor),
    # Gemma 3, GLM-4V: data URL (JPEG q85), loaded back by the processor's chat template
    "jpeg": lambda im, p: _jpeg_q85(im),
    # InternVL-hf, LLaVA(-OneVision), Idefics: the PIL image straight to the processor
    "none": lambda im, p: im,
}


def open_rgb(src, label: str) -> Image.Image:
    """Decode an image file (a path or a file object) completely, as RGB; a truncated or corrupt file is a
    `DataError` naming ``label``. (lmms-eval sets PIL's ``LOAD_TRUNCATED_IMAGES``, under which a cut file
    decodes into a grey-filled picture and is scored as if it were the image.)"""
    from PIL import ImageFile

    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with Image.open(src) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError as e:
        raise DataError(f"{label}: image could not be loaded: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{label}: the image is truncated or corrupt ({e})") from None
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def load_visuals(doc_to_visual, doc, label: str, prep: ImagePrep, model_name: str = "this model") -> list[Image.Image]:
    """The doc's images, prepared by ``prep`` ([] for text-only requests); a clear `DataError` naming
    ``label`` for a missing or unreadable image."""
    if doc_to_visual is None:
        return []
    try:
        visuals = doc_to_visual(doc)
    except DataError as e:
        raise DataError(f"{label}: {e}") from None  # name the request's doc too
    except MfHarnessError:
        raise
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{label}: image could not be loaded: {e}") from None
    out = []
    for v in visuals or []:
        if v is None:
            raise DataError(f"{label}: the doc's image is missing (doc_to_visual returned None)")
        if isinstance(v, str) and v.endswith(VIDEO_SUFFIXES):
            raise MfHarnessError(f"{label}: videos are not supported by {model_name}")
        if isinstance(v, str):
            v = open_rgb(v, label)
        if not isinstance(v, Image.Image):
            raise DataError(f"{label}: doc_to_visual gave a {type(v).__name__}, expected a PIL image")
        out.append(prep(v))
    return out
