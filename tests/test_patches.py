"""Each upstream patch: what it changes, that it is reversible, and that the upstream code under it is
still what it was written for (these fail when an upstream release moves the target)."""

import inspect
import json

import pytest

from mf_harness.lmms import patches


@pytest.fixture
def fresh(request):
    """The named patch uninstalled before the test and reinstalled after it (as conftest had it)."""
    name = request.param
    was = name in patches.installed()
    patches.uninstall(name)
    yield name
    patches.uninstall(name)
    if was:
        patches.install(name)


def test_every_patch_is_documented_and_grouped():
    assert set(patches.PATCHES) == {n for g in patches.GROUPS.values() for n in g}
    for name, fn in patches.PATCHES.items():
        assert fn.__doc__ and len(fn.__doc__) > 80, name
        assert f"``{name}``" in patches.__doc__, f"{name} missing from the module's table"
    with pytest.raises(KeyError, match="no patch named"):
        patches.install("nope")


@pytest.mark.parametrize("fresh", ["task_include_path"], indirect=True)
def test_task_include_path(fresh, tmp_path):
    from lmms_eval.tasks import TaskManager

    import lmms_eval.tasks as tasks_mod

    src = inspect.getsource(tasks_mod.TaskManager.__init__)
    assert "include_path" in src and "verbosity" in src  # upstream's signature the wrapper maps
    original = TaskManager.__init__
    assert "mfr_text" not in TaskManager("ERROR").all_tasks
    patches.install(fresh)
    assert TaskManager.__init__ is not original
    assert "mfr_text" in TaskManager("ERROR").all_tasks
    (tmp_path / "mine.yaml").write_text("task: mine_task\ndataset_path: json\n")
    tm = TaskManager("ERROR", include_path=str(tmp_path))  # a user's include path is kept
    assert "mfr_text" in tm.all_tasks and "mine_task" in tm.all_tasks
    patches.uninstall(fresh)
    assert TaskManager.__init__ is original


@pytest.mark.parametrize("fresh", ["exit_status"], indirect=True)
def test_exit_status(fresh):
    import lmms_eval.__main__ as main

    import traceback

    assert "traceback.print_exc()" in inspect.getsource(main)  # the one use the stand-in replaces
    patches.uninstall(fresh)  # importing lmms_eval.__main__ loads our entry point, which installs it
    assert main.traceback is traceback
    patches.install(fresh)
    assert isinstance(main.traceback, patches._ExitOnFailure)
    patches.uninstall(fresh)
    assert main.traceback is traceback


@pytest.mark.parametrize("fresh", ["response_cache_spec_key"], indirect=True)
def test_response_cache_keys_on_spec_content_not_path(fresh, tmp_path):
    from lmms_eval.caching.response_cache import ResponseCache

    assert "model_args" in inspect.signature(ResponseCache.create).parameters
    spec = tmp_path / "heads.json"

    def fingerprint(heads, root):
        spec.write_text(json.dumps({"schema_version": 1, "block": heads}))
        cache = ResponseCache.create(str(tmp_path / root), model="intervened_qwen",
                                     model_args=f"pretrained=embedded,intervention={spec}", task_dict={})
        return cache._model_fingerprint_hash

    unpatched = (fingerprint(["L1H1"], "u1"), fingerprint(["L1H2"], "u2"))
    assert unpatched[0] == unpatched[1]  # upstream: same path, same key, whatever the file says
    patches.install(fresh)
    a = fingerprint(["L1H1"], "a")
    assert fingerprint(["L1H1"], "b") == a  # same content, same key
    assert fingerprint(["L1H2"], "c") != a  # same path, edited content: a new key
    # inline specs are content already and pass through unchanged
    assert patches.spec_content_key("pretrained=embedded,block=L1H1") == "pretrained=embedded,block=L1H1"
    patches.uninstall(fresh)
    assert fingerprint(["L1H3"], "d") == unpatched[0]


@pytest.mark.parametrize("fresh", ["filelock_api_alias"], indirect=True)
def test_filelock_alias_lets_lmms_eval_patch_the_real_metaclass(fresh, tmp_path):
    """Fails when either upstream changes: lmms-eval stops importing ``filelock._api`` (drop the patch)
    or filelock moves the metaclass again (the alias would point at nothing)."""
    import filelock
    from datasets.utils import _filelock as datasets_filelock
    from lmms_eval import evaluator

    assert "filelock._api" in inspect.getsource(evaluator._enable_reentrant_filelocks)
    patches.install(fresh)
    import filelock._api as api

    assert api.FileLockMeta is type(filelock.FileLock)
    evaluator._enable_reentrant_filelocks()  # what simple_evaluate runs: must not raise
    path = str(tmp_path / "x.lock")
    # lmms-eval's fix took effect: one instance per lock path across the two FileLock classes
    assert filelock.FileLock(path) is datasets_filelock.FileLock(path)


@pytest.mark.parametrize("fresh", ["processor_without_torchvision"], indirect=True)
def test_processor_without_torchvision(fresh):
    from transformers import Qwen2_5_VLProcessor, processing_utils

    assert not patches.has_torchvision()  # the lean install keeps it out; the patch exists for this
    original = processing_utils.ProcessorMixin.__dict__["get_attributes"]
    assert "video_processor" in Qwen2_5_VLProcessor.get_attributes()
    init = processing_utils.ProcessorMixin.__init__
    patches.install(fresh)
    assert "video_processor" not in Qwen2_5_VLProcessor.get_attributes()
    assert "image_processor" in Qwen2_5_VLProcessor.get_attributes()
    patches.uninstall(fresh)
    assert processing_utils.ProcessorMixin.__dict__["get_attributes"] is original
    assert processing_utils.ProcessorMixin.__init__ is init


@pytest.mark.parametrize("fresh", ["smolvlm_video_optional"], indirect=True)
def test_smolvlm_video_optional(fresh):
    from transformers import SmolVLMProcessor

    original = SmolVLMProcessor.__init__
    params = inspect.signature(original).parameters
    # the wrapper repeats upstream's positional parameters and defaults (transformers reads them off the code)
    assert [(n, p.default) for n, p in params.items()][1:6] == [
        ("image_processor", inspect.Parameter.empty), ("tokenizer", inspect.Parameter.empty),
        ("video_processor", inspect.Parameter.empty), ("image_seq_len", 169), ("chat_template", None)]
    patches.install(fresh)
    code = SmolVLMProcessor.__init__.__code__
    assert code.co_varnames[:code.co_argcount] == original.__code__.co_varnames[:original.__code__.co_argcount]
    assert inspect.signature(SmolVLMProcessor.__init__).parameters["video_processor"].default is None
    patches.uninstall(fresh)
    assert SmolVLMProcessor.__init__ is original


@pytest.mark.parametrize("fresh", ["gemma4_video_optional"], indirect=True)
def test_gemma4_video_optional(fresh, tmp_path, monkeypatch):
    from transformers import AutoProcessor, Gemma4Processor, processing_utils

    from mf_harness.tiny import TinyConfig, build_tiny_vlm

    original = Gemma4Processor.__init__
    patches.uninstall("processor_without_torchvision")  # upstream's ProcessorMixin.__init__, for below
    mixin_init = processing_utils.ProcessorMixin.__init__
    patches.install("processor_without_torchvision")
    params = inspect.signature(original).parameters
    assert [(n, p.default) for n, p in params.items()][1:9] == [  # upstream's parameters the wrapper repeats
        ("feature_extractor", inspect.Parameter.empty), ("image_processor", inspect.Parameter.empty),
        ("tokenizer", inspect.Parameter.empty), ("video_processor", inspect.Parameter.empty),
        ("chat_template", None), ("image_seq_length", 280), ("audio_seq_length", 750), ("audio_ms_per_token", 40)]
    patches.install(fresh)
    path = build_tiny_vlm(tmp_path / "g4", TinyConfig(family="gemma4", seed=0))
    assert type(AutoProcessor.from_pretrained(path)).__name__ == "Gemma4Processor"
    patches.uninstall(fresh)
    assert Gemma4Processor.__init__ is original
    with pytest.raises(TypeError, match="video_processor"):  # what the patch is for: no torchvision, no video
        AutoProcessor.from_pretrained(path)
    # the part in processor_without_torchvision: Gemma4Processor hands video_processor=None on by keyword, which
    # ProcessorMixin.__init__ rejects once it is no attribute, unless the patch drops it
    patches.install(fresh)
    parts = AutoProcessor.from_pretrained(path)
    parts = dict(feature_extractor=parts.feature_extractor, image_processor=parts.image_processor,
                 tokenizer=parts.tokenizer, video_processor=None)
    assert "video_processor" not in Gemma4Processor(**parts).get_attributes()
    monkeypatch.setattr(processing_utils.ProcessorMixin, "__init__", mixin_init)
    with pytest.raises(TypeError, match="video_processor"):
        Gemma4Processor(**parts)


@pytest.mark.parametrize("fresh", ["smolvlm_num2words"], indirect=True)
def test_smolvlm_num2words(fresh):
    from transformers.models.smolvlm import processing_smolvlm

    assert processing_smolvlm.num2words is None  # not installed here: the patch has work to do
    patches.install(fresh)
    with pytest.raises(RuntimeError, match="num2words"):
        processing_smolvlm.num2words(3)
    patches.uninstall(fresh)
    assert processing_smolvlm.num2words is None
