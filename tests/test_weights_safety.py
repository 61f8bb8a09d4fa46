"""Loading never runs code and never reaches the network: the Hugging Face offline flags are set by
importing the library, before any Hugging Face package reads them; a weights file or a training
checkpoint whose pickle would run code is refused (the autoencoder import names the key and the
README's conversion recipe; a training job warns and starts fresh)."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_MODULES = ["ehrxdiff_core.data.stages", "ehrxdiff_core.text.stages", "ehrxdiff_core.models.stages",
                 "ehrxdiff_core.evaluation.stages"]


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

    import importlib, json, os, sys

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
    modules = STAGE_MODULES + _library_modules_of_scripts()
    assert "ehrxdiff_core.models.launch" in modules and "ehrxdiff_core.runlog" in modules
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run([sys.executable, "-c", OFFLINE_CHILD.format(modules=modules)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)
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
        print(json.dumps([before, hub.HF_HUB_OFFLINE, os.environ["HF_HUB_OFFLINE"], os.environ["TRANSFORMERS_OFFLINE"]]))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, True, "1", "1"]
