"""Each job's config of a large sweep at a fraction of Hydra's cost.

Hydra composes every job's config from scratch (about 80 ms here, for the defaults list, every
config file and its own large ``hydra`` node), and does it twice: once when the sweeper checks
the batch, once when the launcher starts the job. For a sweep of thousands of short runs that is
most of the time. Most jobs of a sweep differ only in plain values (``seed=3``,
``schedule.a0=10``): their configs are one template with other values. So the first job of each
*signature* (its config-group choices, its other non-value overrides, and the keys its value
overrides set) is composed by Hydra, and every other job of that signature is that template,
copied, with its own values applied by Hydra's own override code and its own
``hydra.overrides.task`` and ``hydra.job.override_dirname``. The second job of each signature is
composed both ways and compared, and a signature whose two configs differ is composed by Hydra
from then on. The sweeper's check of a batch only needs to know that a job's config composes:
for a job of a checked signature whose value keys all exist, that costs no copy (``checking``).

The launcher asks :meth:`SweepConfigs.job`, which also says which keys of the copy are the job's
own (:class:`Derived`): the rest is the template's, whose ``.hydra`` files the launcher then
writes from the template's YAML (job_files.TemplateFiles) instead of each job's whole config.
"""

import pickle
from dataclasses import dataclass
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig, ListConfig, OmegaConf, StringNode


_ABSENT = object()

# What _from_template sets in a job's copy besides its value overrides' keys.
TEMPLATE_JOB_KEYS = ("hydra.overrides.task", "hydra.job.override_dirname")


class Template:
    """The config of the first job of a signature (composed by Hydra), pickled."""

    def __init__(self, config: DictConfig) -> None:
        self.blob = _pickled(config)  # a copy: the job may change its own
        # A copy for the sweeper's check, which discards what it gets; None: this signature's
        # two configs differed, Hydra composes each of its jobs from then on.
        self.config: DictConfig | None = pickle.loads(self.blob)
        self.checked = False  # the second job of this signature was composed both ways, and agreed
        self.files: Any = None  # the launcher's YAML of this template (job_files.TemplateFiles), made once


@dataclass(frozen=True)
class Derived:
    """How a job's config was made: a copy of ``template`` in which only ``keys`` were set
    (its value overrides' keys and TEMPLATE_JOB_KEYS); every other node is the template's."""

    template: Template
    keys: tuple[str, ...]


class SweepConfigs:
    """A drop-in for ``ConfigLoaderImpl.load_sweep_config`` (installed on the loader instance)."""

    def __init__(self, loader: ConfigLoaderImpl) -> None:
        self.loader = loader
        self.compose = loader.load_sweep_config  # Hydra's own
        self.parser = OverridesParser.create()
        # override string -> (Hydra's parse of it, whether it is a plain value): a sweep repeats
        # a few dozen distinct strings over thousands of jobs, each looked at twice (check, launch)
        self.parsed: dict[str, tuple[Any, bool]] = {}
        self.templates: dict[tuple, Template] = {}  # signature -> its template
        self.checking = True  # the sweeper's check of a batch; the launcher sets False for its own calls

    def __call__(self, master_config: DictConfig, sweep_overrides: list[str]) -> DictConfig:
        return self.job(master_config, sweep_overrides)[0]

    def job(self, master_config: DictConfig, sweep_overrides: list[str]) -> tuple[DictConfig, Derived | None]:
        """The job's config, and how it was made from its signature's template (None: composed
        by Hydra, or the template itself for the sweeper's check)."""
        parsed = self._parse(sweep_overrides)
        values = [override for override, is_value in parsed if is_value]
        others = [override for override, is_value in parsed if not is_value]
        if not self._commutes(parsed):  # a template would apply this job's values after what undoes them
            return self.compose(master_config, list(sweep_overrides)), None
        parsed = [override for override, _ in parsed]
        signature = (tuple(o.input_line for o in others), tuple(sorted(o.key_or_group for o in values)))
        template = self.templates.get(signature)
        if template is None:
            config = self.compose(master_config, list(sweep_overrides))
            self.templates[signature] = Template(config)
            return config, None
        if template.config is None:
            return self.compose(master_config, list(sweep_overrides)), None
        if self.checking and template.checked and all(
                OmegaConf.select(template.config, o.key_or_group, default=_ABSENT) is not _ABSENT for o in values):
            return template.config, None  # it composes: the sweeper discards what it gets
        config = self._from_template(template.blob, master_config, parsed, values)
        if not template.checked:  # the second job of this signature: both ways must agree
            hydra_way = self.compose(master_config, list(sweep_overrides))
            if OmegaConf.to_yaml(hydra_way) != OmegaConf.to_yaml(config):
                template.config = None
                return hydra_way, None
            template.checked = True
        return config, Derived(template, tuple(o.key_or_group for o in values) + TEMPLATE_JOB_KEYS)

    def _parse(self, overrides) -> list[tuple[Any, bool]]:
        """Hydra's parse of each override, and whether it is a plain value (_is_value), each
        distinct string done once (the grammar costs about 7 ms an override, and the check for
        a config group of that name a tenth of that)."""
        missing = [o for o in dict.fromkeys(overrides) if o not in self.parsed]
        if missing:
            self.parsed.update((line, (parsed, self._is_value(parsed)))
                               for line, parsed in zip(missing, self.parser.parse_overrides(missing)))
        return [self.parsed[o] for o in overrides]

    def _is_value(self, override) -> bool:
        """A plain ``key=value`` of the app's config: not a config group, not ``+``/``~``/``++``,
        not Hydra's own, not a dict (which Hydra merges into what is there)."""
        return (override.type == OverrideType.CHANGE and override.package is None
                and not override.is_hydra_override() and not override.is_sweep_override()
                and not isinstance(override.value(), dict)
                and not self.loader.repository.group_exists(override.key_or_group))

    def _commutes(self, parsed: list[tuple[Any, bool]]) -> bool:
        """Whether a job's value overrides can be applied after its other overrides, as a
        template applies them: no ``+``/``~``/``++`` override after a value touches its node,
        above it or below it (``clip.eps=1 ~clip.eps`` deletes what was set, ``clip.eps=1
        ++clip.eps=5`` sets it again). Config groups commute: Hydra applies them first anyway."""
        set_before: list[str] = []
        for override, is_value in parsed:
            key = override.key_or_group
            if is_value:
                set_before.append(key)
            elif not self.loader.repository.group_exists(key) and any(
                    key == k or k.startswith(key + ".") or key.startswith(k + ".") for k in set_before):
                return False
        return True

    @staticmethod
    def _from_template(template: bytes, master_config: DictConfig, parsed, values) -> DictConfig:
        config = pickle.loads(template)
        ConfigLoaderImpl._apply_overrides_to_config(values, config)
        task = [o for o in parsed if not o.is_hydra_override()]
        hydra = config.hydra
        _set_strings(hydra.overrides.task, [o.input_line for o in task], hydra.overrides, "task")
        dirname = hydra.job.config.override_dirname
        hydra.job.override_dirname = get_overrides_dirname(
            overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep,
            # its values, as ListConfig's own ``in`` compares them (ten times faster than it)
            exclude_keys=list(dirname.exclude_keys))
        OmegaConf.copy_cache(from_config=master_config, to_config=config)
        return config


def _set_strings(node: ListConfig, lines: list[str], parent: DictConfig, key: str) -> None:
    """``parent[key] = lines`` where ``node`` (parent[key]) holds as many strings already: each
    element node given its new string, as assigning the list would make it (a tenth of the cost
    of building the list's nodes anew)."""
    usable = isinstance(node, ListConfig) and not node._is_none() and not node._is_missing()
    elements = [node._get_node(index) for index in range(len(node))] if usable else []
    if usable and len(elements) == len(lines) and all(isinstance(element, StringNode) for element in elements):
        for element, line in zip(elements, lines):
            element._set_value(line)
    else:
        parent[key] = lines


def _pickled(config: DictConfig) -> bytes:
    """The config pickled: a copy made by unpickling it costs a seventh of copy.deepcopy's (which
    walks every OmegaConf node in Python: 6 ms against 0.9 ms for this app's config), with the
    same nodes, flags and types (tests/test_launcher.py)."""
    return pickle.dumps(config, protocol=pickle.HIGHEST_PROTOCOL)
