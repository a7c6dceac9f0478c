"""One YAML = one constructor: every config key is a parameter of its target, with the right type."""

from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from metanlp_cli import CONFIG_DIR
from metanlp_cli.config import TrainerConfig, build, check_arguments, validate
from metanlp_cli.errors import MetaNLPError

TARGET_FILES = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if "_target_" in p.read_text())


def target_nodes(node, key):
    if isinstance(node, dict):
        if "_target_" in node:
            yield key, node
        for name, value in node.items():
            yield from target_nodes(value, f"{key}.{name}")


def without_interpolations(node):
    """Interpolations point outside one file: leave them out (composition checks them)."""
    if isinstance(node, dict):
        return {k: without_interpolations(v) for k, v in node.items() if not (isinstance(v, str) and "${" in v)}
    return node


@pytest.mark.parametrize("path", TARGET_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_yaml_key_is_a_parameter_of_its_target(path: Path):
    document = yaml.safe_load(path.read_text())
    document.pop("defaults", None)  # Hydra's list of configs composed into this one (checked once composed)
    nodes = list(target_nodes(document, path.parent.name))
    assert nodes
    for key, node in nodes:
        check_arguments(OmegaConf.create(without_interpolations(node)), key)


def test_trainer_presets_match_the_schema(compose_config):
    for overrides in (["trainer=default"], ["debug=smoke"]):
        validate(compose_config("train", overrides).trainer, TrainerConfig, "trainer")


def test_debug_smoke_changes_only_what_it_lists(compose_config):
    default, smoke = compose_config("train"), compose_config("train", ["debug=smoke"])
    assert smoke.trainer.steps == 4 and smoke.protocol.episodes == 10 and smoke.trainer.device == "cpu"
    assert smoke.trainer.seed == default.trainer.seed and smoke.trainer.grad_clip == default.trainer.grad_clip
    assert smoke.optim == default.optim and smoke.protocol.k_shot == default.protocol.k_shot


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_optim_configs_build_their_torch_optimizer(name, compose_config):
    cfg = compose_config("train", [f"optim={name}", "optim.lr=0.5"])
    optimizer = build(cfg.optim, "optim", params=[torch.nn.Parameter(torch.zeros(2))])
    assert type(optimizer).__name__.lower() == name and optimizer.param_groups[0]["lr"] == 0.5


def test_an_old_checkpoint_config_gets_the_optim_group():
    from metanlp_cli.checkpoint import upgrade_config

    old = {"trainer": {"steps": 3, "outer_optimizer": "sgd", "outer_lr": 0.2, "weight_decay": 0.1}}
    new = upgrade_config(old)
    assert new["trainer"] == {"steps": 3}
    assert new["optim"] == {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.2, "weight_decay": 0.1}


def test_unknown_key_and_wrong_type_name_the_key():
    with pytest.raises(MetaNLPError, match=r"algo.inner_rate is not a parameter of .*MAML; allowed: .*inner_train"):
        build(OmegaConf.create({"_target_": "metanlp_cli.algorithms.maml.MAML", "inner_rate": 0.1}), "algo")
    with pytest.raises(MetaNLPError, match=r"algo.inner_train.steps='five' has the wrong type; expected int"):
        inner = {"_target_": "metanlp_cli.algorithms.inner_loop.InnerLoop", "steps": "five"}
        build(OmegaConf.create({"_target_": "metanlp_cli.algorithms.maml.MAML", "inner_train": inner}), "algo")
    with pytest.raises(MetaNLPError, match=r"trainer.steps: .*'many'"):
        validate(OmegaConf.create({"steps": "many"}), TrainerConfig, "trainer")
    assert validate(OmegaConf.create({"steps": 0}), TrainerConfig, "trainer").steps == 0  # no meta-training
    with pytest.raises(MetaNLPError, match=r"trainer.steps=-1 must be >= 0"):
        validate(OmegaConf.create({"steps": -1}), TrainerConfig, "trainer")
    with pytest.raises(MetaNLPError, match=r"trainer.meta_batch_size=0 must be >= 1"):
        validate(OmegaConf.create({"meta_batch_size": 0}), TrainerConfig, "trainer")


def test_targets_outside_the_package_are_refused():
    with pytest.raises(MetaNLPError, match="not allowed"):
        build(OmegaConf.create({"_target_": "os.system", "command": "echo hi"}), "dataset")


def test_eval_leaves_out_a_training_sampler_that_follows_a_replaced_protocol():
    from metanlp_cli.evaluate import drop_unresolvable_sampler

    kept = OmegaConf.create({"protocol": {"k_shot": 5}, "sampler": {"k_shot": "${protocol.k_shot}"}})
    drop_unresolvable_sampler(kept)
    assert kept.sampler.k_shot == 5
    replaced = OmegaConf.create({"protocol": {"batch_size": 64}, "sampler": {"k_shot": "${protocol.k_shot}"}})
    drop_unresolvable_sampler(replaced)  # protocol=arsc has no k_shot
    assert "sampler" not in replaced
    OmegaConf.to_yaml(replaced, resolve=True)  # what eval writes now resolves


def test_the_test_episodes_follow_the_meta_training_class_order_and_queries(compose_config):
    cfg = compose_config("train", ["sampler.class_order=declared", "sampler.query=natural"])
    assert (cfg.protocol.class_order, cfg.protocol.query) == ("declared", "natural")
    old_run = OmegaConf.create({"sampler": {"n_way": 2, "k_shot": 5, "q_query": 5}})  # before the two keys existed
    protocol = OmegaConf.merge(old_run, {"protocol": compose_config("train").protocol})
    assert (protocol.protocol.class_order, protocol.protocol.query) == ("shuffled", "balanced")


def test_encoder_lr_gives_the_encoder_its_own_outer_step_size(compose_config):
    from metanlp_cli.algorithms.base import LabelSpace
    from metanlp_cli.algorithms.maml import MAML
    from metanlp_cli.backbones.cnn import WordCNN
    from metanlp_cli.train import outer_optimizer

    encoder = WordCNN(50, embedding_dim=8, filter_sizes=[2], num_filters=4)
    algo = MAML(encoder, LabelSpace(2, 4))
    default = compose_config("train", ["optim.lr=0.01"])
    assert len(outer_optimizer(algo, default, encoder).param_groups) == 1  # null: optim.lr for every parameter
    optimizer = outer_optimizer(algo, compose_config("train", ["optim.lr=0.01", "trainer.encoder_lr=1e-4"]), encoder)
    assert [group["lr"] for group in optimizer.param_groups] == [1e-4, 0.01]
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in encoder.parameters()}
    before = {name: p.detach().clone() for name, p in algo.named_parameters()}
    for p in algo.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()  # Adam's first step moves every weight by its lr (times sign of the gradient)
    for name, p in algo.named_parameters():
        lr = 1e-4 if ".encoder." in f".{name}" else 0.01
        torch.testing.assert_close(before[name] - p.detach(), torch.full_like(p, lr), rtol=1e-3, atol=1e-7)


def test_a_bad_encoder_lr_is_a_clear_error():
    from metanlp_cli.config import TrainerConfig, validate

    with pytest.raises(MetaNLPError, match=r"trainer.encoder_lr=0.0; allowed: null \(optim.lr\) or a number > 0"):
        validate(OmegaConf.create({"encoder_lr": 0.0}), TrainerConfig, "trainer")
