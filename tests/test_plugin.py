"""The lmms-eval entry point: registration, and that it installs the patches explicitly."""

import mf_harness.lmms.plugin as plugin
from mf_harness.lmms import patches


def test_manifest_registers_every_alias_and_installs_the_lmms_patches():
    from mf_harness.core.arch import MODEL_NAMES

    patches.uninstall(*patches.GROUPS["lmms"])
    try:
        (m,) = plugin.manifests()
        assert m.model_id == "intervened_hf" and set(m.aliases) == set(MODEL_NAMES[1:]) and "intervened_qwen" in m.aliases
        assert set(patches.GROUPS["lmms"]) <= set(patches.installed())
        assert plugin.install() == []  # idempotent
    finally:
        patches.install_lmms()


def test_importing_the_plugin_changes_nothing():
    import subprocess
    import sys

    code = ("import lmms_eval.tasks as t; before = t.TaskManager.__init__\n"
            "import mf_harness.lmms.plugin, mf_harness.lmms.patches as p\n"
            "assert t.TaskManager.__init__ is before and p.installed() == [], p.installed()\n")
    subprocess.run([sys.executable, "-c", code], check=True)
