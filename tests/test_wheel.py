"""The package as users get it from a wheel: built, installed into a fresh venv with no checkout on the path,
then the demo and the lmms-eval command run (task configs, interventions and the checkpoint are package data)."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory):
    """A fresh venv holding only the built wheel; its dependencies come from this venv's site-packages through a
    .pth path (so the editable checkout's finder, a .pth of this venv, is *not* active there)."""
    import shutil

    tmp = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools writes mf_harness.egg-info into the source tree, and a stale one in the
    # checkout would shadow the editable install's entry points for anything that puts the repo on sys.path
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv*", "out", "build", "dist", "*.egg-info",
                                                               "__pycache__", ".pytest_cache"))
    subprocess.run([str(BIN / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
                    str(src)], check=True, env=ENV, capture_output=True)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(BIN / "pip"), "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    *map(str, (tmp / "dist").glob("*.whl"))], check=True, env=ENV, capture_output=True)
    return venv, site


def _run(venv, args, cwd, timeout=600):
    return subprocess.run([str(venv / "bin" / "python"), *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_is_what_runs(wheel_venv, tmp_path):
    venv, site = wheel_venv
    code = ("import mf_harness, mf_harness.tasks, mf_harness.interventions as i\n"
            "from mf_harness.embedded import embedded_path\n"
            "print(mf_harness.__file__); print(mf_harness.tasks.__file__); print(i.INTERVENTIONS_DIR); print(embedded_path())\n"
            "print(sorted(p.name for p in (i.INTERVENTIONS_DIR / 'embedded').iterdir()))\n")
    p = _run(venv, ["-c", code], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.strip().splitlines()
    assert all(line.startswith(str(site)) for line in lines[:4]), lines
    assert "heads.csv" in lines[4] and "demo.json" in lines[4]


def test_demo_runs_from_the_wheel(wheel_venv, tmp_path):
    venv, site = wheel_venv
    p = _run(venv, ["-m", "mf_harness.cli", "demo", "--limit", "12", "--output-dir", str(tmp_path / "demo")], tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "MFR (%) on the samples the original model follows" in p.stdout
    assert str(site) in p.stdout  # the checkpoint and the ranking come from the installed package
    assert (tmp_path / "demo" / "records.jsonl").is_file()


def test_lmms_eval_command_runs_from_the_wheel(wheel_venv, tmp_path):
    venv, site = wheel_venv
    p = _run(venv, ["-m", "lmms_eval", "--model", "intervened_qwen", "--model_args", "pretrained=embedded,block=L0H1",
                    "--tasks", "mfr", "--limit", "4", "--batch_size", "4", "--output_path", str(tmp_path / "o")],
             tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "mfr_text" in p.stdout and "mfr_vision" in p.stdout
    bad = _run(venv, ["-m", "lmms_eval", "--model", "intervened_qwen", "--model_args", "pretrained=embedded,block=L9H1",
                      "--tasks", "mfr", "--limit", "2"], tmp_path)
    assert bad.returncode == 1 and "mf-harness: error: block: head L9H1 is out of range" in bad.stderr
