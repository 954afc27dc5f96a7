"""Architecture knowledge, as one table: one row per VLM family (``config.model_type``).

A row says two things about a family:

* **where** the per-head site is. It is the input of each text decoder layer's
  attention output projection (``<layers>[i].<attn>.<o_proj>``), shape
  ``[batch, seq, heads * head_dim]``; head ``h`` is the slice
  ``h*head_dim:(h+1)*head_dim`` (the head's output z_h before W_O mixes heads).
  Blocking/amplifying a head multiplies that slice (`mf_harness.core.hooks`).
* **how lmms-eval prompts it**, as the row's `PromptStyle`, data that the one prompt codec
  (`mf_harness.core.prompting.PromptCodec`) reads: the chat turn is always
  ``[system (if any)] + user[image x n, text]`` rendered by the checkpoint's own chat
  template; a row picks the system prompt, how images are prepared, whether a batch
  nests images per row, extra processor arguments, the default generation length
  and which stop tokens apply. ``upstream`` names the lmms-eval 0.7.3 wrapper whose
  conventions the row reproduces.

A new family is one `ArchRow` here, its builder in `mf_harness.tiny`, and its tiny-model
test (``tests/test_families.py`` is parametrized over this table).

Not in the table, on purpose:

* **DeepSeek-VL2** (``deepseek_vl_v2``). Its decoder would fit (``language.model.layers[i]
  .self_attn.o_proj`` takes ``[batch, seq, heads * v_head_dim]`` in both its MLA and MHA
  attention classes), but its code is not loadable here: it lives in DeepSeek's
  ``deepseek_vl2`` package (not in transformers; transformers 5 ships only DeepSeek-VL v1
  as ``deepseek_vl``), which pins ``transformers==4.38.2`` and imports names transformers 5
  removed (``LlamaFlashAttention2``; its attention calls ``Cache.get_usable_length``);
  and it is driven through its own processor and ``prepare_inputs_embeds`` +
  ``language.generate(inputs_embeds=...)``, not ``AutoModelForImageTextToText`` +
  ``AutoProcessor``. ``trust_remote_code=true`` cannot change any of that; supporting it
  needs a port of that code to transformers 5.
* **Mistral 3** (``mistral3``, e.g. Mistral-Small-3.1-24B-Instruct-2503; lmms-eval's ``mistral3_vl``).
  The decoder would fit (``model.language_model.layers[i].self_attn.o_proj``), but its processor
  cannot be built or loaded without torchvision in transformers 5.24: ``PixtralProcessor`` is
  declared ``@requires(backends=("torchvision", "torch"))`` and its module imports
  ``image_processing_pixtral`` (``from torchvision.transforms.v2 import functional``) at the top, so
  ``transformers.PixtralProcessor`` is a placeholder that raises and the module itself fails to
  import (unlike the other families, a PIL image processor alone does not help). This project runs
  without torchvision: PyPI's torchvision 0.28.0, the release for torch 2.13, is built against the
  CUDA torch and fails to import beside the CPU one (``RuntimeError: operator torchvision::nms does
  not exist``), so no test here can build these processors (nor Llama 4's and Molmo 2's below).
  Pixtral (mistral-community/pixtral-12b, ``model_type`` ``llava`` with a ``pixtral`` vision tower) has the same
  processor: it would load through the ``llava`` row, untested here for that reason.
  Adding Mistral 3 also needs a second render path: that wrapper writes image prompts by hand
  (``<s>[INST][IMG]\n{prompt}[/INST]``, ``Image k: [IMG]\n`` per image when several) and uses the
  chat template only for text-only prompts.
* **Llama 4** (``llama4``, Llama-4-Scout-17B-16E / Maverick-17B-128E; lmms-eval's ``llama4_scout``). The site
  exists in every layer (``language_model.model.layers[i].self_attn.o_proj``, input
  ``[batch, seq, heads * head_dim]`` also in the no-RoPE and chunked-attention layers; the MoE is in the MLP),
  but its processor cannot be built or loaded without torchvision in transformers 5.24: its only image
  processor, ``Llama4ImageProcessor``, is a ``TorchvisionBackend`` whose module imports
  ``torchvision.transforms.v2`` at the top (the auto mapping lists no PIL backend for ``llama4``), so
  ``transformers.Llama4ImageProcessor`` is a placeholder that raises ``ImportError``.
* **Molmo 2** (``molmo2``, allenai/Molmo2-*; lmms-eval 0.7.3 has no wrapper for it). The site exists
  (``model.language_model.layers[i].self_attn.o_proj``), but as for Llama 4 its only image processor,
  ``Molmo2ImageProcessor``, is a ``TorchvisionBackend`` (no PIL backend in the auto mapping), a placeholder
  that raises ``ImportError`` without torchvision; ``Molmo2Processor`` cannot be built or loaded.

Per-layer head widths: **Gemma 4** (``gemma4``, e.g. google/gemma-4-31B-it, gemma-4-26B-A4B-it, gemma-4-E2B/E4B-it;
lmms-eval's ``gemma4``). Sliding-window layers have ``head_dim``-wide heads (256) and full-attention layers
``global_head_dim``-wide ones (512): transformers' heterogeneous config (``config.per_layer_config[layer].head_dim``)
gives each layer's width, `HeadGeometry.width` carries it, and the hooks and analyses slice every layer at its own
width (``HeadGeometry.head_dim`` raises where widths differ, so no code can use one width for all). Gemma 4's final
logits are soft-capped (``final_logit_softcapping`` 30): answers and margins use the model's logits; the logit lens
and DLA use the linear unembedding, as for every family (the cap is monotonic per token); with Gemma's post-norms,
per-layer inputs and layer scalars the lens's attention/MLP split and DLA are approximate there.
KV-shared layers (Gemma 4 E2B/E4B, ``num_kv_shared_layers``: the last 20 of 35 layers in E2B) attend over the keys
and values of an earlier layer and write none of their own, so their outputs at a prompt position reach only that
position's own logits, and ``generate``'s prefill (eager, sdpa) computes them at the last position only
(``Gemma4TextModel._maybe_slice_kv_shared_inputs``). They have no heads here, for every scope (`kv_shared_layers`;
like a hybrid decoder's linear-attention layers below): an edit at the instruction there could only be a no-op,
and the hooks could not reach positions that are never computed. Edits at the last position or on generated tokens
there would act: a limitation (the hooks would need chunks sliced to the kept positions). Knockouts cut their
attention edges (`mf_harness.analysis.measures.attention_layers`).

Hybrid decoders: **Qwen3.5** (``qwen3_5``, and ``qwen3_5_moe`` with MoE MLPs) interleaves linear-attention
(Gated DeltaNet, ``linear_attn``) layers, which have no per-head site, with full-attention layers that do. The row's
``head_layer_types`` names the config ``layer_types`` with heads; `geometry` keeps the model's own
layer indices (``num_layers`` counts every decoder layer, ``head_layers`` lists those with heads,
``total_heads`` counts only theirs), `resolve` returns None for the other layers' attention and
o_proj, and a spec naming one of them is rejected when bound to the model
(`InterventionSpec.validate_for` with ``head_layers``; `intervene` checks a plan too).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch.nn as nn

from mf_harness.errors import MfHarnessError

__all__ = ["ArchRow", "PromptStyle", "DEFAULT_SYSTEM_PROMPT", "ARCH", "MODEL_NAMES", "arch_for", "resolve", "text_decoder", "module_at",
           "HeadGeometry", "geometry"]


@dataclass(frozen=True)
class PromptStyle:
    """How lmms-eval's wrapper for a family prompts it (read by `mf_harness.core.prompting.PromptCodec`)."""

    image_token: str = "<image>"  # what the chat template writes for one image (expanded by the processor)
    system_prompt: str | None = None  # default system turn (model_args system_prompt= overrides)
    system_as_parts: bool = True  # system content as [{"type": "text", ...}] (False: a plain string)
    image_prep: str = "none"  # see mf_harness.lmms.images.IMAGE_PREP: "qwen_jpeg" | "qwen" | "jpeg" | "none"
    nested_images: bool = False  # processor wants images as [[row 0 images], [row 1 images], ...]
    processor_kwargs: tuple[tuple[str, Any], ...] = ()  # passed to every processor call
    chat_template_kwargs: tuple[tuple[str, Any], ...] = ()  # passed to apply_chat_template (enable_thinking=...)
    max_new_tokens: int = 1024  # default when the task sets none
    stop: str = "tokenizer"  # generate's eos: "tokenizer" (its eos token) | "generation_config" (the model's)
    min_pixels: int | None = None  # Qwen image resize bounds (qwen-vl-utils' smart_resize)
    max_pixels: int | None = None


@dataclass(frozen=True)
class ArchRow:
    # --- where: module paths from the top-level model
    family: str  # config.model_type
    layers: str  # the text decoder's layer list
    final_norm: str  # the text model's final norm (logit lens)
    lm_head: str = "lm_head"
    attn: str = "self_attn"  # attention module inside a decoder layer
    o_proj: str = "o_proj"  # output projection inside the attention module
    text_config: str = "text_config"  # config attribute with the text model's sizes ("" = top level)
    norm_offset: float = 0.0  # the final norm scales by (norm_offset + weight) (Gemma: 1)
    rope_3d: bool = False  # multimodal RoPE: the model derives positions itself; never pass 1-D position_ids
    # hybrid decoders: the config ``layer_types`` whose layers have heads (empty: every layer has them)
    head_layer_types: tuple[str, ...] = ()
    # --- how lmms-eval names and prompts it
    alias: str = "intervened_hf"  # the family's lmms-eval model name (all names are one class)
    upstream: str = ""  # the lmms-eval 0.7.3 wrapper followed
    prompt: PromptStyle = PromptStyle()


DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."  # lmms-eval's system turn for Qwen and Gemma 3
_QWEN_PROMPT = dict(image_token="<|image_pad|>", system_prompt=DEFAULT_SYSTEM_PROMPT, system_as_parts=False)
_QWEN = dict(layers="model.language_model.layers", final_norm="model.language_model.norm", rope_3d=True,
             alias="intervened_qwen")
_LM = dict(layers="model.language_model.layers", final_norm="model.language_model.norm")
_IDEFICS = dict(layers="model.text_model.layers", final_norm="model.text_model.norm", upstream="idefics2 (simple)",
                prompt=PromptStyle(nested_images=True, stop="generation_config"))  # no Idefics3/SmolVLM wrapper

_QWEN3_5_PROMPT = PromptStyle(**_QWEN_PROMPT, image_prep="qwen", processor_kwargs=(("do_resize", False),),
                              chat_template_kwargs=(("enable_thinking", True),), max_new_tokens=1024,
                              min_pixels=64 * 32 * 32, max_pixels=128 * 32 * 32)
_GLM4V_PROMPT = PromptStyle(image_token="<|image|>", system_as_parts=False, image_prep="jpeg", max_new_tokens=8192)

ARCH: dict[str, ArchRow] = {
    row.family: row
    for row in (
        ArchRow("qwen2_5_vl", **_QWEN, upstream="qwen2_5_vl (simple)",
                prompt=PromptStyle(**_QWEN_PROMPT, image_prep="qwen_jpeg", max_new_tokens=32768,
                                   min_pixels=256 * 28 * 28, max_pixels=1605632)),
        ArchRow("qwen2_vl", **_QWEN, upstream="qwen2_vl (simple)",
                prompt=PromptStyle(**_QWEN_PROMPT, image_prep="qwen_jpeg", max_new_tokens=128, min_pixels=3136,
                                   max_pixels=602112)),
        ArchRow("qwen3_vl", **_QWEN, upstream="qwen3_vl (simple)",
                prompt=PromptStyle(**_QWEN_PROMPT, image_prep="qwen", processor_kwargs=(("do_resize", False),),
                                   max_new_tokens=128, min_pixels=256 * 28 * 28, max_pixels=1605632)),
        # Qwen3-VL-MoE: the MoE is in the MLP; attention (and so the per-head site, self_attn.o_proj)
        # is Qwen3-VL's. lmms-eval's qwen3_vl wrapper loads both (Qwen3VLMoe... when the id has "A<n>B").
        ArchRow("qwen3_vl_moe", **_QWEN, upstream="qwen3_vl (simple)",
                prompt=PromptStyle(**_QWEN_PROMPT, image_prep="qwen", processor_kwargs=(("do_resize", False),),
                                   max_new_tokens=128, min_pixels=256 * 28 * 28, max_pixels=1605632)),
        # Qwen3.5: hybrid decoder; only its full-attention layers (self_attn.o_proj, input = the sigmoid-gated
        # head outputs) have heads; its Gated DeltaNet layers (linear_attn) have none: a spec naming one is
        # rejected when bound to the model. Layer indices are the model's own.
        ArchRow("qwen3_5", **_QWEN, upstream="qwen3_5 (simple)", head_layer_types=("full_attention",),
                prompt=_QWEN3_5_PROMPT),
        # Qwen3.5-MoE (Qwen3.5-35B-A3B, -397B-A17B): Qwen3.5's hybrid attention, MoE in the MLP; the per-head site is
        # the full-attention layers' self_attn.o_proj as in qwen3_5 (lmms-eval's qwen3_5 wrapper loads both)
        ArchRow("qwen3_5_moe", **_QWEN, upstream="qwen3_5 (simple)", head_layer_types=("full_attention",),
                prompt=_QWEN3_5_PROMPT),
        ArchRow("internvl", **_LM, alias="intervened_internvl", upstream="internvl_hf (chat)",
                prompt=PromptStyle(image_token="<IMG_CONTEXT>",
                                   processor_kwargs=(("min_patches", 1), ("max_patches", 12)))),
        ArchRow("llava", **_LM, alias="intervened_llava", upstream="llava_hf (chat)"),
        ArchRow("llava_next", **_LM, alias="intervened_llava", upstream="llava_hf (chat)"),
        ArchRow("llava_onevision", **_LM, alias="intervened_llava", upstream="llava_hf (chat)"),
        ArchRow("gemma3", **_LM, norm_offset=1.0, alias="intervened_gemma3", upstream="gemma3 (simple)",
                prompt=PromptStyle(image_token="<start_of_image>", system_prompt=DEFAULT_SYSTEM_PROMPT,
                                   image_prep="jpeg", nested_images=True, max_new_tokens=128,
                                   stop="generation_config")),
        # GLM-4.1V / GLM-4.6V-Flash (glm4v) and GLM-4.5V / GLM-4.6V (glm4v_moe: the MoE is in the MLP; the per-head
        # site is the attention's self_attn.o_proj as in glm4v). 3-D mRoPE positions come from the model's
        # get_rope_index (mm_token_type_ids from the processor), as in the Qwen rows. lmms-eval's glm4v wrapper: no
        # system turn unless given (a plain string), JPEG q85 data URLs, eos = the tokenizer's, 8192 new tokens.
        ArchRow("glm4v", **_LM, rope_3d=True, upstream="glm4v (simple)", prompt=_GLM4V_PROMPT),
        ArchRow("glm4v_moe", **_LM, rope_3d=True, upstream="glm4v (simple)", prompt=_GLM4V_PROMPT),
        # Gemma 4: per-layer head widths (full-attention layers global_head_dim, sliding ones head_dim; see
        # HeadGeometry.width); KV-shared layers (E2B/E4B) have no editable heads (see the module doc); 26B-A4B's MoE
        # is in the MLP (enable_moe_block), the per-head site is still self_attn.o_proj. lmms-eval's
        # gemma4 wrapper: system turn as parts, JPEG data URLs, max_soft_tokens=280 per image, 128 new tokens,
        # generate's eos from the generation config (<eos>, <turn|>, <|tool_response>).
        ArchRow("gemma4", **_LM, alias="intervened_gemma4", upstream="gemma4 (simple)",
                prompt=PromptStyle(image_token="<|image|>", system_prompt=DEFAULT_SYSTEM_PROMPT, image_prep="jpeg",
                                   nested_images=True, processor_kwargs=(("max_soft_tokens", 280),),
                                   max_new_tokens=128, stop="generation_config")),
        ArchRow("idefics3", **_IDEFICS, alias="intervened_idefics3"),
        ArchRow("smolvlm", **_IDEFICS, alias="intervened_smolvlm"),
    )
}


# every lmms-eval name of the one model class
MODEL_NAMES = ("intervened_hf", *sorted({row.alias for row in ARCH.values()} - {"intervened_hf"}))


def module_at(obj, path: str):
    """The attribute at a dotted ``path`` of ``obj`` (digits index lists): ``module_at(model, row.final_norm)``."""
    for part in path.split(".") if path else []:
        obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    return obj


class ArchError(MfHarnessError, ValueError):
    """A checkpoint whose family has no row in the table (so no known per-head site)."""


def arch_for(model_or_config) -> ArchRow:
    config = getattr(model_or_config, "config", model_or_config)
    family = getattr(config, "model_type", None)
    if family not in ARCH:
        raise ArchError(
            f"model family {family!r} is not in mf-harness's architecture table; known: {', '.join(sorted(ARCH))}"
        )
    return ARCH[family]


@dataclass(frozen=True)
class HeadGeometry:
    """Head layout of a text decoder. Layers keep the model's own indices: ``num_layers`` counts every
    decoder layer; ``head_layers`` are those with a per-head site (all of them unless the decoder is hybrid,
    e.g. Qwen3.5, whose linear-attention layers have none). Every layer has ``num_heads`` heads; their width
    is ``width(layer)``: one width in most decoders, per layer in heterogeneous ones (Gemma 4: full-attention
    layers have ``global_head_dim``-wide heads, sliding-window layers ``head_dim``-wide ones)."""

    num_layers: int
    num_heads: int
    head_dims: tuple[int, ...]  # the head width of each layer (model's indices)
    attn_layers: tuple[int, ...] | None = None  # the layers with heads (None: every layer)

    def __post_init__(self):
        if len(self.head_dims) != self.num_layers:
            raise ValueError(f"head_dims has {len(self.head_dims)} entries for {self.num_layers} layers")

    @property
    def head_layers(self) -> tuple[int, ...]:
        return tuple(range(self.num_layers)) if self.attn_layers is None else self.attn_layers

    @property
    def total_heads(self) -> int:
        return len(self.head_layers) * self.num_heads

    def width(self, layer: int) -> int:
        """The width of layer ``layer``'s heads: head ``h`` is ``o_proj`` input slice ``h*w:(h+1)*w``."""
        return self.head_dims[layer]

    @property
    def head_dim(self) -> int:
        """The one head width of a decoder whose layers all share it; an error where widths differ per layer
        (use `width`), so no code can slice a heterogeneous decoder with one layer's width."""
        widths = sorted({self.head_dims[i] for i in self.head_layers})
        if len(widths) != 1:
            raise ArchError(f"head widths differ per layer ({', '.join(map(str, widths))}): use width(layer)")
        return widths[0]


def geometry(model_or_config) -> HeadGeometry:
    config = getattr(model_or_config, "config", model_or_config)
    row = arch_for(config)
    tc = module_at(config, row.text_config) if row.text_config else config
    n = tc.num_hidden_layers
    per_layer = _per_layer(tc, n)
    heads = {per_layer[i].num_attention_heads for i in range(n)}
    if len(heads) != 1:  # a per-layer head count: no (layer, head) grid to name heads in
        raise ArchError(f"{row.family}: the number of attention heads differs per layer ({sorted(heads)}); "
                        "mf-harness needs one head count for every layer")
    (num_heads,) = heads
    widths = tuple((getattr(per_layer[i], "head_dim", None) or per_layer[i].hidden_size // num_heads)
                   for i in range(n))
    with_heads = set(range(n))
    if row.head_layer_types:
        types = list(getattr(tc, "layer_types", None) or [])
        if len(types) != n:
            raise ArchError(f"{row.family}: config.layer_types has {len(types)} entries for {n} layers")
        with_heads &= {i for i, t in enumerate(types) if t in row.head_layer_types}
    with_heads -= set(kv_shared_layers(tc))
    attn_layers = None if len(with_heads) == n else tuple(sorted(with_heads))
    return HeadGeometry(n, num_heads, widths, attn_layers)


def kv_shared_layers(text_config) -> tuple[int, ...]:
    """Layers that reuse an earlier layer's keys and values (Gemma 4 E2B/E4B: ``num_kv_shared_layers``): their
    outputs at a prompt position reach only that position's own logits (see the module doc), so they have no heads
    mf-harness edits."""
    n, shared = text_config.num_hidden_layers, getattr(text_config, "num_kv_shared_layers", 0) or 0
    return tuple(range(n - shared, n))


def _per_layer(tc, n: int) -> list:
    """Each layer's config: transformers' heterogeneous configs (``per_layer_config``, e.g. Gemma 4's
    ``global_head_dim`` on full-attention layers) resolve per-layer attributes there; others are one config."""
    if getattr(tc, "is_heterogeneous", False):
        view = tc.per_layer_config
        if len(view) != n:
            raise ArchError(f"per_layer_config has {len(view)} layers, config says {n}")
        return [view[i] for i in range(n)]
    return [tc] * n


def text_decoder(model: nn.Module) -> nn.Module:
    """The text decoder that holds the layers (every forward of the model, the inner model or the
    language model alone runs through it once)."""
    row = arch_for(model)
    path = row.layers.rsplit(".", 1)[0] if "." in row.layers else ""
    try:
        return module_at(model, path)
    except (AttributeError, IndexError, TypeError) as e:
        raise RuntimeError(f"{row.family}: text decoder not found at {path!r} ({e})") from e


_RESOLVED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def resolve(model: nn.Module) -> tuple[ArchRow, list[nn.Module], list[nn.Module], list[nn.Linear]]:
    """Return (row, decoder layers, attention modules, o_proj modules); raise if any site is missing.
    The lists are indexed by the model's own layer index; in a hybrid decoder the entries of layers
    without heads (not in ``geometry(model).head_layers``) are None.
    Resolved once per model object (the sites of a loaded model do not move)."""
    hit = _RESOLVED.get(model)
    if hit is not None:
        return hit
    row = arch_for(model)
    geo = geometry(model)
    try:
        layers = list(module_at(model, row.layers))
    except (AttributeError, IndexError, TypeError) as e:
        raise RuntimeError(f"{row.family}: decoder layers not found at {row.layers!r} ({e})") from e
    if len(layers) != geo.num_layers:
        raise RuntimeError(f"{row.family}: found {len(layers)} layers at {row.layers!r}, config says {geo.num_layers}")
    attns, oprojs = [], []
    with_heads = set(geo.head_layers)
    for i, layer in enumerate(layers):
        if i not in with_heads:  # a hybrid decoder's layer without heads (e.g. linear attention), a KV-shared one
            if row.head_layer_types and getattr(layer, row.attn, None) is not None:
                raise RuntimeError(f"{row.family}: layer {i} has {row.attn} but its config layer type has no heads")
            attns.append(None)
            oprojs.append(None)
            continue
        attn = getattr(layer, row.attn, None)
        o_proj = getattr(attn, row.o_proj, None) if attn is not None else None
        if not isinstance(o_proj, nn.Linear):
            raise RuntimeError(f"{row.family}: layer {i} has no {row.attn}.{row.o_proj} linear layer")
        if o_proj.in_features != geo.num_heads * geo.width(i):
            raise RuntimeError(
                f"{row.family}: layer {i} {row.o_proj} takes {o_proj.in_features} features, "
                f"expected heads*head_dim = {geo.num_heads}*{geo.width(i)}"
            )
        attns.append(attn)
        oprojs.append(o_proj)
    _RESOLVED[model] = (row, layers, attns, oprojs)
    return row, layers, attns, oprojs
