"""`intervened_hf`: lmms-eval's model for every HF-native VLM family in the table, with a head intervention.

One thin lmms-eval model (`IntervenedHF`) for any ``AutoModelForImageTextToText``
checkpoint whose ``model_type`` is a row of `mf_harness.core.arch.ARCH`. Registered as
``intervened_hf`` with the aliases ``intervened_qwen``, ``intervened_internvl``,
``intervened_llava``, ``intervened_gemma3``, ``intervened_gemma4``, ``intervened_idefics3`` and
``intervened_smolvlm``: synonyms, the family comes from the checkpoint's config.

Prompting follows lmms-eval's own wrapper for the family (the row's ``upstream``), through
the checkpoint's `mf_harness.core.prompting.PromptCodec` (``lm.codec``): rendering, encoding,
scopes and plans; images are prepared as that wrapper does (`mf_harness.lmms.images`); greedy
unless ``temperature > 0``. So with an empty spec the outputs are those of the unmodified
model as upstream prompts it. On top of that:

* every forward runs inside `mf_harness.core.hooks.intervene` with a per-row plan built from
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
left-padded without Gemma 3/4's ``pad_to_multiple_of=8``; InternVL and LLaVA run batches
(their upstream wrappers assert batch size 1); Idefics3/SmolVLM (no wrapper in lmms-eval
0.7.3) follow the idefics2 wrapper but keep the checkpoint's image splitting.

Model args (``--model_args``): ``pretrained`` (hub id, local dir, or ``embedded``),
``device``, ``device_map``, ``dtype`` (default bfloat16 on CUDA, float32 on CPU),
``attn_implementation``, ``min_pixels``, ``max_pixels`` (Qwen families),
``system_prompt`` (default: the family's; ``none`` for no system turn),
``max_new_tokens`` (default for tasks that set none; upstream's per family),
``instruction_field`` (doc field with the instruction text, default ``instruction``),
``revision``, ``trust_remote_code``, plus the spec keys of `mf_harness.core.spec`.
"""

from __future__ import annotations

import copy
import os
from typing import Any, List, Sequence, Tuple

import torch
from loguru import logger
from PIL import Image
from tqdm import tqdm

from lmms_eval import utils as lmms_utils
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from mf_harness.checks import parse_bool, positive_int
from mf_harness.core.arch import ArchRow, arch_for, geometry, resolve
from mf_harness.core.hooks import HeadPlan, intervene
from mf_harness.core.prompting import FAMILY_DEFAULT, PromptCodec
from mf_harness.core.spec import InterventionSpec, spec_from_model_args
from mf_harness.errors import MfHarnessError
from mf_harness.lmms.images import ImagePrep, load_visuals
from mf_harness.lmms.loading import load_config, load_model

__all__ = ["IntervenedHF", "parse_gen_kwargs"]


def parse_gen_kwargs(gen_kwargs: dict | None, default_max_new_tokens: int,
                     default_until: Sequence[str] = ()) -> tuple[dict, list[str]]:
    """lmms-eval's ``gen_kwargs`` -> (HF ``generate`` kwargs, stop strings), as the upstream wrappers read them:
    greedy unless ``temperature > 0`` or ``do_sample``; ``until`` a string or a list ("\\n\\n" dropped)."""
    gk = dict(gen_kwargs or {})
    until = gk.pop("until", None)
    if until is None:
        until = list(default_until)
    if isinstance(until, str):
        until = [until]
    elif not isinstance(until, list):
        raise ValueError(f"Expected `gen_kwargs['until']` to be a str or a list, got {type(until)}")
    until = [u for u in until if u and u != "\n\n"]
    temperature = gk.get("temperature", 0.0) or 0.0
    do_sample = bool(gk.get("do_sample", False)) or temperature > 0
    kw = {"max_new_tokens": int(gk.get("max_new_tokens", default_max_new_tokens)), "do_sample": do_sample,
          "num_beams": int(gk.get("num_beams", 1) or 1)}
    if do_sample:
        kw.update(temperature=temperature, top_p=gk.get("top_p"))
    else:
        kw.update(temperature=None, top_p=None)
    return kw, until


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
        system_prompt: Any = FAMILY_DEFAULT,
        max_new_tokens: int | None = None,
        instruction_field: str = "instruction",
        revision: str | None = None,
        use_cache: bool = True,
        max_batch_size: int | None = None,
        trust_remote_code: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        # everything that can fail without the weights fails before they load; model_args arrive as text,
        # so booleans are parsed strictly ("no" must not become True) and counts must be positive
        trust_remote_code = parse_bool(trust_remote_code, "trust_remote_code")
        use_cache = parse_bool(use_cache, "use_cache")
        batch_size = positive_int(batch_size, "batch_size")
        if max_new_tokens is not None:
            max_new_tokens = positive_int(max_new_tokens, "max_new_tokens")
        min_pixels = None if min_pixels is None else positive_int(min_pixels, "min_pixels")
        max_pixels = None if max_pixels is None else positive_int(max_pixels, "max_pixels")
        if device is not None:
            try:
                torch.device(device)
            except (RuntimeError, TypeError):
                raise MfHarnessError(f"device must be a torch device such as cpu, cuda, cuda:1 or mps; got {device!r}") \
                    from None
        config = load_config(pretrained, revision, trust_remote_code)
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
        self.spec.validate_for(self.geometry.num_layers, self.geometry.num_heads, model_name=str(pretrained),
                                head_layers=self.geometry.attn_layers)

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
        style = self.row.prompt
        uses_pixels = style.min_pixels is not None
        if not uses_pixels and (min_pixels is not None or max_pixels is not None):
            logger.warning(f"min_pixels/max_pixels apply to the Qwen families only; ignored for {self.family}")
            min_pixels = max_pixels = None
        if uses_pixels and pretrained != "embedded":
            min_pixels = style.min_pixels if min_pixels is None else min_pixels
            max_pixels = style.max_pixels if max_pixels is None else max_pixels
        self._model, self.processor = load_model(
            pretrained, device=device, device_map=device_map, dtype=dtype, attn_implementation=attn_implementation,
            revision=revision, min_pixels=min_pixels, max_pixels=max_pixels, trust_remote_code=trust_remote_code,
        )
        # inputs go where the embeddings are (device_map="auto" may put them anywhere)
        self._device = self._model.get_input_embeddings().weight.device if device_map else torch.device(device)
        ip = self.processor.image_processor
        if uses_pixels:
            self.image_prep = ImagePrep(
                style.image_prep,
                int(min_pixels if min_pixels is not None else getattr(ip, "min_pixels", None)
                    or ip.size["shortest_edge"]),
                int(max_pixels if max_pixels is not None else getattr(ip, "max_pixels", None)
                    or ip.size["longest_edge"]),
                int(getattr(ip, "patch_size", 14) * getattr(ip, "merge_size", 2)))
        else:
            self.image_prep = ImagePrep(style.image_prep)
        self._tokenizer = self.processor.tokenizer
        self.pretrained = pretrained
        self.default_max_new_tokens = max_new_tokens or style.max_new_tokens
        self.use_cache = use_cache
        self.batch_size_per_gpu = batch_size
        self._config = self._model.config
        self._owns_model = True
        resolve(self._model)  # every hook site must exist before the first request
        self.codec = PromptCodec(self.processor, self.row, self.geometry, self._config, system_prompt=system_prompt,
                                 instruction_field=instruction_field, name=str(pretrained))
        logger.info(f"{self.model_name}: {pretrained} ({self.family}, {self.geometry.num_layers} layers x "
                    f"{self.geometry.num_heads} heads, rank {self._rank}/{self._world_size}), "
                    f"spec: {self.spec.describe()}")

    def with_spec(self, spec: InterventionSpec) -> "IntervenedHF":
        """A view of this model (same weights, processor and codec, nothing reloaded) under ``spec``.
        The view does not own the weights: lmms-eval's ``clean()`` at the end of an evaluation leaves
        them loaded, so one loaded checkpoint serves many evaluations (a sweep's cells)."""
        spec.validate_for(self.geometry.num_layers, self.geometry.num_heads, model_name=str(self.pretrained),
                           head_layers=self.geometry.attn_layers)
        view = copy.copy(self)
        view.spec = spec
        view._owns_model = False
        return view

    def clean(self):
        if self._owns_model:
            super().clean()

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

    @property
    def stop_kwargs(self) -> dict:
        """``generate``'s eos for the family: the tokenizer's eos, or the model's generation config."""
        return {"eos_token_id": self._tokenizer.eos_token_id} if self.row.prompt.stop == "tokenizer" else {}

    # ---------------------------------------------------------------- requests
    def _doc(self, task: str, split: str, doc_id: int) -> dict:
        return self.task_dict[task][split][doc_id]

    def visuals(self, doc_to_visual, doc, label: str) -> list[Image.Image]:
        """The doc's images, prepared as the family's upstream wrapper does ([] for text-only requests)."""
        return load_visuals(doc_to_visual, doc, label, self.image_prep, self.model_name)

    # ------------------------------------------------------------- generation
    def generate_until(self, requests: List[Instance]) -> List[str]:
        res: list[str] = []

        def _collate(x):
            toks = self._tokenizer.encode(x[0])
            return -len(toks), x[0]

        pbar = tqdm(total=len(requests), disable=(self.rank != 0), desc="Model Responding")
        re_ords = lmms_utils.Collator([reg.args for reg in requests], _collate, grouping=True)
        codec = self.codec
        for chunk in re_ords.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visuals, doc_ids, tasks, splits = zip(*chunk)
            kw, until = parse_gen_kwargs(all_gen_kwargs[0], self.default_max_new_tokens,
                                         [self._tokenizer.decode(self.eot_token_id)])
            docs = [self._doc(t, s, d) for t, s, d in zip(tasks, splits, doc_ids)]
            labels = [f"{t} doc {d}" for t, d in zip(tasks, doc_ids)]
            images = [self.visuals(fn, doc, lab) for fn, doc, lab in zip(doc_to_visuals, docs, labels)]
            rendered, user_texts = zip(*(codec.render(c, len(ims)) for c, ims in zip(contexts, images)))
            inputs = codec.encode(list(rendered), images)
            plan = codec.plan([self.spec] * len(contexts), list(rendered), list(user_texts), inputs["input_ids"],
                              inputs["attention_mask"], docs, labels)
            answers = self._generate(inputs, kw, plan)
            for ans, context in zip(answers, contexts):
                for term in until:
                    ans = ans.split(term)[0]
                res.append(ans)
                self.cache_hook.add_partial("generate_until", (context, all_gen_kwargs[0]), ans)
                pbar.update(1)
        pbar.close()
        return re_ords.get_original(res)

    def _generate(self, inputs, kw: dict, plan: HeadPlan | None) -> list[str]:
        if plan is not None and kw["num_beams"] > 1:
            raise MfHarnessError("beam search (num_beams > 1) is not supported with an intervention")
        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        inputs = inputs.to(self.device)
        with torch.inference_mode(), intervene(self._model, plan):
            out = self._model.generate(**inputs, **self.stop_kwargs, **kw, pad_token_id=pad, use_cache=self.use_cache)
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
            images = [self.visuals(fn, doc, lab) for fn, doc, lab in zip(doc_to_visuals, docs, labels)]
            res.extend(self._loglikelihood_batch(list(contexts), list(continuations), images, docs, labels))
            pbar.update(len(chunk))
        pbar.close()
        return re_ords.get_original(res)

    def _loglikelihood_batch(self, contexts, continuations, images, docs, labels) -> list[Tuple[float, bool]]:
        rendered, user_texts = map(list, zip(*(self.codec.render(c, len(ims)) for c, ims in zip(contexts, images))))
        enc = self.codec.encode(rendered, images)
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
        plan = self.codec.plan(specs, rendered, user_texts, ids, att, docs, labels, tail_lengths=tails)
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
