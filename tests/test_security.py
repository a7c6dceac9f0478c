"""A checkpoint (or any config) can never run code: only allow-listed constructors are built, checked
through every nested dict and list, and nothing else is handed to Hydra's instantiate."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from metanlp_cli.checkpoint import load_checkpoint, save_checkpoint
from metanlp_cli.config import allowed_targets, build
from metanlp_cli.errors import MetaNLPError


def payloads(victim):
    """The shapes a crafted config used to slip past the allow-list: (where it sits, the config node)."""
    copy = {"_target_": "shutil.copyfile", "src": __file__, "dst": str(victim)}
    load = {"_target_": "torch.load", "f": str(victim), "weights_only": False}
    touch = {"_target_": "pathlib.Path.touch", "self": str(victim)}
    maml = "metanlp_cli.algorithms.maml.MAML"
    inner = "metanlp_cli.algorithms.inner_loop.InnerLoop"
    return {
        "a target inside a list": {"_target_": maml, "inner_frozen": [copy]},
        "torch.load inside a list": {"_target_": maml, "inner_params": [load]},
        "a target inside a plain dict": {"_target_": maml, "inner_eval": {"settings": {"x": copy}}},
        "a target in _args_": {"_target_": inner, "_args_": [copy]},
        "_recursive_ switched on": {"_target_": inner, "_recursive_": True, "lr": copy},
        "a metanlp function that writes files": {
            "_target_": "metanlp_cli.checkpoint.save_checkpoint",
            "path": str(victim),
            "payload": {},
        },
        "a top-level foreign target": copy,
        "a list deep inside a list": {"_target_": maml, "inner_frozen": [[{"a": [touch]}]]},
    }


@pytest.mark.parametrize("shape", list(payloads("x")))
def test_no_payload_shape_is_built_and_the_error_names_the_key(shape, tmp_path):
    victim = tmp_path / "written-by-the-payload"
    node = OmegaConf.create(payloads(victim)[shape])
    with pytest.raises(MetaNLPError, match=r"^algo[.\[]") as error:
        build(node, "algo")
    assert "\n" not in str(error.value)
    assert not victim.exists()


def test_the_allow_list_is_what_the_configs_name_and_the_optimizers():
    targets = allowed_targets()
    assert "metanlp_cli.algorithms.maml.MAML" in targets and "torch.optim.Adam" in targets
    assert "metanlp_cli.checkpoint.save_checkpoint" not in targets and "torch.load" not in targets
    assert all(t.startswith(("metanlp_cli.", "torch.optim.")) for t in targets)


def crafted_checkpoint(trained: str, path, victim) -> None:
    """A real checkpoint whose saved config now carries a payload in a list."""
    payload = load_checkpoint(trained)
    payload["config"]["algo"]["inner_frozen"] = [
        {"_target_": "shutil.copyfile", "src": trained, "dst": str(victim)},
        {"_target_": "torch.load", "f": trained, "weights_only": False},
    ]
    save_checkpoint(path, {k: v for k, v in payload.items() if k != "format"})


@pytest.mark.smoke
def test_eval_and_resume_of_a_crafted_checkpoint_refuse_in_one_line(tmp_path):
    def metanlp(*arguments):
        return subprocess.run([sys.executable, "-m", "metanlp_cli", *arguments], capture_output=True, text=True)

    run = tmp_path / "run"
    trained = metanlp("train", "debug=smoke", "algo=maml", f"hydra.run.dir={run}")
    assert trained.returncode == 0, trained.stderr
    victim = tmp_path / "copied"
    for name in ("best.pt", "last.pt"):
        crafted_checkpoint(str(run / "checkpoints" / name), run / "checkpoints" / name, victim)

    evaluated = metanlp("eval", f"checkpoint={run}", f"hydra.run.dir={tmp_path / 'eval'}")
    resumed = metanlp("train", f"resume={run}", "trainer.steps=6")
    for result in (evaluated, resumed):
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "algo.inner_frozen[0]" in lines[0] and "not allowed" in lines[0], lines
        assert not victim.exists()
    assert torch.load(run / "checkpoints" / "best.pt", weights_only=True)["format"] == 1
