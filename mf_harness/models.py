"""`intervened_hf`: lmms-eval's model for every HF-native VLM family in the table, with a head intervention.

One thin lmms-eval model (`IntervenedHF`) for any ``AutoModelForImageTextToText``
checkpoint whose ``model_type`` is a row of `mf_harness.arch.ARCH`. Registered as
``intervened_hf`` with the aliases ``intervened_qwen``, ``intervened_internvl``,
``intervened_llava``, ``intervened_gemma3``, ``intervened_idefics3`` and
``intervened_smolvlm``: synonyms, the family comes from the checkpoint's config.

Prompting follows lmms-eval's own wrapper for the family (the row's ``upstream``): the
``<image>`` tag some tasks put in the context is removed; the chat turn is
``[system] + user[image x n, text]`` rendered by the checkpoint's chat template with the
generation prompt; images are prepared as that wrapper does (row ``image_prep``:
Qwen2/2.5-VL re-encode as JPEG q85 and resize with qwen-vl-utils' rule, Qwen3-VL resizes
only, Gemma 3 re-encodes only, the others pass the PIL image to the processor); greedy
unless ``temperature > 0``. So with an empty spec the outputs are those of the unmodified
model as upstream prompts it. On top of that:

* every forward runs inside `mf_harness.hooks.intervene` with a per-row plan built from
  the spec and the doc's token scope (located after the family's image expansion);
* ``loglikelihood`` is implemented (most upstream wrappers raise), so multiple-choice
  tasks run; text-only requests (``doc_to_visual`` absent or returning ``[]``) work too,
  so MMLU/IFEval-style capability tasks need no second model class;
* data parallel under ``accelerate launch -m lmms_eval`` (or torchrun): each rank loads
  the model on its own device and lmms-eval shards the requests by ``rank``;
  ``device_map=auto`` shards one model over the visible GPUs instead;
* failures name the doc (instruction not found, missing image, bad spec).

Where this differs from upstream, on purpose: ``until`` stop strings are applied for
every family (lmms-eval's idefics2 and InternVL-hf wrappers ignore them); batches are
left-padded without Gemma's ``pad_to_multiple_of=8``; InternVL and LLaVA run batches
(their upstream wrappers assert batch size 1); Idefics3/SmolVLM (no wrapper in lmms-eval
0.7.3) follow the idefics2 wrapper but keep the checkpoint's image splitting.

Model args (``--model_args``): ``pretrained`` (hub id, local dir, or ``embedded``),
``device``, ``device_map``, ``dtype`` (default bfloat16 on CUDA, float32 on CPU),
``attn_implementation``, ``min_pixels``, ``max_pixels`` (Qwen families),
``system_prompt`` (default: the family's; ``none`` for no system turn),
``max_new_tokens`` (default for tasks that set none; upstream's per family),
``instruction_field`` (doc field with the instruction text, default ``instruction``),
``revision``, ``trust_remote_code``, plus the spec keys of `mf_harness.spec`.
"""

from __future__ import annotations

import base64
import io
import os
from typing import Any, Callable, List, Sequence, Tuple

import torch
from loguru import logger
from PIL import Image
from tqdm import tqdm

from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from mf_harness.arch import ArchRow, arch_for, geometry, resolve
from mf_harness.errors import DataError, MfHarnessError
from mf_harness.hooks import HeadPlan, intervene
from mf_harness.scopes import scope_positions
from mf_harness.spec import InterventionSpec, spec_from_model_args

__all__ = ["IntervenedHF", "IntervenedQwen", "IMAGE_PREP", "load_model", "qwen_fetch_image"]

# lmms-eval's qwen2_5_vl simple wrapper defaults (the other families' are in their ArchRow)
UPSTREAM_MIN_PIXELS = 256 * 28 * 28
UPSTREAM_MAX_PIXELS = 1605632
UPSTREAM_MAX_NEW_TOKENS = 32768
DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

_FAMILY = object()  # "the family's default" for system_prompt


def _resolve_pretrained(pretrained: str) -> str:
    if pretrained == "embedded":
        from mf_harness.embedded import embedded_path

        return str(embedded_path())
    return pretrained


def _dtype(name: str | None, device: str) -> torch.dtype:
    if name in (None, "", "auto"):
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
             "float32": torch.float32, "fp32": torch.float32}
    if name not in table:
        raise MfHarnessError(f"dtype must be one of {', '.join(table)}; got {name!r}")
    return table[name]


def _load_config(pretrained: str, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    kw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        kw["revision"] = revision
    try:
        return AutoConfig.from_pretrained(_resolve_pretrained(pretrained), **kw)
    except (OSError, ValueError) as e:
        raise MfHarnessError(f"cannot load checkpoint {pretrained!r}: {e}") from None


def load_model(pretrained: str, *, device: str = "cpu", device_map: str | None = None, dtype: str | None = None,
               attn_implementation: str | None = None, revision: str | None = None,
               min_pixels: int | None = None, max_pixels: int | None = None, trust_remote_code: bool = False):
    """Load (model, processor) the way users do: a hub id or a local directory, or ``embedded``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from mf_harness._compat import install_processor_shim, without_video

    install_processor_shim()
    path = _resolve_pretrained(pretrained)
    kwargs: dict[str, Any] = {"dtype": _dtype(dtype, device), "trust_remote_code": trust_remote_code}
    if revision:
        kwargs["revision"] = revision
    if attn_implementation:
        valid = (None, "flash_attention_2", "sdpa", "eager")
        if attn_implementation not in valid:
            raise MfHarnessError(f"attn_implementation must be one of {valid}, got {attn_implementation!r}")
        kwargs["attn_implementation"] = attn_implementation
    if device_map:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    except OSError as e:
        raise MfHarnessError(f"cannot load checkpoint {pretrained!r}: {e}") from None
    if not device_map:
        model = model.to(device)
    model.eval()
    arch_for(model)  # fail early for families not in the table
    pkw: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if revision:
        pkw["revision"] = revision
    processor = without_video(AutoProcessor.from_pretrained(path, **pkw))
    ip = processor.image_processor
    if min_pixels is not None or max_pixels is not None:
        size = dict(getattr(ip, "size", None) or {})
        size["shortest_edge"] = int(min_pixels) if min_pixels is not None else size.get("shortest_edge")
        size["longest_edge"] = int(max_pixels) if max_pixels is not None else size.get("longest_edge")
        ip.size = size
        for attr, value in (("min_pixels", size["shortest_edge"]), ("max_pixels", size["longest_edge"])):
            if hasattr(ip, attr):
                setattr(ip, attr, value)
    return model, processor


# ----------------------------------------------------------------------------- image preparation


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


IMAGE_PREP: dict[str, Callable[[Image.Image, "IntervenedHF"], Image.Image]] = {
    # Qwen2/2.5-VL: data URL (JPEG q85) through qwen_vl_utils.fetch_image (patch 14 x merge 2 = 28)
    "qwen_jpeg": lambda im, lm: qwen_fetch_image(im, lm.min_pixels, lm.max_pixels, lm.patch_factor),
    # Qwen3-VL: the PIL image through qwen_vl_utils.fetch_image(image_patch_size=16): factor 32, no JPEG
    "qwen": lambda im, lm: _smart_resize(_to_rgb(im), lm.min_pixels, lm.max_pixels, lm.patch_factor),
    # Gemma 3: data URL (JPEG q85), loaded back by the processor's chat template
    "jpeg": lambda im, lm: _jpeg_q85(im),
    # InternVL-hf, LLaVA(-OneVision), Idefics: the PIL image straight to the processor
    "none": lambda im, lm: im,
}


class IntervenedHF(lmms):
    """Any HF-native VLM of the architecture table under an `InterventionSpec` (see module docstring)."""

    is_simple = True

    def __init__(
        self,
        pretrained: str = "embedded",
        device: str | None = None,
        device_map: str | None = None,
        dtype: str | None = None,
        batch_size: int | str = 1,
        attn_implementation: str | None = None,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        system_prompt: Any = _FAMILY,
        max_new_tokens: int | None = None,
        instruction_field: str = "instruction",
        revision: str | None = None,
        use_cache: bool = True,
        max_batch_size: int | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # everything that can fail without the weights fails before they load
        config = _load_config(pretrained, revision, bool(trust_remote_code))
        self.row: ArchRow = arch_for(config)
        self.family = self.row.family
        self.model_name = self.row.alias
        self.spec, unknown = spec_from_model_args(kwargs)
        if unknown:
            raise MfHarnessError(
                f"unknown model_args for {self.model_name}: {sorted(unknown)}; see `mf-harness --help` "
                f"or the README for the accepted keys"
            )
        self.geometry = geometry(config)
        self.spec.validate_for(self.geometry.num_layers, self.geometry.num_heads, model_name=str(pretrained))

        self._rank, self._world_size = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # accelerate launch / torchrun: data parallel
            from accelerate import Accelerator

            if device_map:
                raise MfHarnessError("device_map shards one model over the GPUs; it cannot be combined with a "
                                     "multi-process (data parallel) launch: use one or the other")
            self.accelerator = Accelerator()
            if self.accelerator.num_processes == 1:
                raise MfHarnessError(
                    f"WORLD_SIZE={os.environ['WORLD_SIZE']} but accelerate sees a single process (no GPU?); for "
                    f"data parallel on CPUs set ACCELERATE_USE_CPU=true (accelerate launch --multi_gpu "
                    f"--num_processes N -m lmms_eval ..., or torchrun --nproc_per_node N -m lmms_eval ...)")
            self._rank, self._world_size = self.accelerator.process_index, self.accelerator.num_processes
            device = f"cuda:{self.accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        is_embedded = pretrained == "embedded"
        uses_pixels = self.row.min_pixels is not None
        if not uses_pixels and (min_pixels is not None or max_pixels is not None):
            logger.warning(f"min_pixels/max_pixels apply to the Qwen families only; ignored for {self.family}")
            min_pixels = max_pixels = None
        if uses_pixels and not is_embedded:
            min_pixels = self.row.min_pixels if min_pixels is None else min_pixels
            max_pixels = self.row.max_pixels if max_pixels is None else max_pixels
        self._model, self.processor = load_model(
            pretrained, device=device, device_map=device_map, dtype=dtype, attn_implementation=attn_implementation,
            revision=revision, min_pixels=min_pixels, max_pixels=max_pixels, trust_remote_code=bool(trust_remote_code),
        )
        # inputs go where the embeddings are (device_map="auto" may put them anywhere)
        self._device = self._model.get_input_embeddings().weight.device if device_map else torch.device(device)
        ip = self.processor.image_processor
        if uses_pixels:
            self.min_pixels = int(min_pixels if min_pixels is not None else getattr(ip, "min_pixels", None)
                                  or ip.size["shortest_edge"])
            self.max_pixels = int(max_pixels if max_pixels is not None else getattr(ip, "max_pixels", None)
                                  or ip.size["longest_edge"])
            self.patch_factor = int(getattr(ip, "patch_size", 14) * getattr(ip, "merge_size", 2))
        self._tokenizer = self.processor.tokenizer
        self.pretrained = pretrained
        if system_prompt is _FAMILY:
            system_prompt = self.row.system_prompt
        elif isinstance(system_prompt, str) and system_prompt.strip().lower() in ("", "none"):
            system_prompt = None
        self.system_prompt = system_prompt
        self.default_max_new_tokens = int(max_new_tokens) if max_new_tokens else self.row.max_new_tokens
        self.instruction_field = instruction_field
        self.use_cache = use_cache
        self.batch_size_per_gpu = int(batch_size)
        self._config = self._model.config
        resolve(self._model)  # every hook site must exist before the first request
        tok = self._tokenizer
        self.image_token_ids = {i for i in (getattr(self._config, "image_token_id", None),
                                            getattr(self._config, "image_token_index", None)) if i is not None}
        # ids that stand for an image in the rendered prompt and in the processor's expansion
        placeholder = tok.convert_tokens_to_ids(self.row.image_token)
        if placeholder is None or (placeholder == tok.unk_token_id and self.row.image_token != tok.unk_token):
            raise MfHarnessError(f"{pretrained}: the tokenizer has no {self.row.image_token!r} token, which "
                                 f"{self.family} chat templates write for an image")
        self._placeholder_ids = {placeholder} | self.image_token_ids
        self._image_prep = IMAGE_PREP[self.row.image_prep]
        logger.info(f"{self.model_name}: {pretrained} ({self.family}, {self.geometry.num_layers} layers x "
                    f"{self.geometry.num_heads} heads, rank {self._rank}/{self._world_size}), "
                    f"spec: {self.spec.describe()}")

    # ----------------------------------------------------------------- lmms API
    @property
    def config(self):
        return self._config

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def model(self):
        return self._model

    @property
    def eot_token_id(self):
        return self._tokenizer.eos_token_id

    @property
    def batch_size(self):
        return self.batch_size_per_gpu

    @property
    def device(self):
        return self._device

    @property
    def rank(self):
        return self._rank

    @property
    def world_size(self):
        return self._world_size

    # ---------------------------------------------------------------- prompts
    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def _visuals(self, doc_to_visual, doc, label: str) -> list[Image.Image]:
        """The doc's images, prepared as the family's upstream wrapper does ([] for text-only requests)."""
        if doc_to_visual is None:
            return []
        try:
            visuals = doc_to_visual(doc)
        except MfHarnessError:
            raise
        except (FileNotFoundError, OSError) as e:
            raise DataError(f"{label}: image could not be loaded: {e}") from None
        out = []
        for v in visuals or []:
            if v is None:
                raise DataError(f"{label}: the doc's image is missing (doc_to_visual returned None)")
            if isinstance(v, str) and v.endswith((".mp4", ".avi", ".mov", ".mkv", ".webm")):
                raise MfHarnessError(f"{label}: videos are not supported by {self.model_name}")
            if isinstance(v, str):
                try:
                    v = Image.open(v)
                except (FileNotFoundError, OSError) as e:
                    raise DataError(f"{label}: image could not be loaded: {e}") from None
            if not isinstance(v, Image.Image):
                raise DataError(f"{label}: doc_to_visual gave a {type(v).__name__}, expected a PIL image")
            out.append(self._image_prep(v, self))
        return out

    def build_messages(self, context: str, n_images: int) -> tuple[list[dict], str]:
        """The upstream wrapper's message layout; returns (messages, user text)."""
        text = context.replace("<image>", "")
        messages: list[dict] = []
        if self.system_prompt is not None:
            sp = self.system_prompt
            messages.append({"role": "system",
                             "content": [{"type": "text", "text": sp}] if self.row.system_as_parts else sp})
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": text}]
        messages.append({"role": "user", "content": content})
        return messages, text

    def render(self, context: str, n_images: int) -> tuple[str, str]:
        """(chat-templated prompt, the user text as it appears in it)."""
        messages, text = self.build_messages(context, n_images)
        rendered = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text not in rendered and text.strip() in rendered:
            text = text.strip()  # Gemma's template trims texts
        return rendered, text

    def _encode(self, rendered: list[str], images: list[list[Image.Image]]):
        """Processor inputs for a batch: left padding (batches), the row's processor kwargs, nested images
        where the family wants them, and no second BOS where the template writes one (as
        ``processor.apply_chat_template(tokenize=True)`` does)."""
        kwargs: dict[str, Any] = dict(self.row.processor_kwargs)
        if any(images):
            kwargs["images"] = [list(ims) for ims in images] if self.row.nested_images else \
                [im for ims in images for im in ims]
        bos = self._tokenizer.bos_token
        if bos and all(r.startswith(bos) for r in rendered):
            kwargs["add_special_tokens"] = False
        padding_side = "left" if len(rendered) > 1 else "right"
        return self.processor(text=list(rendered), padding=True, padding_side=padding_side, return_tensors="pt",
                              **kwargs)

    def _row_positions(self, scope: str, rendered: str, user_text: str, ids: Sequence[int], doc: dict,
                       label: str) -> list[int]:
        instruction = doc.get(self.instruction_field) if isinstance(doc, dict) else None
        return scope_positions(scope, rendered=rendered, user_text=user_text, expanded_ids=ids,
                               tokenizer=self._tokenizer, placeholder_ids=self._placeholder_ids,
                               instruction=instruction, doc_label=label)

    def build_plan(self, specs: Sequence[InterventionSpec], rendered: list[str], user_texts: list[str],
                   input_ids: torch.Tensor, attention_mask: torch.Tensor, docs: list[dict], labels: list[str],
                   tail_lengths: Sequence[int] | None = None) -> HeadPlan | None:
        """Plan for a left-padded batch. ``tail_lengths[b]``: trailing tokens of row b that are not
        prompt (loglikelihood continuations); they are in scope where the spec acts on decode."""
        if all(s.is_empty for s in specs):
            return None
        B, S = input_ids.shape
        mask = torch.zeros(B, S, dtype=torch.bool)
        for b in range(B):
            if specs[b].is_empty:
                continue
            valid = attention_mask[b].bool()
            idx = valid.nonzero().flatten()
            if idx.numel() == 0:
                continue
            first = int(idx[0])
            tail = tail_lengths[b] if tail_lengths else 0
            ids = input_ids[b, first : S - tail].tolist()
            pos = self._row_positions(specs[b].scope, rendered[b], user_texts[b], ids, docs[b], labels[b])
            mask[b, [first + p for p in pos]] = True
            if tail and specs[b].acts_on_decode:
                mask[b, S - tail :] = True
        return HeadPlan.build(specs, mask, self.geometry.num_layers, self.geometry.num_heads)

    # ------------------------------------------------------------- generation
    def generate_until(self, requests: List[Instance]) -> List[str]:
        res: list[str] = []

        def _collate(x):
            toks = self._tokenizer.encode(x[0])
            return -len(toks), x[0]

        pbar = tqdm(total=len(requests), disable=(self.rank != 0), desc="Model Responding")
        re_ords = lmms_utils.Collator([reg.args for reg in requests], _collate, grouping=True)
        for chunk in re_ords.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            gen_kwargs = dict(all_gen_kwargs[0])
            until = gen_kwargs.pop("until", [self._tokenizer.decode(self.eot_token_id)])
            if isinstance(until, str):
                until = [until]
            elif not isinstance(until, list):
                raise ValueError(f"Expected `gen_kwargs['until']` to be a str or a list, got {type(until)}")
            until = [u for u in until if u != "\n\n"]
            docs = [self._doc(t, s, d) for t, s, d in zip(tasks, splits, doc_ids)]
            labels = [f"{t} doc {d}" for t, d in zip(tasks, doc_ids)]
            images = [self._visuals(fn, doc, lab) for fn, doc, lab in zip(doc_to_visuals, docs, labels)]
            rendered, user_texts = zip(*(self.render(c, len(ims)) for c, ims in zip(contexts, images)))
            inputs = self._encode(list(rendered), images)
            specs = [self.spec] * len(contexts)
            plan = self.build_plan(specs, list(rendered), list(user_texts), inputs["input_ids"],
                                   inputs["attention_mask"], docs, labels)
            answers = self._generate(inputs, gen_kwargs, plan)
            for i, ans in enumerate(answers):
                for term in until:
                    if term:
                        ans = ans.split(term)[0]
                answers[i] = ans
            for ans, context in zip(answers, contexts):
                res.append(ans)
                self.cache_hook.add_partial("generate_until", (context, all_gen_kwargs[0]), ans)
                pbar.update(1)
        pbar.close()
        return re_ords.get_original(res)

    def _generate(self, inputs, gen_kwargs: dict, plan: HeadPlan | None) -> list[str]:
        kw = {"max_new_tokens": self.default_max_new_tokens, "temperature": 0.0, "top_p": None, "num_beams": 1}
        kw.update({k: v for k, v in gen_kwargs.items() if k in ("max_new_tokens", "temperature", "top_p",
                                                                 "num_beams", "do_sample")})
        temperature = kw["temperature"] or 0.0
        do_sample = bool(kw.get("do_sample", False)) or temperature > 0
        if plan is not None and int(kw["num_beams"]) > 1:
            raise MfHarnessError("beam search (num_beams > 1) is not supported with an intervention")
        tok = self._tokenizer
        stop = {"eos_token_id": tok.eos_token_id} if self.row.stop == "tokenizer" else {}
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        inputs = inputs.to(self.device)
        with torch.inference_mode(), intervene(self._model, plan):
            out = self._model.generate(
                **inputs,
                **stop,
                pad_token_id=pad,
                do_sample=do_sample,
                temperature=temperature if do_sample else None,
                top_p=kw["top_p"] if do_sample else None,
                num_beams=kw["num_beams"],
                max_new_tokens=int(kw["max_new_tokens"]),
                use_cache=self.use_cache,
            )
        trimmed = out[:, inputs["input_ids"].shape[1]:]
        return self.processor.batch_decode(trimmed, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # ---------------------------------------------------------- loglikelihood
    def loglikelihood(self, requests: List[Instance]) -> List[Tuple[float, bool]]:
        """Sum of log p(continuation | prompt) and whether it is the greedy continuation.

        The prompt is the chat-templated request with the generation prompt; the
        continuation's tokens are appended to it (lm-eval's context/continuation split).
        """
        res: list[Tuple[float, bool]] = []

        def _collate(x):
            return -len(self._tokenizer.encode(x[0] + x[1])), x[0]

        pbar = tqdm(total=len(requests), disable=(self.rank != 0), desc="Model Loglikelihood")
        re_ords = lmms_utils.Collator([reg.args for reg in requests], _collate, grouping=False)
        for chunk in re_ords.get_batched(n=self.batch_size, batch_fn=None):
            contexts, continuations, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            docs = [self._doc(t, s, d) for t, s, d in zip(tasks, splits, doc_ids)]
            labels = [f"{t} doc {d}" for t, d in zip(tasks, doc_ids)]
            images = [self._visuals(fn, doc, lab) for fn, doc, lab in zip(doc_to_visuals, docs, labels)]
            res.extend(self._loglikelihood_batch(list(contexts), list(continuations), images, docs, labels))
            pbar.update(len(chunk))
        pbar.close()
        return re_ords.get_original(res)

    def _loglikelihood_batch(self, contexts, continuations, images, docs, labels) -> list[Tuple[float, bool]]:
        rendered, user_texts = map(list, zip(*(self.render(c, len(ims)) for c, ims in zip(contexts, images))))
        enc = self._encode(rendered, images)
        ids0 = enc["input_ids"]
        # per-token inputs besides ids/mask (Qwen's mm_token_type_ids, Gemma's token_type_ids): 0 on the continuation
        per_token = [k for k, v in enc.items() if k not in ("input_ids", "attention_mask") and
                     not k.startswith(("pixel", "image")) and torch.is_tensor(v) and v.shape == ids0.shape]
        rows, tails = [], []
        for b, cont in enumerate(continuations):
            keep = enc["attention_mask"][b].bool()
            cont_ids = self._tokenizer(cont, add_special_tokens=False)["input_ids"]
            if not cont_ids:
                raise MfHarnessError(f"{labels[b]}: empty continuation {cont!r}")
            rows.append((ids0[b][keep].tolist(), cont_ids, {k: enc[k][b][keep] for k in per_token}))
            tails.append(len(cont_ids))
        S = max(len(p) + len(c) for p, c, _ in rows)
        pad = self._tokenizer.pad_token_id if self._tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), S), pad, dtype=torch.long)
        att = torch.zeros((len(rows), S), dtype=torch.long)
        extra = {k: torch.zeros((len(rows), S), dtype=enc[k].dtype) for k in per_token}
        for b, (p, c, per) in enumerate(rows):
            n = len(p) + len(c)
            ids[b, S - n:] = torch.tensor(p + c)
            att[b, S - n:] = 1
            for k, v in per.items():
                extra[k][b, S - n: S - len(c)] = v
        inputs = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", *per_token)}
        inputs.update(input_ids=ids, attention_mask=att, **extra)
        if not self.row.rope_3d:
            # forward() does not derive positions from a left-padded mask (generate does)
            inputs["position_ids"] = (att.cumsum(-1) - 1).clamp(min=0)
        specs = [self.spec] * len(rows)
        plan = self.build_plan(specs, rendered, user_texts, ids, att, docs, labels, tail_lengths=tails)
        inputs = {k: (v.to(self.device) if hasattr(v, "to") else v) for k, v in inputs.items()}
        with torch.inference_mode(), intervene(self._model, plan):
            logits = self._model(**inputs).logits.float()
        out = []
        for b, (_, c, _) in enumerate(rows):
            L = len(c)
            lp = torch.log_softmax(logits[b, S - L - 1: S - 1], dim=-1)
            target = torch.tensor(c, device=lp.device)
            total = lp.gather(-1, target[:, None]).sum().item()
            greedy = bool((lp.argmax(-1) == target).all())
            out.append((total, greedy))
        return out

    def generate_until_multi_round(self, requests) -> List[str]:
        raise NotImplementedError(f"{self.model_name} does not implement multi-round generation")


# The name the core slice used; other modules import it.
IntervenedQwen = IntervenedHF
