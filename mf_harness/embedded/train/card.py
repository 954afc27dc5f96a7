"""MODEL_CARD.md from the training and evaluation records."""

from __future__ import annotations


import os

from typing import Any, Sequence



def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def model_card(info: dict, results: dict) -> str:
    """MODEL_CARD.md for the checkpoint, from the training summary and `evaluate` + headline results."""
    from mf_harness.embedded.train import synth

    cfg = info["config"]
    L, H = results["heads"]
    mfr = results["mfr"]
    ldar = results["ldar"]
    fmt = lambda ci: f"[{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
    parts = [
        "# Embedded model: a tiny Qwen2.5-VL trained to follow modality instructions",
        "",
        "The default checkpoint behind `pretrained=embedded` and `make demo`. A real "
        "`Qwen2_5_VLForConditionalGeneration` (transformers classes, safetensors) trained on CPU by "
        "`python -m mf_harness.embedded.train` on synthetic modality conflicts, so that MFR, LDAR and head "
        "interventions measure something real without a download. It is a test bed for the harness, "
        "not a model of how large VLMs work: its mechanism was shaped on purpose (see *Training*).",
        "",
        "## Architecture",
        "",
        md_table(["part", "size"], [
            ["text decoder", f"{cfg['num_layers']} layers x {cfg['num_heads']} heads (head dim "
                             f"{cfg['hidden_size'] // cfg['num_heads']}), {cfg['num_kv_heads']} KV heads, hidden "
                             f"{cfg['hidden_size']}, MLP {cfg['intermediate_size']}, mrope"],
            ["vision tower", f"depth {cfg['vision_depth']}, width {cfg['vision_hidden_size']}, patch 14, 2x2 merge: "
                             f"an 84x84 image is 9 image tokens"],
            ["vocabulary", f"{info['vocab']} byte-level BPE tokens trained on the training prompts, Qwen's special "
                           f"tokens and chat template; input and output embeddings tied"],
            ["parameters", f"{info['parameters']:,} (float32, {info['safetensors_bytes'] / 1e6:.2f} MB safetensors)"],
        ]),
        "",
        "## Data (`mf_harness.embedded.train.synth`)",
        "",
        "Rows in the `mfr` schema, drawn like the bundled eval set (84x84, one shape in one of ten colours, or one "
        "to four shapes for counting; wider jitter). Three MC2 kinds: `color`, `counting`, `object_recognition` "
        f"({', '.join(f'{x:.0%}' for x in cfg['kinds'])} of the rows); {cfg['conflict']:.0%} of rows conflict (the "
        "context contradicts the image), the rest agree. "
        "Half follow the text, half the image. The prompt is the `mfr` task's "
        "(`Text context: {context}\\n{instruction} {question}\\nAnswer the question with a single word.`) in the "
        "Qwen chat template with the system prompt `You are a helpful assistant.`, and the image goes "
        "through the wrapper's JPEG q85 round trip (`qwen_fetch_image`): training sees what evaluation feeds.",
        "",
        f"General capability rows ({cfg.get('capability', 0):.0%} of the rows, `synth.capability_row`): the same "
        "drawings with nothing to arbitrate, as the `mf_shapes_*` tasks ask them (`tasks/capability/shapes.py`): "
        "the question and the image with no text context; the context and the question with no image; both, "
        "agreeing; and a caption request (`Describe the image in a few words.` and two other phrasings) answered "
        "with a short caption (`a red circle`, `three blue squares`). None carries a modality instruction, and "
        "the routing and anchor losses below skip them.",
        "",
        "Held out of training:",
        "",
        f"- colour conflicts: the {len(synth.HELDOUT_COLOR_PAIRS)} ordered (image colour, text colour) pairs of the "
        f"bundled eval set never occur in training; training conflicts use the other {len(synth.TRAIN_COLOR_PAIRS)};",
        "- items: the eval images come from `mf_harness.tasks.mfr.mfr_data`'s own generator and seed (counting and "
        "object_recognition have only 12 ordered answer pairs each; all occur in training, on other images);",
        "- instruction phrasings: training uses " + "; ".join(f"`{t}`" for t in synth.TRAIN_INSTRUCTIONS["text"])
        + " (and their image-following mirrors); held out: "
        + "; ".join(f"`{t}`" for t in synth.HELDOUT_INSTRUCTIONS["text"]) + " (and mirrors).",
        "",
        "## Training (`mf_harness.embedded.train`)",
        "",
        md_table(["setting", "value"], [[k, f"`{v}`"] for k, v in cfg.items()]),
        "",
        f"- {cfg['steps']} steps of {cfg['batch_size']} rows, AdamW (betas 0.9/0.98), lr {cfg['lr']} with "
        f"{cfg['warmup']} warmup steps and cosine decay, seed {cfg['seed']}, {cfg['threads']} torch thread(s).",
        f"- Training took **{info['train_seconds']:.0f} s** on the machine that built it "
        f"({info.get('machine', 'CPU')}).",
        f"- Weights sha256 (parameters in name order, float32 bytes): `{info['weights_sha256']}`. The same "
        "config, seed and thread count give the same hash on the same machine "
        "(`tests/test_train.py`; the full retrain is the opt-in slow test).",
        "- Loss: cross-entropy on the answer token and `<|im_end|>` (the answer is written as the "
        "space-prefixed word token, e.g. ` red`, which the MFR matcher normalises to `red`), plus training-only "
        "auxiliary losses, none of which adds anything to the model:",
        f"  - *routing* (on in {cfg['route_prob']:.0%} of batches, off at evaluation): an attention mask stops every "
        "position after the instruction (question, format line, template, answer) from reading the image and "
        "the context, so the content can reach the answer only through the instruction tokens;",
        f"  - *anchor* (weight {cfg['anchor']}): the logit lens of the last instruction token after layer "
        f"{cfg['anchor_layer']} names what the followed modality says (its colour, count, shape, each as a softmax "
        "over that attribute's words);",
        f"  - *dense* (weight {cfg['dense']}): the answer is also trained at every position from the question's "
        "last token to the end of the prompt;",
        f"  - *vision lens* (weight {cfg['aux_vision']}): the mean image token, read through the final norm and "
        "the LM head, names the drawn colour, count and shape.",
        "",
        "## Held-out modality following (bundled `mfr` set, lmms-eval, `intervened_qwen`)",
        "",
        md_table(["instruction phrasing", "MFR text [95% CI]", "MFR vision [95% CI]", "n"], [
            [name, f"{v['text']['mfr']:.3f} {fmt(v['text']['ci95'])}",
             f"{v['vision']['mfr']:.3f} {fmt(v['vision']['ci95'])}", v["text"]["n"]] for name, v in mfr.items()
        ]),
        "",
        "`paper` is the eval default and a training phrasing; the two others never occur in training "
        "(`MF_HARNESS_INSTRUCTION=focus`; the custom pair via `MF_HARNESS_INSTRUCTION_TEXT/_VISION`).",
        "",
        "## General capability in its world (bundled `mf_shapes_*` tasks, lmms-eval, no intervention)",
        "",
        "No conflict, no modality instruction; images and items held out of training (their own seed). "
        "`exact_match`: the normalised answer equals the truth; `shapes_CIDEr`: pycocoevalcap CIDEr against three "
        "reference captions (x100). These are the capability tasks `mf-harness score` and `make demo` score head "
        "sets against on this model.",
        "",
        md_table(["task", "metric", "value", "n"], [
            [t, m, f"{100 * v:.1f}", r["n"]] for t, r in results.get("capability", {}).items()
            for m, v in r.items() if m != "n"
        ]),
        "",
        "## Where it settles the conflict: LDAR by layer (logit lens)",
        "",
        "Measured by the harness (`mf_harness.analysis.measures.lens_and_attribution`, what `mf-harness lens` "
        "reports). s_l(i, E) = max over t in E of (W_U . FinalNorm(h_l(i)))_t, with h_l the output of layer l "
        "and E the first tokens of the answer's forms (bare, capitalised, space-prefixed). LDAR_l is the share "
        "of docs whose 1[R_l(E_c) > R_l(E_o)] equals the model's final decision (max over E_c of its output "
        "logits above max over E_o). Readouts R_l(E): `instruction (top-3)` is the paper's, the mean of "
        "s_l(i, E) over the 3 instruction tokens with the highest s_l(i, E); `instruction (top-1)` the same with "
        "k = 1; `instruction (final token)` is s_l at the instruction's last token (`.`), where the anchor loss "
        "trains the decision; `last position` is s_l(last, E). Bundled set (240 docs per direction), `paper` "
        "phrasing.",
        "",
        md_table(["follow", "readout"] + [f"after layer {l}" for l in range(L)], [
            [f, sc.replace("_top1", " (top-1)").replace("_final_token", " (final token)")
             .replace("instruction", "instruction (top-3)" if sc == "instruction" else "instruction")
             .replace("last", "last position")] + [f"{x:.3f}" for x in ldar[f][sc]]
            for f in ("text", "vision") for sc in ldar[f]
        ]),
        "",
        "## Heads",
        "",
        f"Ranked by single-head ablation (the total effect; `mf_harness.analysis.measures.ablation_effects`, "
        f"what `mf-harness discover --method ablation` ranks by): block one head at a scope and measure the mean "
        f"drop of the compliant-minus-competing logit margin at the last prompt position, over "
        f"{results['ranking_rows']} generator rows per direction (`synth.heldout_rows`, seed "
        f"{results['ranking_seed']}; not the eval set). Top 8 (effect in logits):",
        "",
        md_table(["follow / scope", "top heads (effect)"], [
            [key, ", ".join(f"{h} ({results['effects'][key][int(h[1:h.index('H')])][int(h[h.index('H') + 1:])]:.2f})"
                            for h in results["ranking"][key][:8])] for key in results["ranking"]
        ]),
        "",
        "Sweep (final-logit margin > 0 as a fast proxy of MFR, bundled set): the targeted top-k blocked vs k "
        "random heads from any layer (the sweep's `random_any` control; mean of 5 seeds):",
        "",
        md_table(["follow / scope / k", "targeted", "random (mean)", "random per seed"], [
            [key, f"{v['targeted']:.3f}", f"{sum(v['random']) / len(v['random']):.3f}",
             " ".join(f"{x:.3f}" for x in v["random"])] for key, v in results["sweep"].items()
        ]),
        "",
        "Headline (lmms-eval `intervened_qwen` on the bundled set; CIs: Wilson for one run, Student t over the "
        "5 random seeds, paired bootstrap over docs for the gap):",
        "",
        md_table(["follow", "scope", "k", "heads", "original", "targeted", "random (5 seeds)", "gap [95% CI]"], [
            [h["follow"], h["scope"], h["k"], " ".join(h["heads"]),
             f"{h['original']['mfr']:.3f}", f"{h['targeted']['mfr']:.3f} {fmt(h['targeted']['ci95'])}",
             f"{h['random']['mfr_mean']:.3f} {fmt(h['random']['ci95_over_seeds'])}",
             f"{h['gap']:.3f} {fmt(h['gap_ci95_paired_bootstrap'])}"] for h in results["headlines"]
        ]),
        "",
        "Spec files: " + ", ".join(f"`interventions/{p}`" for p in results.get("spec_files", [])) + ".",
        "",
        "## The harness's own discovery (what `make demo` runs)",
        "",
        "`make demo` does not reuse the rankings above: it ranks heads with the harness, "
        "`mf-harness discover --model-args pretrained=embedded --tasks mfr_dev_text,mfr_dev_vision "
        "--method ablation --ablation-scope instruction` (the `mfr_dev` split: 96 rows held out of training and of "
        "the bundled eval set; output committed as `interventions/embedded/heads.csv`), then sweeps the top k "
        "(`interventions/embedded/demo.json`) blocked at the instruction tokens and at the last position against "
        "two random controls of 5 seeds each: k heads from any layer, and k heads matched layer by layer (the "
        "paper's control). Most of this model's routing heads sit in layer 0, which has 8 heads, so at k = 8 the "
        "layer-matched control is nearly the targeted set itself and measures layer 0 against the rest, not "
        "head specificity; here the any-layer control is the one that tests specificity (on a 28-layer model "
        "the paper's control is the stricter, right one). The README shows the demo's table.",
        "",
        "## What this model is and is not",
        "",
    ]
    parts += [f"- {line}" for line in results.get("notes", [])]
    parts += [
        "",
        "## Retrain",
        "",
        "```bash",
        f"python -m mf_harness.embedded.train              # retrain (~{round(info['train_seconds'] / 60)} min "
        f"on 2 cores), re-measure, rewrite card and specs",
        "python -m mf_harness.embedded.train --eval-only  # re-measure the shipped weights, rewrite card and specs",
        "python -m mf_harness.embedded.train --card-only  # rewrite this card from mf_harness_train.json",
        "```",
        "",
        f"Measuring (the `--eval-only` part) took {round(results.get('eval_seconds', 0) / 60)} minutes: 34 "
        f"lmms-eval runs of `mfr`, one of the `mf_shapes` tasks, and 128 head ablations.",
        "",
    ]
    return "\n".join(parts)


def machine_label() -> str:
    import platform

    import torch
    import transformers

    return (f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, torch "
            f"{torch.__version__}, transformers {transformers.__version__}")


def _layers(heads: list[str]) -> list[int]:
    return sorted({int(h[1:h.index("H")]) for h in heads})


def card_notes(results: dict) -> list[str]:
    """Plain statements for the card, derived from the measurements."""
    L = results["heads"][0]
    first = lambda xs: next((l for l, x in enumerate(xs) if x >= 0.95), None)  # noqa: E731
    at = lambda l: f"after layer {l}" if l is not None else "at no layer"  # noqa: E731
    notes = []
    for follow in ("text", "vision"):
        ld = results["ldar"][follow]
        notes.append(
            f"{follow.capitalize()} following, LDAR >= 0.95: at the instruction's final token "
            f"{at(first(ld['instruction_final_token']))}, at the last position {at(first(ld['last']))}; the "
            f"paper's top-3 readout over all instruction tokens peaks at {max(ld['instruction']):.3f} (the other "
            f"instruction tokens hold copies of both sides' answers, not the decision).")
    by = {(h["follow"], h["scope"]): h for h in results["headlines"]}
    for follow in ("text", "vision"):
        hi, hl = by[(follow, "instruction")], by[(follow, "last")]
        notes.append(
            f"{follow.capitalize()} following: blocking the top-{hi['k']} heads ({' '.join(hi['heads'])}) at the "
            f"instruction tokens gives MFR {hi['targeted']['mfr']:.3f} against {hi['random']['mfr_mean']:.3f} for "
            f"{hi['k']} random heads (gap {hi['gap']:.3f}, 95% CI {hi['gap_ci95_paired_bootstrap']}); at the last "
            f"position the top-{hl['k']} give {hl['targeted']['mfr']:.3f} against {hl['random']['mfr_mean']:.3f} "
            f"(gap {hl['gap']:.3f}).")
    notes.append(
        f"So the scope this model uses is **{results.get('scope_used', 'instruction')}**: the content reaches the "
        f"answer through the instruction tokens, written there by heads of layer(s) "
        f"{', '.join(str(l) for l in _layers(by[('text', 'instruction')]['heads']))}; many positions after the "
        "question hold the answer (the dense loss), so blocking heads at the last position alone changes less.")
    k1 = results["sweep"].get("text/instruction/k1")
    notes.append(
        "This anchor was trained in (routing mask, anchor and dense losses): the model is a test bed with a "
        "known mechanism for the harness's measures, not evidence about large VLMs. The heads were ranked by "
        "single-head ablation (the total effect); direct logit attribution was not measured on this checkpoint "
        "(on the earlier trial models it ranked heads whose output is never read: "
        "../shared/notes/embedded-model-trials.md). The content is written into the instruction by several "
        "heads at once" + (f", so one head moves text MFR only to {k1['targeted']:.3f}" if k1 else "") + ".")
    notes.append(
        "Held-out instruction phrasings generalise poorly: the model learned its training phrasings, not the "
        "meaning of an unseen sentence. It answers with its 18 answer words (10 colours, one to four, 4 shapes) "
        f"and writes short captions of its drawings; {L} layers do this world's tasks and nothing else.")
    return notes
