"""Building a run from its config: the device policy, the data, the teacher, each student, its loss
and its optimizer. Pure construction; the loop that uses them is in `grid.py`."""

from __future__ import annotations

import difflib
import math
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from .._checks import keyword_options
from ..config import Config, ConfigError
from ..data import DATASETS, Split, imagefolder_loader, load_split
from ..data.imagefolder import imagefolder_classes, imagefolder_test_split
from ..data.gpu import ResidentLoader, epoch_seed
from ..data.subset import take_subset
from ..losses import Distill, make_host
from ..models import MODELS, CheckpointMismatchError, build_model, load_checkpoint
from ..strategy import BTKD
from ..weights import resolve_checkpoint
from . import distributed as dist
from .fusion import fold_batchnorm

__all__ = ["Runtime", "Data", "setup_runtime", "build_data", "build_for_data", "build_student", "build_teacher",
           "make_loss", "make_optimizer", "lr_factor", "resolve_device", "per_iteration",
           "per_process_batch"]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"runtime.device={name!r} is not a device: use auto, cpu, cuda or cuda:N "
                          "(`--device` for btkd eval)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"runtime.device={name!r} but no CUDA GPU is visible; use runtime.device=cpu or auto "
                          "(`--device cpu` for btkd eval)")
    return device


@dataclass
class Runtime:
    """Where and how a run computes: device, autocast dtype, memory format, processes."""

    device: torch.device
    ctx: dist.Context
    amp_dtype: Optional[torch.dtype]
    channels_last: bool

    @property
    def on_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def setup_runtime(cfg: Config) -> Runtime:
    """Join torchrun's process group (if any), pick the device and set the backend flags."""
    ctx = dist.init()
    r = cfg.runtime
    if r.threads:
        torch.set_num_threads(r.threads)
    device = resolve_device(r.device, ctx.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        # precision=fp32 means fp32: no TF32 in convolutions and matrix products.
        tf32 = r.precision != "fp32"
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = tf32
    on_cuda = device.type == "cuda"
    amp = torch.bfloat16 if (r.precision == "bf16" or (r.precision == "auto" and on_cuda)) else None
    channels_last = r.channels_last == "on" or (r.channels_last == "auto" and on_cuda)
    return Runtime(device=device, ctx=ctx, amp_dtype=amp, channels_last=channels_last)


@dataclass
class Data:
    """The splits of a run: a test loader, and a factory of training loaders (one per seed: each
    seed has its own data order and augmentation; ``train_loader(seed, views=2)`` adds the strong
    view a two-view host needs)."""

    train_loader: Callable[..., Any]
    test_loader: Any
    train_eval_loader: Callable[[], Any]  # the training images in order, unaugmented (inspection)
    num_classes: int
    in_channels: int
    train_size: int
    test_size: int
    resident: bool  # held on the device (ResidentLoader); else streamed from files
    subsets: Dict[str, Any] = field(default_factory=dict)  # how train/test subsets were drawn
    classes: Optional[List[str]] = None  # the class names by index (Split.classes, an ImageFolder's folders), or None


def per_process_batch(cfg: Config, world_size: int) -> int:
    """The training batch of one process: ``data.batch_size``, or ``data.global_batch_size`` shared out
    (so the global batch, and with it the recipe, stays the same on any number of processes)."""
    g = cfg.data.global_batch_size
    if g is None:
        return cfg.data.batch_size
    if g % world_size:
        raise ConfigError(f"data.global_batch_size={g} does not divide into {world_size} processes; use a multiple "
                          f"of {world_size} or another number of processes")
    return g // world_size


def _check_dataset(cfg: Config) -> None:
    d = cfg.data
    if d.name != "imagefolder" and d.name not in DATASETS:
        close = difflib.get_close_matches(d.name, list(DATASETS) + ["imagefolder"], n=1)
        raise ConfigError(f"data.name={d.name!r} is not a dataset btkd reads; expected one of "
                          f"{list(DATASETS) + ['imagefolder']} (imagefolder: a tree train/<class>/, val/<class>/ "
                          f"under data.root)." + (f" Did you mean {close[0]!r}?" if close else ""))
    if d.name in DATASETS and d.options:
        allowed = keyword_options(DATASETS[d.name], exclude=("root", "split"))  # data.root; the split is btkd's
        unknown = [] if allowed is None else [k for k in d.options if k not in allowed]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), allowed, n=1)
            raise ConfigError(f"data.options: dataset {d.name!r} has no option {unknown[0]!r}; its options are "
                              f"{', '.join(allowed) or 'none'}." + (f" Did you mean {close[0]!r}?" if close else ""))


def check_names(cfg: Config) -> None:
    """What a config names that can be checked before any data or weights are read: the dataset,
    the models, and the method with its options (what `btkd configs` checks)."""
    _check_dataset(cfg)
    for key, name in (("model.student", cfg.model.student), ("model.teacher", cfg.model.teacher)):
        if name is not None:
            _check_model_name(key, name)
    make_loss(cfg)


def _check_model_name(key: str, name: str) -> None:
    """A ConfigError naming ``key`` unless ``name`` is in `MODELS`."""
    if name not in MODELS:
        close = difflib.get_close_matches(name, list(MODELS), n=1)
        raise ConfigError(f"{key}={name!r} is not a model btkd builds." + (f" Did you mean {close[0]!r}?" if close
                          else "") + " `btkd models` lists them.")


def build_data(cfg: Config, rt: Runtime, train: bool = True) -> Data:
    """The data of ``cfg``; ``train=False`` loads the test split only (evaluation)."""
    d = cfg.data
    batch = per_process_batch(cfg, rt.ctx.world_size)
    _check_dataset(cfg)
    if d.name == "imagefolder":
        return _imagefolder_data(cfg, rt, train)
    try:
        splits = {part: load_split(d.name, d.root, part, **d.options) for part in (("train", "test") if train else ("test",))}
    except TypeError as err:
        raise ConfigError(f"data.options: {err}") from None
    subsets = {}
    for part, n in (("train", d.train_subset), ("test", d.test_subset)):
        if n and part in splits:
            try:
                splits[part], subsets[f"{part}_subset"] = take_subset(splits[part], n, d.subset_seed)
            except ValueError as err:
                raise ConfigError(f"data.{part}_subset={n}: {err}") from None
    test = splits["test"]
    if train:
        _check_splits_agree(d.name, splits["train"], test)
        _check_class_coverage(d.name, splits["train"].labels, test.labels, test.num_classes, d.train_subset,
                              test.classes)
    # Normalise with the training split's statistics (the loaders give the same for both splits).
    stats = splits.get("train", test)
    common = dict(mean=stats.mean, std=stats.std, device=rt.device, channels_last=rt.channels_last,
                  rank=rt.ctx.rank, world_size=rt.ctx.world_size)

    def train_loader(seed: int, views: int = 1) -> ResidentLoader:
        if "train" not in splits:
            raise RuntimeError("this Data was built with train=False")
        tr = splits["train"]
        return ResidentLoader(tr.images, tr.labels, batch, train=True, crop_padding=d.crop_padding,
                              flip=d.flip, seed=seed, strong_view=views > 1, **common)

    def train_eval_loader() -> ResidentLoader:
        tr = splits["train"]
        return ResidentLoader(tr.images, tr.labels, d.eval_batch_size, train=False, **common)

    _check_test_share(len(test), rt.ctx.world_size)
    test_loader = ResidentLoader(test.images, test.labels, d.eval_batch_size, train=False, **common)
    return Data(train_loader=train_loader, test_loader=test_loader, train_eval_loader=train_eval_loader,
                num_classes=stats.num_classes,
                in_channels=test.images.shape[1], train_size=len(splits["train"]) if train else 0,
                test_size=len(test), resident=True, subsets=subsets,
                classes=list(stats.classes) if stats.classes is not None else None)


def _check_splits_agree(name: str, train: Split, test: Split) -> None:
    """A loader's two splits must be one task: the same classes and image shape. Test labels beyond the
    training classes are out of the model's range (a crash in the loss, on the GPU an opaque assert)."""
    if train.num_classes != test.num_classes or train.image_shape != test.image_shape:
        raise ConfigError(f"dataset {name!r}: its train and test splits disagree: {train.num_classes} vs "
                          f"{test.num_classes} classes, images {train.image_shape} vs {test.image_shape} (C, H, W); "
                          "the loader must give both splits the same num_classes and image shape")
    if train.classes != test.classes:  # a report would name a class by the other split's name
        raise ConfigError(f"dataset {name!r}: its train and test splits name their classes differently; the loader "
                          "must give both splits the same classes (or None)")


def _check_class_coverage(name: str, train_labels: Tensor, test_labels: Tensor, num_classes: int,
                          train_subset: Optional[int], class_names: Optional[List[str]] = None) -> None:
    """Refuse training data of fewer than 2 classes (the model predicts the one it saw: a meaningless
    accuracy) and test images of none but unseen classes (0 % by construction); warn when some test
    images are of classes with no training image, which caps the accuracy."""
    train_labels, test_labels = train_labels.cpu(), test_labels.cpu()
    seen = torch.bincount(train_labels, minlength=num_classes) > 0
    if train_subset:
        where = f"data.train_subset={train_subset} leaves training images of"
        fix = f"raise data.train_subset to at least the number of classes ({num_classes}), or drop it"
    elif name == "synthetic":  # its labels are drawn at random: a small split misses some classes
        where = f"the training split of {name!r} holds images of"
        fix = (f"raise data.options.size well above data.options.num_classes ({num_classes}) or lower the latter: "
               "the synthetic labels are drawn at random, so a small split misses classes")
    else:
        where = f"the training split of {name!r} holds images of"
        fix = f"check the loader of {name!r} (or its files): both splits must hold images of the same classes"
    k = int(seen.sum())
    if k < 2:
        raise ConfigError(f"{where} {k} class{'' if k == 1 else 'es'} only (of {num_classes}): a model trained on "
                          f"it predicts that class and its accuracy means nothing; {fix}")
    unseen = ~seen[test_labels]
    n = int(unseen.sum())
    if not n:
        return
    classes = sorted(set(test_labels[unseen].tolist()))
    if class_names is not None:
        classes = [class_names[c] for c in classes]
    share = f"all {n} test images are" if n == len(test_labels) else f"{n} of the {len(test_labels)} test images are"
    text = (f"{name}: {share} of classes with no training image ({len(classes)} class"
            f"{'' if len(classes) == 1 else 'es'}: {', '.join(map(str, classes[:5]))}"
            f"{', ...' if len(classes) > 5 else ''}); a model cannot predict a class it never saw, so at most "
            f"{100 * (1 - n / len(test_labels)):.1f} % accuracy is reachable; {fix}")
    if n == len(test_labels):
        raise ConfigError(text)
    warnings.warn(text, stacklevel=3)


def _check_test_share(n: int, world_size: int) -> None:
    """Every process scores a share of the test set and joins the sum: none may have an empty share."""
    if n < world_size:
        raise ConfigError(f"the test set holds {n} images, fewer than the {world_size} processes that each score a "
                          "share of it; raise data.test_subset (or drop it), or run fewer processes")


def _imagefolder_data(cfg: Config, rt: Runtime, train: bool = True) -> Data:
    """ImageNet-style trees stream through a standard DataLoader with worker processes."""
    d = cfg.data
    if not d.root:
        raise ConfigError("data.name=imagefolder needs data.root, a folder holding train/<class>/ and val/<class>/ "
                          "(or test/<class>/)")
    # One class index for both splits (a class missing from one split is refused by the data layer).
    # Each process reads its share of one epoch order (EpochOrder), as with data on the device.
    opts = dict(image_size=d.image_size, workers=d.workers, classes=imagefolder_classes(d.root),
                rank=rt.ctx.rank, world_size=rt.ctx.world_size, subset_seed=d.subset_seed, **d.options)
    batch = per_process_batch(cfg, rt.ctx.world_size)
    # data.flip=false turns the flip off here too, as data.options.flip=false does (either one)
    train_opts = dict(opts, subset=d.train_subset, flip=d.flip and d.options.get("flip", True))
    try:
        first = imagefolder_loader(d.root, "train", batch, seed=cfg.seed, **train_opts) if train else None
        test = imagefolder_loader(d.root, imagefolder_test_split(d.root), d.eval_batch_size, seed=cfg.seed,
                                  subset=d.test_subset, **opts)
    except TypeError as err:
        raise ConfigError(f"data.options: {err}") from None
    _check_test_share(len(test.dataset), rt.ctx.world_size)
    if first is not None:  # every class has training images, unless data.train_subset left some out
        _check_class_coverage(d.root, torch.from_numpy(first.dataset._targets),
                              torch.from_numpy(test.dataset._targets), len(opts["classes"]), d.train_subset,
                              list(opts["classes"]))

    def train_loader(seed: int, views: int = 1) -> StreamLoader:
        if first is None:
            raise RuntimeError("this Data was built with train=False")
        if views > 1:  # the workers make the strong view beside the weak one
            return StreamLoader(imagefolder_loader(d.root, "train", batch, seed=seed, strong_view=True, **train_opts),
                                rt, seed)
        loader = first if seed == cfg.seed else imagefolder_loader(d.root, "train", batch, seed=seed, **train_opts)
        return StreamLoader(loader, rt, seed)

    def train_eval_loader() -> StreamLoader:
        loader = imagefolder_loader(d.root, "train", d.eval_batch_size, train=False, seed=cfg.seed, **train_opts)
        return StreamLoader(loader, rt, cfg.seed)

    subsets = {f"{part}_subset": {"n": n, "seed": d.subset_seed, "draw": "random, stratified by class"}
               for part, n in (("train", d.train_subset), ("test", d.test_subset)) if n}
    return Data(train_loader=train_loader, test_loader=StreamLoader(test, rt, cfg.seed),
                train_eval_loader=train_eval_loader, num_classes=len(opts["classes"]), in_channels=3,
                train_size=len(first.dataset) if first is not None else 0, test_size=len(test.dataset),
                resident=False, subsets=subsets, classes=list(opts["classes"]))


class StreamLoader:
    """A DataLoader moved to the device, with the ResidentLoader's ``set_epoch`` contract: the
    shuffle order and, for an ImageFolder tree, every crop and flip are pure functions of (seed,
    epoch) (`EpochOrder` seeds each image's draws), so a resumed run reads the batches an
    uninterrupted one would, on any number of workers and processes."""

    def __init__(self, loader, rt: Runtime, seed: int):
        self.loader, self.rt, self.seed = loader, rt, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.loader.sampler.set_epoch(epoch)  # the order (EpochOrder)

    def __iter__(self):
        # the workers' own seeds, for what draws from their global RNGs beyond the per-image seeds
        self.loader.generator.manual_seed(epoch_seed(self.seed, self.epoch))
        for x, y in self.loader:
            if isinstance(x, Tensor):
                x = x.to(self.rt.device, non_blocking=True, memory_format=self.rt.memory_format)
            else:  # (weak, strong) views
                x = tuple(v.to(self.rt.device, non_blocking=True, memory_format=self.rt.memory_format) for v in x)
            yield x, y.to(self.rt.device, non_blocking=True)


def build_for_data(name: str, options: Dict[str, Any], num_classes: int, in_channels: int,
                   role: str = "model.student") -> nn.Module:
    """A zoo model sized for the data: its class count, and its channel count when not RGB. ``role``
    is the config key that names the model (``model.student`` or ``model.teacher``), for errors."""
    _check_model_name(role, name)  # a config error naming the key, as the trainer's other errors are
    opts = dict(options)
    clear = f"`{role}_options=null` clears options inherited from another model's config"
    params = _model_options(name)
    unknown = sorted(set(opts) - params) if params is not None else []
    if unknown:
        raise ConfigError(f"{role}_options: model {name!r} has no option {', '.join(unknown)}; its options are "
                          f"{', '.join(sorted(params)) or 'none'} ({clear})")
    if opts.get("in_channels", in_channels) != in_channels:  # else a crash in the first convolution
        raise ConfigError(f"{role}_options.in_channels={opts['in_channels']!r}, but the data's images have "
                          f"{in_channels} channel{'s' if in_channels != 1 else ''}: drop the option (it is set from "
                          f"the data) or give {in_channels}")
    injected = in_channels != 3 and "in_channels" not in opts
    if injected:
        opts["in_channels"] = in_channels
    try:
        return build_model(name, num_classes=num_classes, **opts)
    except TypeError as err:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(err))
        if injected and bad and bad.group(1) == "in_channels":
            takes = sorted(n for n in MODELS if "in_channels" in (_model_options(n) or ()))
            raise ConfigError(
                f"{role}={name!r} takes 3-channel (RGB) images, and this data has {in_channels} channel"
                f"{'s' if in_channels != 1 else ''}: choose a model that takes its channel count "
                f"({', '.join(takes)})") from None
        if bad:
            raise ConfigError(f"{role}_options: model {name!r} does not take the option {bad.group(1)} "
                              f"({clear})") from None
        raise ConfigError(f"{role}={name!r} with {role}_options={dict(options)}: {err}") from None


def _model_options(name: str) -> Optional[set]:
    """The keyword options a zoo model's builder takes (num_classes aside); None when it takes any
    (``**kwargs``) or is not a zoo name (build_model names the valid ones)."""
    builder = MODELS.get(name)
    if builder is None:
        return None
    options = keyword_options(builder, exclude=("num_classes",))
    return None if options is None else set(options)


def build_student(cfg: Config, data: Data, rt: Runtime) -> nn.Module:
    """The student, initialised from ``cfg.seed`` alone: students of one architecture and seed start
    from the same weights whatever else is built beside them (the pairing of a bench)."""
    torch.manual_seed(cfg.seed)
    model = build_for_data(cfg.model.student, cfg.model.student_options, data.num_classes, data.in_channels)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        # lazy layers (nn.LazyLinear, ...) take their shapes from a first forward, in eval mode so that
        # no BatchNorm statistics move; still seeded, so students of one seed stay paired
        with torch.no_grad():
            model.eval()(_first_images(data.test_loader, 2).cpu())
        model.train()
    return model.to(rt.device, memory_format=rt.memory_format)


def _run_setting(config_file, section: str, key: str) -> Optional[str]:
    """A setting of the btkd run whose config.yaml this is (``model``/``student``: the model it trained,
    ``data``/``name``: its data), or None when the folder is no btkd run (a run folder holds meta.json
    beside its config)."""
    import yaml

    if not config_file.with_name("meta.json").is_file():
        return None
    try:
        value = yaml.safe_load(config_file.read_text())[section][key]
    except (OSError, TypeError, KeyError, ValueError, yaml.YAMLError):
        return None
    return value if isinstance(value, str) else None


def build_teacher(cfg: Config, data: Data, rt: Runtime) -> Optional[nn.Module]:
    """The frozen teacher in eval mode (BN folded into its convolutions where asked), or None."""
    m = cfg.model
    if not m.teacher:
        return None
    if not m.teacher_checkpoint:
        raise ConfigError(
            f"model.teacher={m.teacher!r} needs model.teacher_checkpoint: train one with `btkd train` (its run "
            "folder holds last.safetensors) or pass a published mdistiller/RepDistiller .pth file")
    path = resolve_checkpoint(m.teacher_checkpoint)  # a path, or weights:NAME from a manifest
    if not path.is_file():
        from ..config import builtin_configs

        recipes = sorted((c for c in builtin_configs() if c.endswith(f"/teachers/{m.teacher}")),
                         key=lambda c: (not c.startswith(f"{cfg.data.name}/"), not c.startswith("cifar100/")))
        train = (f"e.g. `btkd train {recipes[0]}`, whose run folder then holds last.safetensors" if recipes
                 else "with `btkd train`: its run folder then holds last.safetensors")
        from ..models.imagenet_resnet import TORCHVISION_WEIGHTS

        published = TORCHVISION_WEIGHTS.get(m.teacher) if cfg.data.name == "imagefolder" else None
        if published:  # an ImageNet teacher is downloaded, not trained: say from where
            raise FileNotFoundError(
                f"model.teacher_checkpoint: no file at {m.teacher_checkpoint}. For ImageNet's 1,000 classes, download "
                f"torchvision's published {m.teacher} weights, https://download.pytorch.org/models/{published}, and set "
                f"model.teacher_checkpoint=/path/to/{published}; for a tree of other classes, train the teacher first "
                f"({train})")
        raise FileNotFoundError(
            f"model.teacher_checkpoint: no file at {m.teacher_checkpoint}. Train the teacher first ({train}), or "
            "point model.teacher_checkpoint=... at its weights (a .safetensors, a .pth, or weights:NAME)")
    teacher = build_for_data(m.teacher, m.teacher_options, data.num_classes, data.in_channels, role="model.teacher")
    try:
        load_checkpoint(teacher, path)
    except CheckpointMismatchError as err:
        options = f" with model.teacher_options={m.teacher_options}" if m.teacher_options else ""
        trained_as = _run_setting(path.parent / "config.yaml", "model", "student")
        if trained_as and trained_as != m.teacher:  # e.g. model.teacher=... overridden, the checkpoint kept
            fix = (f"The checkpoint was trained as {trained_as!r} (its run's config.yaml): set "
                   f"model.teacher={trained_as}, or point model.teacher_checkpoint=... at a {m.teacher} teacher's "
                   "weights (a changed model.teacher keeps the config's checkpoint).")
        else:
            fix = ("Set model.teacher (and model.teacher_options, e.g. a width) to the model the checkpoint was "
                   "trained as (its config.yaml's model.student, for a btkd run), or point "
                   f"model.teacher_checkpoint=... at a {m.teacher} teacher's weights.")
        raise ConfigError(
            f"model.teacher={m.teacher!r}{options} does not fit model.teacher_checkpoint={m.teacher_checkpoint}: "
            f"{err} {fix}") from None
    trained_on = _run_setting(path.parent / "config.yaml", "data", "name")
    if trained_on and trained_on != cfg.data.name:
        raise ConfigError(f"model.teacher_checkpoint={m.teacher_checkpoint} was trained on {trained_on} (its run's "
                          f"config.yaml), but this run's data is {cfg.data.name}: its logits would mean other classes. "
                          f"Train a teacher on {cfg.data.name}, or set data.name={trained_on}")
    bad = [name for name, t in teacher.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise ValueError(f"the teacher checkpoint {m.teacher_checkpoint} holds NaN or infinite values (in "
                         f"{', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}): it comes from a diverged run or "
                         "is damaged; train or copy the teacher again")
    teacher = teacher.to(rt.device, memory_format=rt.memory_format).eval().requires_grad_(False)
    if folds_teacher_bn(cfg, rt):
        teacher = fold_batchnorm(teacher, _first_images(data.test_loader, 8))
    return teacher


def _first_images(loader, n: int) -> torch.Tensor:
    """The first ``n`` images of ``loader``'s first batch, leaving the loader where it was: a
    resident loader broken off after one batch would start its next pass at the second."""
    state = loader.state_dict() if hasattr(loader, "state_dict") else None
    x, _ = next(iter(loader))
    if state is not None:
        loader.load_state_dict(state)
    x = x if isinstance(x, torch.Tensor) else x[0]  # a two-view loader: the weak view
    return x[:n].float()


def folds_teacher_bn(cfg: Config, rt: Runtime) -> bool:
    """Whether the teacher's BatchNorm is folded into its convolutions (runtime.fold_teacher_bn)."""
    fold = cfg.runtime.fold_teacher_bn
    return fold == "on" or (fold == "auto" and rt.on_cuda)


def make_loss(cfg: Config) -> Optional[nn.Module]:
    """The loss module a config asks for: None for plain cross-entropy (``distill.method: ce``),
    else ``Distill`` or, with ``distill.btkd.enabled``, ``BTKD`` around the host ``distill.method``
    with ``distill.options``. A null ``ce_weight`` / ``kd_weight`` takes the host's own. Built with
    ``validate=False``, as the trainer calls it. A bad host, option or BTKD setting is a ConfigError."""
    d = cfg.distill
    if d.method == "ce":
        if d.btkd.enabled:
            raise ConfigError("distill.btkd.enabled=true needs a distillation method (distill.method=kd, dkd, ...), "
                              "not 'ce'")
        return None
    try:
        host = make_host(d.method, **d.options)
    except ValueError as err:
        raise ConfigError(f"distill.method / distill.options: {err}") from None
    ce = host.default_ce_weight if d.ce_weight is None else d.ce_weight
    kd = host.default_kd_weight if d.kd_weight is None else d.kd_weight
    if not d.btkd.enabled:
        return Distill(host, ce_weight=ce, kd_weight=kd, validate=False)
    b = d.btkd
    try:
        # Inside a host framework, keep that framework's own weights, temperature and warm-up.
        return BTKD(host, rectify=b.rectify, reduction=b.reduction, schedule=b.schedule, ce_weight=ce,
                    kd_weight=kd, split=b.split, schedule_options=b.schedule_options, validate=False)
    except ValueError as err:
        raise ConfigError(f"distill.btkd: {err}") from None


def per_iteration(loss: Optional[nn.Module]) -> bool:
    """Whether the loss weights change within an epoch (then they are updated every step)."""
    if not isinstance(loss, BTKD):
        return False
    schedule = getattr(loss.balancer, "schedule", None)
    return schedule is None or getattr(schedule, "per_iteration", True)


def make_optimizer(cfg: Config, model: nn.Module, rt: Runtime, tensor_lr: bool,
                   loss: Optional[nn.Module] = None) -> torch.optim.Optimizer:
    """SGD as the config says; fused on CUDA. ``tensor_lr`` holds the learning rate in a device
    tensor, so that a captured step sees each epoch's value. A loss with parameters (CTKD's
    temperature) trains with the student's SGD, as its authors do."""
    o = cfg.optim
    lr = torch.tensor(o.lr, device=rt.device) if tensor_lr else o.lr
    fused = {"fused": True} if rt.on_cuda else {}
    params = list(model.parameters()) + (list(loss.parameters()) if loss is not None else [])
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov, **fused)


def lr_factor(cfg: Config, epoch: int) -> float:
    """The learning-rate multiplier of an epoch (0-based): a pure function of the epoch, so a
    resumed run needs no scheduler state.

    ``(epoch + 1) / warmup_epochs`` during ``optim.warmup_epochs``; then ``0.5 (1 + cos(pi epoch /
    epochs))`` for ``optim.lr_schedule: cosine``, else ``gamma ** (milestones passed)``
    (``multistep``: x ``optim.gamma`` at each of ``optim.milestones``). The rate is
    ``optim.lr * lr_factor(cfg, epoch)``."""
    o = cfg.optim
    if o.warmup_epochs and epoch < o.warmup_epochs:
        return (epoch + 1) / o.warmup_epochs
    if o.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / o.epochs))
    return o.gamma ** sum(epoch >= m for m in o.milestones)
