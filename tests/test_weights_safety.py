"""Loading never runs code from a file and never reaches the network: importing the library sets the
Hugging Face offline flags before any Hugging Face package reads them; a torch file whose pickle
would run code is refused (`vae.pretrained`, `evaluate.xrv_weights`: an error naming the key and the
README's conversion recipe; a training checkpoint: a warning and a fresh start)."""

import argparse
import ast
import json
import logging
import os
import random
import re
import shlex
import subprocess
import sys
import textwrap
import types
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch

from ehrxdiff_core.config import TrainLoop, VaeConfig
from ehrxdiff_core.evaluation.inception import WeightsError
from ehrxdiff_core.evaluation.xrv import load_xrv_densenet
from ehrxdiff_core.models.ddp import DistInfo
from ehrxdiff_core.models.training import _resume_key, _rng_state, _set_rng_state, run_training
from ehrxdiff_core.models.vae import VaeTrainer, build_vae, import_pretrained
from test_models_stages import ldm_autoencoder_state

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _script_imports(script: Path) -> list[ast.stmt]:
    return [n for n in ast.parse(script.read_text()).body if isinstance(n, (ast.Import, ast.ImportFrom))]


def _top_names(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.ImportFrom):
        return [(node.module or "").split(".")[0]]
    return [a.name.split(".")[0] for a in node.names]


def _library_modules_of_scripts() -> list[str]:
    mods = []
    for script in sorted((REPO / "workflow_scripts").glob("*.py")):
        for node in _script_imports(script):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ehrxdiff_core"):
                mods.append(node.module)
    return sorted(set(mods))


def test_workflow_scripts_import_the_library_before_any_other_package():
    scripts = sorted((REPO / "workflow_scripts").glob("*.py"))
    assert len(scripts) > 10
    for script in scripts:
        names = [name for node in _script_imports(script) for name in _top_names(node)]
        assert "ehrxdiff_core" in names, script.name
        before = names[: names.index("ehrxdiff_core")]
        assert set(before) <= sys.stdlib_module_names, f"{script.name} imports {before} before ehrxdiff_core"


OFFLINE_CHILD = textwrap.dedent(
    """
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access attempted")

    socket.socket.connect = refuse
    socket.create_connection = refuse

    import importlib, json, os

    for name in {modules!r}:
        importlib.import_module(name)
    import diffusers.utils.hub_utils
    import huggingface_hub.constants
    from transformers.utils.hub import is_offline_mode

    print(json.dumps({{
        "hub_constant": huggingface_hub.constants.HF_HUB_OFFLINE,
        "diffusers_copy": diffusers.utils.hub_utils.HF_HUB_OFFLINE,
        "transformers_offline_mode": is_offline_mode(),
        "env": {{k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}},
    }}))
    """
)


def test_importing_the_library_sets_offline_flags_before_hugging_face_reads_them(tmp_path):
    modules = _library_modules_of_scripts()  # every stage module, as the workflow scripts import them
    assert "ehrxdiff_core.models.launch" in modules and "ehrxdiff_core.runlog" in modules
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, "-c", OFFLINE_CHILD.format(modules=modules)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["env"] == {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    assert got["hub_constant"] is True  # huggingface_hub read the flag at import: it was already set
    assert got["diffusers_copy"] is True  # diffusers copies the constant when imported
    assert got["transformers_offline_mode"] is True


def test_offline_flags_win_over_the_environment_and_reach_an_already_imported_hub():
    code = textwrap.dedent(
        """
        import json, os
        import huggingface_hub.constants as hub
        before = hub.HF_HUB_OFFLINE
        import ehrxdiff_core
        env = [os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"]]
        print(json.dumps([before, hub.HF_HUB_OFFLINE, *env]))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, True, "1", "1"]


# --------------------------------------------------------------------------- files whose pickle runs code


class _Payload:
    """Unpickling this runs `touch marker`: what a crafted weights file can do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def crafted(path: Path, marker: Path, **content) -> Path:
    """A torch file with `content` and, beside it, an object whose unpickling creates `marker`."""
    torch.save({**content, "callbacks": _Payload(marker)}, path)
    return path


def test_the_crafted_file_runs_code_when_unpickled_unsafely(tmp_path):
    """The payload is live: the tests below mean something when their marker stays absent."""
    marker = tmp_path / "ran"
    torch.load(crafted(tmp_path / "x.pt", marker, weights=torch.zeros(2)), weights_only=False)
    assert marker.exists()


# --------------------------------------------------------------------------- training checkpoints


def _tiny_vae():
    torch.manual_seed(0)
    return VaeTrainer(build_vae(VaeConfig(block_out_channels=[8, 8], layers_per_block=1), 16), 1e-6)


def _images(n=4, size=16):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1


LOOP = TrainLoop(steps=3, batch_size=4, lr=1e-3, checkpoint_every=100)
CONFIG = {"train": {"steps": 3}, "model": "tiny"}


def _batches(step, micro, rank, world):
    return {"trg": _images()}


@pytest.mark.parametrize("kind", ["payload", "numpy_rng"])
def test_unsafe_training_checkpoint_is_not_run_and_training_starts_fresh(tmp_path, caplog, kind):
    reference = run_training(_tiny_vae(), _batches, LOOP, tmp_path / "clean", CONFIG, DistInfo())
    work = tmp_path / "work"
    work.mkdir()
    marker = tmp_path / "ran"
    saved = {"model": _tiny_vae().state_dict(), "step": 1, "resume_key": _resume_key(CONFIG), "metrics": []}
    if kind == "payload":
        crafted(work / "checkpoint.pt", marker, **saved)
    else:  # the earlier format: numpy's RNG state as an ndarray, which needs numpy's unpickler
        torch.save({**saved, "rng": {"numpy": np.random.get_state()}}, work / "checkpoint.pt")
    with caplog.at_level(logging.WARNING, logger="ehrxdiff_core.models.training"):
        res = run_training(_tiny_vae(), _batches, LOOP, work, CONFIG, DistInfo())
    assert not marker.exists()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "ignoring" in warning and "checkpoint.pt" in warning and "starting fresh" in warning
    assert ("posix.system" if kind == "payload" else "numpy") in warning
    assert res.step == 3 and [r["step"] for r in res.metrics] == [0, 1, 2]
    # trained from scratch: the same run as without any checkpoint
    np.testing.assert_allclose([r["loss"] for r in res.metrics], [r["loss"] for r in reference.metrics], rtol=1e-6)
    # and the checkpoint it wrote over the unsafe one is safe to read
    assert torch.load(work / "checkpoint.pt", weights_only=True)["step"] == 3


def test_training_checkpoint_loads_with_weights_only_and_restores_every_rng(tmp_path):
    loop = LOOP.model_copy(update={"ema_decay": 0.9})
    run_training(_tiny_vae(), _batches, loop, tmp_path, CONFIG, DistInfo())
    state = torch.load(tmp_path / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert {"model", "ema", "optimizer", "scheduler", "rng", "step", "config", "resume_key", "metrics"} <= set(state)
    assert state["step"] == 3 and state["config"] == CONFIG and len(state["metrics"]) == 3
    assert state["ema"] is not None and state["scheduler"]["last_epoch"] == 3

    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    np.random.standard_normal()  # odd number of Gaussian draws: numpy caches the second one in its state
    torch.save({"rng": _rng_state()}, tmp_path / "rng.pt")

    def draws():
        return random.random(), np.random.standard_normal(), np.random.rand(), torch.rand(3).tolist()

    expected = draws()
    _set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert draws() == expected


# --------------------------------------------------------------------------- vae.pretrained


def _lightning_checkpoint(path: Path, **extra) -> dict:
    """A Cheff/LDM-style Lightning checkpoint of a small autoencoder; returns its LDM state dict."""
    sd = ldm_autoencoder_state()
    torch.save(
        {
            "state_dict": {f"first_stage_model.{k}": v for k, v in sd.items()},
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "1.9.0",
            **extra,
        },
        path,
    )
    return sd


def test_vae_pretrained_with_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "ran"
    path = crafted(
        tmp_path / "cheff.ckpt",
        marker,
        state_dict={f"first_stage_model.{k}": v for k, v in ldm_autoencoder_state().items()},
    )
    with pytest.raises(ValueError) as err:
        import_pretrained(path, 16)
    assert not marker.exists()
    msg = str(err.value)
    assert msg.startswith("vae.pretrained:") and str(path) in msg and "posix.system" in msg
    assert "pickled objects other than tensors" in msg and ".safetensors" in msg
    assert "Offline, and weights files that cannot run code" in msg  # the README section with the recipe
    assert "### Offline, and weights files that cannot run code" in (REPO / "README.md").read_text()


def _readme_recipe() -> str:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Offline, and weights files that cannot run code", 1)[1].split("\n#", 1)[0]
    blocks = [b for b in re.findall(r"```python\n(.*?)```", section, flags=re.S) if "cheff_autoencoder" in b]
    assert len(blocks) == 1
    return textwrap.dedent(blocks[0])


def test_readme_recipe_converts_a_refused_lightning_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "cheff_autoencoder.pt"
    sd = _lightning_checkpoint(ckpt, hyper_parameters=argparse.Namespace(embed_dim=3, lr=4.5e-6))
    with pytest.raises(
        ValueError, match=r"vae\.pretrained: .*cheff_autoencoder\.pt contains pickled objects other than tensors"
    ):
        import_pretrained(ckpt, 16)
    recipe = _readme_recipe()
    assert len(recipe.strip().splitlines()) == 3 and "cheff_autoencoder.safetensors" in recipe
    monkeypatch.chdir(tmp_path)  # the recipe names the files relative to the working folder
    exec(recipe, {})
    vae = import_pretrained(tmp_path / "cheff_autoencoder.safetensors", 16)
    got = vae.state_dict()
    assert len(got) == len(sd) and list(vae.config.block_out_channels) == [32, 64]
    torch.testing.assert_close(got["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])
    torch.testing.assert_close(got["decoder.conv_out.bias"], sd["decoder.conv_out.bias"])


def test_vae_pretrained_of_tensors_and_plain_values_still_imports(tmp_path):
    sd = _lightning_checkpoint(
        tmp_path / "plain.ckpt", callbacks={"ModelCheckpoint": {"best_model_score": torch.tensor(0.5)}}
    )
    vae = import_pretrained(tmp_path / "plain.ckpt", 16)
    torch.testing.assert_close(vae.state_dict()["encoder.conv_in.weight"], sd["encoder.conv_in.weight"])
    vae.save_pretrained(tmp_path / "folder")  # a diffusers folder (safetensors inside)
    again = import_pretrained(tmp_path / "folder", 16).state_dict()
    for k, v in vae.state_dict().items():
        assert torch.equal(again[k], v), k
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match=r"vae\.pretrained: .*tensor\.pt holds a Tensor"):
        import_pretrained(tmp_path / "tensor.pt", 16)


# --------------------------------------------------------------------------- evaluate.xrv_weights

XRV_FILE = "nih-pc-chex-mimic_ch-google-openi-kaggle-densenet121-d121-tw-lr001-rot45-tr15-sc15-seed0-best.pt"


@pytest.fixture
def fake_xrv(monkeypatch):
    """A stand-in `torchxrayvision` package (not installed here) whose DenseNet pickles as the real one's name."""
    models = types.ModuleType("torchxrayvision.models")

    class DenseNet(torch.nn.Module):
        def __init__(self, weights=None, cache_dir=None):
            super().__init__()
            self.features = torch.nn.Sequential(
                OrderedDict(conv0=torch.nn.Conv2d(1, 4, 3, bias=False), norm0=torch.nn.BatchNorm2d(4))
            )
            self.classifier = torch.nn.Linear(4, 18)
            self.register_buffer("op_threshs", None)
            if weights is not None:  # what torchxrayvision 1.5 does with its weights file
                saved = torch.load(os.path.join(cache_dir, XRV_FILE), map_location="cpu", weights_only=False)
                self.load_state_dict(saved.state_dict())

    DenseNet.__module__, DenseNet.__qualname__ = models.__name__, "DenseNet"
    models.DenseNet = DenseNet
    models.model_urls = {"densenet121-res224-all": {"weights_url": f"https://example.invalid/v1/{XRV_FILE}"}}
    package = types.ModuleType("torchxrayvision")
    package.models = models
    monkeypatch.setitem(sys.modules, "torchxrayvision", package)
    monkeypatch.setitem(sys.modules, "torchxrayvision.models", models)
    torch.manual_seed(3)
    return DenseNet()  # as released: random here


def test_xrv_weights_as_released_or_as_state_dict_load_without_unpickling_code(fake_xrv, tmp_path):
    (tmp_path / "module").mkdir(), (tmp_path / "state").mkdir()
    torch.save(fake_xrv, tmp_path / "module" / XRV_FILE)  # the released files pickle the whole module
    # the README's conversion: the state dict of a loaded model, where torchxrayvision has set the calibration
    torch.save({**fake_xrv.state_dict(), "op_threshs": torch.rand(18)}, tmp_path / "state" / XRV_FILE)
    for folder in ("module", "state"):
        got = load_xrv_densenet(tmp_path / folder / XRV_FILE).state_dict()
        assert set(got) == set(fake_xrv.state_dict()) and len(got) == 8
        for k, v in got.items():
            assert torch.equal(v, fake_xrv.state_dict()[k]), (folder, k)


@pytest.mark.filterwarnings("ignore:Couldn't retrieve source code")  # the stand-in class has no source file
@pytest.mark.parametrize("kind", ["payload", "legacy_format"])
def test_xrv_weights_that_pickle_more_are_refused_naming_the_key(fake_xrv, tmp_path, kind):
    marker, path = tmp_path / "ran", tmp_path / XRV_FILE
    if kind == "payload":
        crafted(path, marker, model=fake_xrv)
    else:  # torch's pre-zip format stores a module's class with its source code, which weights_only cannot read
        torch.save(fake_xrv, path, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError) as err:
        load_xrv_densenet(path)
    assert not marker.exists()
    msg = str(err.value)
    assert (
        msg.startswith("evaluate.xrv_weights:")
        and str(path) in msg
        and "Offline, and weights files that cannot run code" in msg
    )
    assert ("posix.system" if kind == "payload" else "legacy format") in msg
