"""What ``mf-harness compare`` may re-run from a records file's header (records files are shared artifacts)."""

from __future__ import annotations

from pathlib import Path

from mf_harness.errors import MfHarnessError

__all__ = ["SAFE_MODEL_KEYS", "trusted_rerun"]


# model_args keys a records header may carry into a re-run; anything else (trust_remote_code, a spec file,
# ...) is refused: records files are shared artifacts, and re-scoring one must not run what it asks for
SAFE_MODEL_KEYS = frozenset({"pretrained", "revision", "dtype", "attn_implementation", "min_pixels", "max_pixels",
                             "max_new_tokens", "system_prompt", "instruction_field", "batch_size"})


def trusted_rerun(cfg, baseline: Path, model_args: str | None, rankings: str | None, allow: list[str]):
    """The sweep config to re-run for ``compare``: the header's, with the model and rankings that the user named
    (or allowed). Refuses a header that asks for remote code, carries other model_args than `SAFE_MODEL_KEYS`,
    names a model the user did not, or a rankings file outside the working directory."""
    import dataclasses

    from lmms_eval.utils import simple_parse_args_string

    def parse(text, where):
        try:
            return simple_parse_args_string(text or "")
        except ValueError:
            raise MfHarnessError(f"{where}: model_args must be key=value pairs separated by commas; got {text!r}") \
                from None

    head = parse(cfg.model_args, f"{baseline} header")
    if "trust_remote_code" in head:
        raise MfHarnessError(f"{baseline} asks for trust_remote_code={head['trust_remote_code']!r}: a records file may "
                             f"not make mf-harness run a checkpoint's own code; re-run that sweep yourself")
    extra = sorted(set(head) - SAFE_MODEL_KEYS)
    if extra:
        raise MfHarnessError(f"{baseline} header carries model_args {extra}, which compare does not take from a "
                             f"records file (allowed: {', '.join(sorted(SAFE_MODEL_KEYS))})")
    model = str(head.get("pretrained", "embedded"))
    if model_args is not None:
        mine = parse(model_args, "--model-args")
        if str(mine.get("pretrained", "embedded")) != model:
            raise MfHarnessError(f"{baseline} was measured on {model!r}, but --model-args names "
                                 f"{mine.get('pretrained', 'embedded')!r}")
        cfg = dataclasses.replace(cfg, model_args=model_args)
    elif model != "embedded" and model not in allow:
        raise MfHarnessError(f"{baseline} names the model {model!r}; compare loads only a model you name: pass "
                             f"--model-args pretrained={model} (or --allow-model {model})")
    if rankings is not None:
        cfg = dataclasses.replace(cfg, rankings=rankings)
    elif cfg.rankings:
        here = Path.cwd().resolve()
        p = (here / cfg.rankings).resolve()
        if Path(cfg.rankings).is_absolute() or (p != here and here not in p.parents):
            raise MfHarnessError(f"{baseline} points at rankings {cfg.rankings!r} outside the working directory; "
                                 f"pass --rankings PATH to name them yourself")
    return cfg
