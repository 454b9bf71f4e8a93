"""Bench configs: one teacher, one student, one recipe, several methods x several seeds.

A bench config is a run config (it may ``inherit:`` one: teacher, student, data, recipe) with a
``bench:`` section::

    inherit: ../kd/res32x4_res8x4.yaml
    name: bench_res32x4_res8x4
    bench:
      seeds: [0, 1, 2]
      methods:                      # label -> what differs from the base
        ce:   {title: student alone, distill: {method: ce}}
        kd:   {distill: {method: kd, options: {tau: 4.0}}}
        kd_btkd:
          distill: {method: kd, options: {tau: 4.0}, btkd: {enabled: true}}
      compare: [[kd_btkd, kd]]      # optional: pairs beyond the ones derived automatically
      only: [kd, kd_btkd]           # optional: train these methods only (a unit of the bench)

A method's ``distill`` replaces the base's whole ``distill`` section (host options of one method
never leak into another); its ``optim`` and ``model`` (``student``, ``student_options``) are merged
onto the base. Data, teacher, runtime and the number of epochs are the bench's, shared by all.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple, Union

from .._checks import keyword_options
from ..config import (Config, ConfigError, _read_yaml, config_from_dict, merge_overrides, parse_override,
                      resolve_config_path)
from ..engine.build import check_names
from ..losses import HOSTS

__all__ = ["BenchSpec", "Method", "load_bench", "bench_from_dict", "method_title"]

METHOD_KEYS = ("title", "distill", "optim", "model")
MODEL_KEYS = ("student", "student_options")
BENCH_KEYS = ("seeds", "methods", "compare", "only")


@dataclass
class Method:
    label: str
    title: str
    overrides: Dict[str, Any]  # distill / optim / model, as written


@dataclass
class BenchSpec:
    """A resolved bench: ``configs[(label, seed)]`` is each member's full, validated config.

    Made by `load_bench`. ``name`` and ``output_dir`` place its folder; ``base`` is the run config
    the methods vary (a dict, without ``bench:``); ``seeds`` and ``methods`` (each with its
    ``label``, ``title`` and the ``overrides`` it sets) span the grid, in table order; ``compare``
    holds the pairs asked for beyond the derived ones."""

    name: str
    output_dir: str
    base: Dict[str, Any]  # the base run config (without ``bench``), as a dict
    seeds: List[int]
    methods: List[Method]
    compare: List[Tuple[str, str]] = field(default_factory=list)
    configs: Dict[Tuple[str, int], Config] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        """The bench's folder, ``output_dir/name``: ``bench.yaml``, the report, and ``runs/<label>-s<seed>/``
        for each member."""
        return Path(self.output_dir) / self.name

    def config(self, label: str, seed: int) -> Config:
        """The full config of the member ``label`` at ``seed`` (a KeyError for one not in the bench)."""
        return self.configs[(label, seed)]

    def to_dict(self) -> Dict[str, Any]:
        """The resolved bench config, as ``bench.yaml`` records it (`load_bench` reads it back)."""
        return {**copy.deepcopy(self.base), "bench": {
            "seeds": list(self.seeds),
            "methods": {m.label: {"title": m.title, **copy.deepcopy(m.overrides)} for m in self.methods},
            "compare": [list(p) for p in self.compare]}}


DISPLAY_NAMES = {"kd_ls": "KD+LS", "dkd_ls": "DKD+LS", "ls": "LS", "label_swap": "label-swap KD"}


def method_title(cfg: Config) -> str:
    """A readable name of a member's method: ``KD``, ``DKD+BTKD``, ``KD+BTKD (rectify=none)``."""
    d = cfg.distill
    if d.method == "ce":
        return "CE (student alone)"
    title = DISPLAY_NAMES.get(d.method, d.method.upper())
    if not d.btkd.enabled:
        return title
    from ..config import BTKDConfig

    default, own = BTKDConfig(enabled=True), d.btkd
    changed = [f"{k}={getattr(own, k)}" for k in ("rectify", "reduction", "schedule", "split")
               if getattr(own, k) != getattr(default, k)]
    if own.schedule_options:
        changed.append(f"schedule_options={own.schedule_options}")
    return f"{title}+BTKD" + (f" ({', '.join(changed)})" if changed else "")


def bench_from_dict(data: Dict[str, Any], overrides: Sequence[str] = ()) -> BenchSpec:
    parsed = [parse_override(text) for text in overrides]
    data = merge_overrides(copy.deepcopy(data), parsed)
    bench = data.pop("bench", None)
    if not isinstance(bench, dict):
        raise ConfigError("a bench config needs a 'bench:' section with 'seeds' and 'methods' "
                          "(see `btkd configs` for built-in benches, e.g. cifar100/bench/res32x4_res8x4)")
    unknown = sorted(set(bench) - set(BENCH_KEYS), key=str)
    if unknown:
        raise ConfigError(f"unknown key(s) bench.{unknown[0]}; allowed: {list(BENCH_KEYS)}")
    base_cfg = config_from_dict(data)  # validates the base on its own
    if "seeds" in bench and any("seed" in p for p in parsed):
        raise ConfigError(f"seed={base_cfg.seed} has no effect on a bench that sets bench.seeds={bench['seeds']}; "
                          f"pass bench.seeds=[{base_cfg.seed}] to train that seed")
    seeds = bench.get("seeds", [base_cfg.seed])
    if (not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                         for s in seeds) or len(set(seeds)) != len(seeds)):
        raise ConfigError(f"bench.seeds={seeds!r} must be a non-empty list of distinct integers >= 0, e.g. [0, 1, 2]")
    methods_in = bench.get("methods")
    if not isinstance(methods_in, dict) or not methods_in:
        raise ConfigError("bench.methods must map labels to methods, e.g. {kd: {distill: {method: kd}}}")
    all_labels = list(methods_in)
    only = bench.get("only")
    if only is not None:  # train part of the bench's methods: a unit, pooled later with the others
        if not isinstance(only, list) or not only or any(label not in methods_in for label in only):
            raise ConfigError(f"bench.only={only!r} must be a non-empty list of method labels from {all_labels}")
        methods_in = {label: methods_in[label] for label in all_labels if label in only}
    for label, spec in methods_in.items():  # a scalar where a mapping belongs (bench.methods.kd=1)
        for key, value in [(f"bench.methods.{label}", spec)] + [(f"bench.methods.{label}.{k}", (spec or {}).get(k))
                                                                 for k in ("model", "optim", "distill")
                                                                 if isinstance(spec, dict)]:
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"{key}={value!r} must be a mapping, e.g. bench.methods.kd={{distill: {{method: "
                                  "kd}, optim: {lr: 0.05}}")
    if not isinstance(bench.get("compare") or [], list):
        raise ConfigError(f"bench.compare={bench['compare']!r} must be a list of [label_a, label_b] pairs")
    _refuse_base_distill_overrides(overrides, parsed, methods_in)
    methods, configs = [], {}
    for label, spec in methods_in.items():
        where = f"bench.methods.{label}"
        if not isinstance(label, str) or not label or any(c in label for c in "/\\ ") or label.startswith("."):
            raise ConfigError(f"{where}: a label must be a plain name (it names folders), got {label!r}")
        spec = dict(spec or {})
        for key in spec:
            if key not in METHOD_KEYS:
                raise ConfigError(f"unknown key {where}.{key}; a method may set {list(METHOD_KEYS)} (data, teacher, "
                                  "runtime and epochs are shared by the whole bench)")
        for key in spec.get("model") or {}:
            if key not in MODEL_KEYS:
                raise ConfigError(f"{where}.model.{key} cannot differ between methods; a method may set model."
                                  f"{' / model.'.join(MODEL_KEYS)}")
        if "epochs" in (spec.get("optim") or {}):
            raise ConfigError(f"{where}.optim.epochs: every method of a bench trains for the same epochs; set "
                              "optim.epochs for the whole bench")
        title = spec.pop("title", None)
        # a method's own model drops the bench's options of another model, as an override does
        merged = merge_overrides(data, [{k: v for k, v in spec.items() if k != "distill"}])
        if "distill" in spec:
            merged["distill"] = copy.deepcopy(spec["distill"])
        for seed in seeds:
            try:
                cfg = config_from_dict({**merged, "seed": seed, "name": f"{label}-s{seed}"})
                check_names(cfg)  # models, host and BTKD options are checked now, not after the first methods ran
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
            configs[(label, seed)] = cfg
        methods.append(Method(label, str(title) if title else method_title(configs[(label, seeds[0])]), spec))
    labels = [m.label for m in methods]
    compare = []
    for pair in bench.get("compare") or []:
        if not (isinstance(pair, list) and len(pair) == 2 and all(p in all_labels for p in pair)):
            raise ConfigError(f"bench.compare entry {pair!r} must be [label_a, label_b] with labels from "
                              f"{all_labels}")
        if all(p in labels for p in pair):  # with bench.only, a pair needs both its methods here
            compare.append((pair[0], pair[1]))
    base = {**data, "name": base_cfg.name}
    return BenchSpec(name=base_cfg.name, output_dir=base_cfg.output_dir, base=base, seeds=list(seeds),
                     methods=methods, compare=compare, configs=configs)


def _refuse_base_distill_overrides(texts: Sequence[str], parsed: Sequence[Dict[str, Any]],
                                   methods: Dict[str, Any]) -> None:
    """A method's own ``distill`` replaces the base's, so an override of the base's ``distill.*``
    would not reach it: refused, with the methods it could be meant for and their key, rather than
    trained without it."""
    own = {label: spec["distill"] or {} for label, spec in methods.items() if "distill" in (spec or {})}
    for text, override in zip(texts, parsed):
        if "distill" not in override or not own:
            continue
        key, value = (part.strip() for part in text.split("=", 1))
        path = key.split(".")
        if path[1:2] == ["options"] and len(path) > 2:  # the methods whose host takes that option
            fits = [label for label, d in own.items() if _host_takes(d.get("method", "kd"), path[2])]
        elif path[1:2] == ["btkd"] and len(path) > 2:  # BTKD's options: the methods with BTKD on (off: enabled)
            fits = [label for label, d in own.items() if d.get("method", "kd") != "ce" and
                    bool((d.get("btkd") or {}).get("enabled")) != (path[2] == "enabled")]
        else:
            fits = list(own)
        where = (f"give it to the methods it is meant for, as bench.methods.<label>.{key}={value}, e.g. "
                 f"bench.methods.{fits[0]}.{key}={value} (it applies to {fits})" if fits else
                 "none of them takes it")
        raise ConfigError(f"{text}: the bench's methods {list(own)} each set their own distill section, which "
                          f"replaces the base's, so this override would reach none of them; {where}")


def _host_takes(method: str, option: str) -> bool:
    if method not in HOSTS:
        return False
    accepted = keyword_options(HOSTS[method])
    return accepted is None or option in accepted


def load_bench(source: Union[str, Path, Dict[str, Any]], overrides: Sequence[str] = ()) -> BenchSpec:
    """A bench from a YAML file, a built-in name (``cifar100/bench/res32x4_res8x4``) or a dict.

    The source is a run config (data, models, recipe; a file may ``inherit:``) with a ``bench:``
    section: ``seeds``, ``methods`` (label -> what differs from the base: ``distill``, ``optim``,
    ``model.student``, a ``title``), optional ``compare`` pairs and ``only`` (docs/CONFIG.md, "The
    bench: section"). ``overrides`` are ``key=value`` strings, on the base (``optim.epochs=10``) or
    the bench (``bench.seeds=[0,1]``). Every member's config is resolved, its model names checked and
    its loss built now, so a mistake in any method is a ConfigError before anything trains. The
    bench's folder is ``output_dir/name``: give the config a ``name``."""
    data = dict(source) if isinstance(source, dict) else _read_yaml(resolve_config_path(str(source)))
    return bench_from_dict(data, overrides)


def is_bench_folder(path: Path) -> bool:
    return (Path(path) / "bench.yaml").is_file()


def derived_comparisons(spec: BenchSpec) -> List[Tuple[str, str, str]]:
    """The pairs a bench reports without being asked, as (kind, a, b):
    ``btkd_vs_host``: a method with BTKD against the same method without it;
    ``ablation_vs_btkd``: BTKD with one option changed against BTKD with the defaults;
    ``host_vs_alone``: a host without BTKD against the student trained alone (``distill.method: ce``,
    otherwise the same config): whether distillation pays at all, BTKD's premise;
    then the config's own ``compare`` pairs (kind ``asked``)."""
    from ..config import BTKDConfig, config_to_dict

    def key(cfg: Config, less: str = "btkd") -> str:  # the config, less seed, name and distill's btkd (or all distill)
        d = config_to_dict(cfg)
        d.pop("seed"), d.pop("name")
        d.pop("distill") if less == "distill" else d["distill"].pop("btkd")
        return json.dumps(d, sort_keys=True, default=str)

    seed = spec.seeds[0]
    configs = [(m.label, spec.config(m.label, seed)) for m in spec.methods]
    plain, full, alone = {}, {}, {}
    default_btkd = config_to_dict(BTKDConfig(enabled=True))
    for label, cfg in configs:
        if cfg.distill.method == "ce":
            alone.setdefault(key(cfg, "distill"), label)
        elif not cfg.distill.btkd.enabled:
            plain.setdefault(key(cfg), label)
        elif config_to_dict(cfg.distill.btkd) == default_btkd:
            full.setdefault(key(cfg), label)
    out = []
    for label, cfg in configs:
        if not cfg.distill.btkd.enabled:
            continue
        k = key(cfg)
        if k in plain:
            out.append(("btkd_vs_host", label, plain[k]))
        if k in full and full[k] != label:
            out.append(("ablation_vs_btkd", label, full[k]))
    for label, cfg in configs:
        if cfg.distill.method != "ce" and not cfg.distill.btkd.enabled and key(cfg, "distill") in alone:
            out.append(("host_vs_alone", label, alone[key(cfg, "distill")]))
    seen = {(a, b) for _, a, b in out}
    out += [("asked", a, b) for a, b in spec.compare if (a, b) not in seen]
    return out

