"""Turning config nodes into objects: one checked path around `hydra.utils.instantiate`.

Configs are user input, so a `_target_` may only name something inside `metanlp_cli.` (or a
torch optimizer), and every key must be a parameter of that target with a value of the right type.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import types
import typing
from typing import Any

import hydra.utils
import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from metanlp_cli import CONFIG_DIR
from metanlp_cli.errors import MetaNLPError

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


def _targets_in(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["_target_"]} if isinstance(node.get("_target_"), str) else set()
        return found.union(*(_targets_in(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_targets_in(value) for value in node))
    return set()


@functools.cache
def allowed_targets() -> frozenset[str]:
    """The constructors a config may name: those that metanlp's own YAML files name, and torch's optimizers.
    A config (a checkpoint's saved one included) is input, so it can never name any other callable."""
    named = set()
    for path in CONFIG_DIR.rglob("*.yaml"):
        named |= _targets_in(yaml.safe_load(path.read_text()))
    optimizers = {
        f"torch.optim.{name}"
        for name, value in vars(torch.optim).items()
        if isinstance(value, type) and issubclass(value, torch.optim.Optimizer) and value is not torch.optim.Optimizer
    }
    return frozenset(target for target in named if target.startswith("metanlp_cli.")) | optimizers


def resolve_target(path: str, key: str) -> Any:
    if not isinstance(path, str) or path not in allowed_targets():
        raise MetaNLPError(
            f"{key}._target_={path!r} is not allowed; targets must be a metanlp_cli constructor named in configs/ "
            "or a torch.optim optimizer"
        )
    module_name, _, attribute = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise MetaNLPError(f"{key}._target_={path!r} does not exist ({error})") from None


def _accepts(annotation: Any, value: Any) -> bool:
    """Whether a config value fits a constructor's type hint (only simple hints are checked)."""
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(arg, value) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        return isinstance(value, (list, tuple, ListConfig))
    if origin is dict or annotation is dict:
        return isinstance(value, (dict, DictConfig))
    return True


def is_target(value: Any) -> bool:
    return isinstance(value, DictConfig) and "_target_" in value


def is_target_dict(value: Any) -> bool:
    """A dict whose every value is a target config (`dataset.tasks` of a task collection): built value by value."""
    return isinstance(value, DictConfig) and len(value) > 0 and all(is_target(child) for child in value.values())


def refuse_nested_targets(value: Any, key: str) -> None:
    """A `_target_` anywhere inside a plain value (a list, a dict of settings) is refused, never instantiated."""
    if isinstance(value, DictConfig):
        for name, child in value.items_ex(resolve=False):
            if name in HYDRA_KEYS:
                raise MetaNLPError(f"{key}.{name} is not allowed inside a plain value; only a config node may have it")
            refuse_nested_targets(child, f"{key}.{name}")
    elif isinstance(value, ListConfig):
        for index, child in enumerate(value._iter_ex(resolve=False)):
            refuse_nested_targets(child, f"{key}[{index}]")


def check_arguments(node: DictConfig, key: str, provided: set[str] = frozenset()) -> None:
    """Every key of `node` is a parameter of its `_target_`, with a value of the hinted type."""
    target = resolve_target(node.get("_target_"), key)
    signature = inspect.signature(target)
    try:
        hints = typing.get_type_hints(target.__init__ if inspect.isclass(target) else target)
    except Exception:  # unresolvable hints: check names only
        hints = {}
    parameters = {name: p for name, p in signature.parameters.items() if p.kind is not p.VAR_KEYWORD}
    takes_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    for name in node:
        if name in ("_target_", "_partial_"):
            continue
        if name in HYDRA_KEYS:
            raise MetaNLPError(f"{key}.{name} is not allowed; a config node may set only _target_ and _partial_")
        if name not in parameters:
            if takes_any:
                continue
            allowed = ", ".join(sorted(set(parameters) - provided - {"self"}))
            raise MetaNLPError(f"{key}.{name} is not a parameter of {node._target_}; allowed: {allowed}")
        value = node[name]
        if is_target(value):
            check_arguments(value, f"{key}.{name}")
            continue
        if is_target_dict(value):
            for entry, child in value.items():
                check_arguments(child, f"{key}.{name}.{entry}")
            continue
        refuse_nested_targets(value, f"{key}.{name}")
        plain = OmegaConf.to_object(value) if isinstance(value, (DictConfig, ListConfig)) else value
        if name in hints and not _accepts(hints[name], plain):
            expected = getattr(hints[name], "__name__", str(hints[name]))
            raise MetaNLPError(f"{key}.{name}={plain!r} has the wrong type; expected {expected}")


def build(node: DictConfig, key: str, **provided: Any) -> Any:
    """Instantiate a config node after checking its target and arguments; `provided` are runtime objects."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        raise MetaNLPError(f"{key} must be a config with a _target_")
    try:
        check_arguments(node, key, set(provided))
        # Nested targets (and dicts of them) are built here too, so that their errors name their own key.
        children = {name: value for name, value in node.items() if is_target(value) or is_target_dict(value)}
        plain = OmegaConf.create({name: value for name, value in node.items() if name not in children})
        # Runtime objects go to the partial, not through OmegaConf (which would convert dataclasses).
        # Not recursive: every nested target was checked and is built below; nothing else is instantiated.
        factory = hydra.utils.instantiate(plain, _partial_=True, _convert_="all", _recursive_=False)
    except OmegaConfBaseException as error:
        raise MetaNLPError(f"{key}: {error.msg if hasattr(error, 'msg') else error}") from None
    children = {
        name: build(value, f"{key}.{name}")
        if is_target(value)
        else {entry: build(child, f"{key}.{name}.{entry}") for entry, child in value.items()}
        for name, value in children.items()
    }
    try:
        return factory(**children, **provided)
    except ValueError as error:  # constructors raise ValueError for a bad value
        raise MetaNLPError(f"{key}: {error}") from None


def validate(node: DictConfig | None, schema: type, key: str) -> Any:
    """Check a plain (target-less) config node against a dataclass schema; return the dataclass."""
    try:
        values = OmegaConf.to_container(node, resolve=True) if node is not None else {}
        merged = OmegaConf.merge(OmegaConf.structured(schema), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        full_key = f"{key}.{error.key}" if getattr(error, "key", None) else key
        message = str(error).splitlines()[0]
        raise MetaNLPError(f"{full_key}: {message}") from None


@dataclasses.dataclass
class TrainerConfig:
    """Meta-training settings (configs/trainer/*.yaml)."""

    steps: int = 300
    meta_batch_size: int = 4
    grad_clip: float | None = None  # noqa: UP007 (OmegaConf needs Optional)
    eval_interval: int = 100
    val_episodes: int = 100
    log_interval: int = 10
    device: str = "auto"
    seed: int = 0
    progress: bool = True
    distributed: bool = False  # under torchrun: share each meta-batch among the processes
    # The outer step size of the encoder's trained parameters; null: optim.lr for every parameter.
    encoder_lr: float | None = None  # noqa: UP007 (OmegaConf needs Optional)

    def __post_init__(self) -> None:
        if self.encoder_lr is not None and not self.encoder_lr > 0:
            raise MetaNLPError(f"trainer.encoder_lr={self.encoder_lr}; allowed: null (optim.lr) or a number > 0")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise MetaNLPError(f"trainer.device={self.device!r} is not allowed; allowed: auto, cpu, cuda")
        if self.steps < 0:  # 0: no meta-training, the model is validated and tested as initialised
            raise MetaNLPError(f"trainer.steps={self.steps} must be >= 0 (0: test the model without meta-training)")
        for name in ("meta_batch_size", "eval_interval", "val_episodes", "log_interval"):
            if getattr(self, name) < 1:
                raise MetaNLPError(f"trainer.{name}={getattr(self, name)} must be >= 1")


GLOBAL_GROUPS = ("debug",)  # config groups whose choices (`# @package _global_`) set keys of other groups


def _leaf_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        keys += _leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return keys


def apply_overrides(base: DictConfig, composed: DictConfig, overrides: list[str], skip: set[str]) -> DictConfig:
    """Copy onto `base` what the user set on the command line, taking the values Hydra composed.

    A group choice (`protocol=episodic`) replaces that whole node; a key (`protocol.episodes=100`)
    replaces one value. Keys in `skip` belong to the calling command, not to `base`.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    result = OmegaConf.create(OmegaConf.to_container(base, resolve=False))
    for override in OverridesParser.create().parse_overrides(overrides):
        # `+dataset/glue@dataset.tasks.extra=qqp` puts a config at its package, not at `dataset.glue`
        key = override.package or override.key_or_group.replace("/", ".")
        if key in GLOBAL_GROUPS:  # `debug=smoke` sets keys of other groups: copy each of those
            settings = yaml.safe_load((CONFIG_DIR / key / f"{override.value()}.yaml").read_text()) or {}
            for leaf in _leaf_keys(settings):
                OmegaConf.update(result, leaf, OmegaConf.select(composed, leaf), merge=False, force_add=True)
            continue
        if key.split(".")[0] in skip or key.startswith("hydra"):
            continue
        if override.is_delete():
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(result, parent) if parent else result
            if node is not None and leaf in node:
                del node[leaf]
            continue
        value = OmegaConf.select(composed, key, throw_on_missing=False)
        OmegaConf.update(result, key, value, merge=False, force_add=True)
    return result
