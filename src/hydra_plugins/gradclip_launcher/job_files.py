"""The YAML of a job's three ``.hydra`` files (config.yaml, hydra.yaml, overrides.yaml), as
OmegaConf.to_yaml writes them, at a fraction of its cost.

:func:`to_yaml` is OmegaConf.to_yaml on libyaml's emitter. :class:`TemplateFiles` goes further for
the jobs that SweepConfigs makes from a template (sweep_configs.Derived): most of a job's YAML is
its template's. PyYAML represents a config (plain dicts and lists) as a tree of YAML nodes, then
emits the tree; a node's representation depends on its own value alone. So the template's config
is represented once, and each job's tree is the template's with the nodes at the keys the job set
represented anew (the nodes above them copied, the rest shared), then emitted: the same text as
to_yaml of the job's own config (tests/test_launcher.py), for a tenth of the representing.
"""

import copy
import io
from enum import Enum

import yaml
from omegaconf import Container, DictConfig, ListConfig, OmegaConf
from omegaconf._utils import OmegaConfDumper, split_key
from yaml.nodes import MappingNode, Node, SequenceNode

# OmegaConf's YAML dumper (it quotes strings that would read back as numbers or booleans) on
# libyaml's emitter where PyYAML has it: OmegaConf.to_yaml's pure-Python emitter took a tenth of a
# large sweep's time for the three .hydra files of each job. The same YAML, and the same text for
# any config without characters beyond U+FFFF, which libyaml escapes (tests/test_launcher.py).
_Dumper = type("_Dumper", (getattr(yaml, "CDumper", yaml.Dumper),), {})
_Dumper.add_representer(str, OmegaConfDumper.str_representer)
_REPRESENT = {"default_flow_style": False, "sort_keys": False}  # what to_yaml's yaml.dump represents with
_EMIT = {"allow_unicode": True}  # and emits with
_STR = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG  # the tag of a str key's node


def to_yaml(node) -> str:
    """OmegaConf.to_yaml(node), faster."""
    return yaml.dump(_plain(node), Dumper=_Dumper, **_REPRESENT, **_EMIT)


def job_yaml(config: DictConfig, task_cfg: DictConfig, hydra_cfg: DictConfig) -> tuple[str, str, str]:
    """config.yaml, hydra.yaml and overrides.yaml of a job: its task config, its hydra config
    and its ``hydra.overrides.task``."""
    return to_yaml(task_cfg), to_yaml(hydra_cfg), to_yaml(config.hydra.overrides.task)


class TemplateFiles:
    """The three files of the jobs made from one template config (see the module's docstring)."""

    def __init__(self, template: DictConfig) -> None:
        self.root = _represent(_plain(template))  # the whole config's tree: {task keys..., hydra: ...}

    def job_yaml(self, config: DictConfig, keys) -> tuple[str, str, str] | None:
        """As job_yaml(config, ...) for a copy of the template in which only ``keys`` (dotted,
        as Hydra's overrides name them) were set; None where a key is not in the template's
        tree (as a mapping's key or a list's index), which leaves it to job_yaml."""
        root = self.root
        for key in keys:
            path = split_key(key)
            node = _node_at(config, path)
            if node is None:
                return None
            root = _replaced(root, path, _represent(_plain(node)))
            if root is None:
                return None
        task, hydra = copy.copy(root), copy.copy(root)
        task.value = [pair for pair in root.value if not _is_key(pair[0], "hydra")]
        hydra.value = [pair for pair in root.value if _is_key(pair[0], "hydra")]
        overrides = _subtree(root, ["hydra", "overrides", "task"])
        if len(hydra.value) != 1 or overrides is None:
            return None
        return _emit(task), _emit(hydra), _emit(overrides)


def _plain(node):
    """The node as OmegaConf.to_container(..., resolve=False, enum_to_str=True) writes it (for a
    value node, as its container would hold it)."""
    if isinstance(node, Container):
        return OmegaConf.to_container(node, resolve=False, enum_to_str=True)
    value = node._value()
    return f"{value.name}" if isinstance(value, Enum) else value


def _represent(data) -> Node:
    return _Dumper(io.StringIO(), **_REPRESENT).represent_data(data)


def _emit(node: Node) -> str:
    return yaml.serialize(node, Dumper=_Dumper, **_EMIT)


def _node_at(config: DictConfig, path: list[str]):
    """The config's own node at ``path`` (not resolved), or None."""
    node = config
    try:
        for part in path:
            if isinstance(node, ListConfig):
                node = node._get_node(int(part)) if part.isdigit() else None
            elif isinstance(node, DictConfig):
                node = node._get_node(part)
            else:
                return None
            if node is None:
                return None
    except Exception:  # noqa: BLE001 - a key this config does not have (struct mode raises)
        return None
    return node


def _is_key(node: Node, key: str) -> bool:
    return node.tag == _STR and node.value == key


def _replaced(node: Node, path: list[str], new: Node) -> Node | None:
    """``node``'s tree with ``new`` at ``path``: the nodes along the path copied, the others
    shared (each still appears once in the tree, so the emitter writes no aliases)."""
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(node, MappingNode):
        index = next((i for i, (key, _) in enumerate(node.value) if _is_key(key, head)), None)
    elif isinstance(node, SequenceNode) and head.isdigit():
        index = int(head) if int(head) < len(node.value) else None
    else:
        index = None
    if index is None:
        return None
    child = node.value[index]
    replaced = _replaced(child[1] if isinstance(node, MappingNode) else child, rest, new)
    if replaced is None:
        return None
    node = copy.copy(node)
    node.value = list(node.value)
    node.value[index] = (child[0], replaced) if isinstance(node, MappingNode) else replaced
    return node


def _subtree(node: Node, path: list[str]) -> Node | None:
    for part in path:
        if not isinstance(node, MappingNode):
            return None
        node = next((value for key, value in node.value if _is_key(key, part)), None)
        if node is None:
            return None
    return node
