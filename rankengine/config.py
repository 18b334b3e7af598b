"""engine.toml → validated :class:`EngineConfig`.

Two stages: the file is parsed with tomllib and validated against the models below (shape and
types); then, once plugins are loaded, :func:`complete_config` names each family's default and
:func:`rankengine.plan.make_plan` resolves every ``kind`` against the component tables, validating
its parameters against the component's own ``Params`` model as it builds it.
Every failure names the file, the key path, what was expected and what was found.
"""

from __future__ import annotations

import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rankengine.components import DEFAULT_KIND
from rankengine.errors import ConfigError, suggest

if typing.TYPE_CHECKING:
    from rankengine.components import ComponentTable, Params
    from rankengine.pluginmanager import Engine


class Section(BaseModel):
    # inf / nan are never a sensible setting: `lr = inf` must fail here, not epochs later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


#: Upper bounds that turn a typo (an extra zero, a pasted id) into a config error instead of an
#: allocation that takes the machine down (`dim = 100000000` was OOM-killed, `threads = 100000`
#: hung).
MAX_WIDTH = 65_536
MAX_EMBEDDING_DIM = 4_096
MAX_THREADS = 256
MAX_SEED = 2**32 - 1  # numpy's seed range

#: A layer width: ``hidden = [128, 64]`` in any component's parameters.
Width = Annotated[int, Field(ge=1, le=MAX_WIDTH)]


class ComponentRef(BaseModel):
    """``{ kind = "mmoe", experts = 4 }`` or just ``"mmoe"``; extra keys are the parameters."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    kind: str

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"kind": value} if isinstance(value, str) else value

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EngineSection(Section):
    plugins: list[str] = ["builtin"]
    disable: list[str] = []
    seed: int = Field(default=0, ge=0, le=MAX_SEED)
    threads: int | None = Field(default=None, ge=1, le=MAX_THREADS)


class CsvOptions(Section):
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    header: bool = True
    column_names: list[str] | None = None
    null_values: list[str] = [""]
    strip: bool = False


class DataSection(Section):
    train: str
    valid: str | None = None
    test: str | None = None
    valid_fraction: float = Field(default=0.1, gt=0.0, lt=1.0)
    valid_from: Literal["train", "test"] = "train"
    test_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    #: the data source (a registered name) reading the splits; none: told from each path
    format: str | None = None
    csv: CsvOptions = CsvOptions()
    group: str | None = None
    inconsistent: Literal["error", "fix", "drop"] = "error"
    cache_dir: str | None = None
    #: stream the training split from Parquet row groups instead of loading it (flat memory)
    streaming: bool = False
    #: rows read, encoded and shuffled together when streaming
    buffer_rows: int = Field(default=262_144, ge=1)
    #: rows (evenly spaced row groups) the feature pipeline is fitted on when streaming or
    #: distributed
    fit_rows: int = Field(default=1_000_000, ge=1)


class FeatureSpec(BaseModel):
    """One ``[[features]]`` entry; keys other than these are the encoder's parameters."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)
    kind: str
    column: str | None = Field(default=None, min_length=1)
    side: Literal["context", "item"] = "item"
    dim: int = Field(default=16, ge=1, le=MAX_EMBEDDING_DIM)
    groups: list[str] = ["default"]

    @property
    def source(self) -> str:
        return self.column or self.name

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LabelRule(Section):
    """A label that is 1 where ``column`` holds one of ``equals`` (string or numeric values)."""

    column: str
    #: at least one value: an empty list would make the label 0 on every row
    equals: list[str | int | float] = Field(min_length=1)


class OracleSpec(Section):
    """Columns with the true probabilities (simulated data) for oracle metrics."""

    p: str | None = None
    p_cond: str | None = None
    label_cond: str | None = None


class TaskSpec(Section):
    label: (Annotated[str, Field(min_length=1)]
            | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
            | LabelRule)
    type: Literal["binary", "regression"] = "binary"
    after: str | None = None
    via: str | None = None
    #: the task's pointwise loss: a name or ``{ kind = "...", param = ... }``, or a list of
    #: them (summed, weighted by ``loss_weights``); left out, the registered default loss for
    #: the task's type
    loss: ComponentRef | Annotated[list[ComponentRef], Field(min_length=1)] | None = None
    #: one weight per entry of a ``loss`` list (default: 1 each)
    loss_weights: list[Annotated[float, Field(ge=0.0)]] | None = None
    weight: float = Field(default=1.0, ge=0.0)
    tower_groups: list[str] = []
    oracle: OracleSpec | None = None

    @model_validator(mode="after")
    def _one_weight_per_loss(self) -> TaskSpec:
        if self.loss_weights is not None:
            count = len(self.loss) if isinstance(self.loss, list) else 1
            if len(self.loss_weights) != count:
                raise ValueError(f"loss_weights: expected one weight per loss ({count}), "
                                 f"found {len(self.loss_weights)}")
        return self

    @property
    def losses(self) -> list[ComponentRef]:
        """The task's losses as a list (empty: the default loss)."""
        if self.loss is None:
            return []
        return list(self.loss) if isinstance(self.loss, list) else [self.loss]

    @property
    def label_columns(self) -> list[str]:
        if isinstance(self.label, LabelRule):
            return [self.label.column]
        return [self.label] if isinstance(self.label, str) else list(self.label)



class TaskGraphSection(Section):
    template: str | None = None


class BiasTowerSection(Section):
    """``[model.bias_tower]``: a shallow tower on bias features (position, device ...) whose
    logit is added to some tasks' logits during training only (YouTube, RecSys 2019)."""

    #: feature groups feeding the tower; features only in these groups leave the backbone
    #: and are optional at serving time
    groups: list[str] = ["bias"]
    tasks: list[str] = Field(min_length=1)
    hidden: list[Width] = [16]


class InteractionSpec(BaseModel):
    """One ``[[model.interactions]]`` entry: an interaction of ``kind`` that reads the aligned
    ``id_list`` features ``sequence`` against the candidate's ``ids`` features ``target``; its
    output is a feature named ``name`` in ``groups``. Other keys are the interaction's
    parameters."""

    model_config = ConfigDict(extra="allow", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1)
    kind: str
    #: the behaviour sequence: id_list features of one length, aligned element by element
    #: (item, category, behaviour type, time gap ...); read by the interaction, not pooled
    sequence: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    #: the candidate's ids features the sequence is read against
    target: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    groups: list[str] = ["default"]

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class ModelSection(Section):
    backbone: ComponentRef = ComponentRef(kind=DEFAULT_KIND)
    tower: ComponentRef = ComponentRef(kind=DEFAULT_KIND)
    cascade: ComponentRef = ComponentRef(kind=DEFAULT_KIND)
    #: none: every feature; an empty list would leave the backbone without input
    backbone_groups: list[str] | None = Field(default=None, min_length=1)
    bias_tower: BiasTowerSection | None = None
    interactions: list[InteractionSpec] = []

    def bias_only_features(self, features: Sequence[FeatureSpec]) -> list[str]:
        """Features that feed only the bias tower: not in the backbone, not needed to serve."""
        if self.bias_tower is None:
            return []
        bias = set(self.bias_tower.groups)
        return [f.name for f in features if f.groups and set(f.groups) <= bias]


class EarlyStopping(Section):
    #: "loss" (total validation loss), "<metric>:<task>", or "combined": the ``weights``-
    #: weighted sum of several "<metric>:<task>" terms, each counted in its own direction
    metric: str = "loss"
    weights: dict[str, float] = {}
    patience: int = Field(default=2, ge=1)
    min_delta: float = Field(default=0.0, ge=0.0)


class TrainSection(Section):
    #: where the model trains and scores: "auto" (CUDA when available), "cpu", "cuda",
    #: "cuda:N"; under torchrun a CUDA run takes one device per local rank
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    #: the training forward's precision: "bf16" / "fp16" run the embeddings and backbone
    #: under autocast (fp16 with a gradient scaler); towers, cascade, losses, metrics and
    #: everything scored, exported and served stay fp32
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    #: torch.compile the training forward (falls back to eager, saying why, where the
    #: platform cannot compile)
    compile: bool = False
    epochs: int = Field(default=3, ge=1)
    batch_size: int = Field(default=1024, ge=1)
    eval_batch_size: int = Field(default=16384, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0.0)
    #: the learning rate over the run: constant, or decayed to 0 at the last step (cosine,
    #: linear), after ``warmup_steps`` steps rising linearly from lr / warmup_steps to lr
    lr_schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    #: keep an exponential moving average of the weights (``avg = decay·avg + (1 - decay)·w``
    #: after each optimiser step); validation, early stopping and the saved model use it
    ema_decay: float | None = Field(default=None, gt=0.0, lt=1.0)
    early_stopping: EarlyStopping | None = EarlyStopping()
    progress: bool = True
    #: directory for checkpoints (relative to this file); none: no checkpoints
    checkpoint_dir: str | None = None
    #: also checkpoint every this many steps (0: at the end of each epoch only)
    checkpoint_every: int = Field(default=0, ge=0)
    keep_checkpoints: int = Field(default=2, ge=1)


class RankingSection(BaseModel):
    """``[loss.ranking]``: a learning-to-rank loss within request groups; other keys are the
    ranking loss's own parameters (e.g. ``margin``)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    kind: str
    #: a binary task's logit, or "fused": the log of the configured fusion's score
    target: str = "fused"
    weight: float = Field(default=1.0, ge=0.0)
    max_pairs_per_group: int = Field(default=64, ge=1)
    #: graded relevance per binary task (a row's grade is the highest of its positive tasks);
    #: default: 1, 2, 3 ... in graph order (impression 0 < click < ... < pay)
    relevance: dict[str, float] = {}

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class LossSection(Section):
    weighting: ComponentRef = ComponentRef(kind=DEFAULT_KIND)
    sample_weighting: ComponentRef = ComponentRef(kind=DEFAULT_KIND)
    ranking: RankingSection | None = None


class FusionSection(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    kind: str = DEFAULT_KIND

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class CalibrationSection(BaseModel):
    """``[calibration]``: the calibrator of binary nodes (``kind`` and its parameters as the
    other keys) and, optionally, of regression nodes (``regression``); fitted after training
    on the validation split, saved and applied with the model."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    kind: str = DEFAULT_KIND
    regression: ComponentRef | None = None
    #: undo the odds a sample weighting adds to binary tasks (up-weighted positives), in the
    #: training loss, so the model's own output stays at the real base rate
    odds_correction: bool = True

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class EvaluateSection(Section):
    metrics: list[str] | None = None


class RegistrySection(Section):
    url: str | None = None
    artifacts: str = "artifacts"
    model: str = "default"


class EngineConfig(Section):
    engine: EngineSection = EngineSection()
    data: DataSection
    features: list[FeatureSpec] = Field(min_length=1)
    task_graph: TaskGraphSection = TaskGraphSection()
    tasks: dict[str, TaskSpec] = {}
    model: ModelSection = ModelSection()
    train: TrainSection = TrainSection()
    loss: LossSection = LossSection()
    fusion: FusionSection = FusionSection()
    calibration: CalibrationSection = CalibrationSection()
    evaluate: EvaluateSection = EvaluateSection()
    registry: RegistrySection = RegistrySection()
    #: ``[plugins.NAME]``: tables owned by plugins (``rankengine_register_config_tables``),
    #: validated by the plugin's model once plugins are loaded
    plugins: dict[str, dict[str, Any]] = {}

    #: Where the config came from (for messages) and the base for relative data paths.
    source: str = Field(default="<config>", exclude=True)
    base_dir: str = Field(default=".", exclude=True)
    _plugin_settings: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("features")
    @classmethod
    def _unique_features(cls, features: list[FeatureSpec]) -> list[FeatureSpec]:
        seen: set[str] = set()
        for feature in features:
            if feature.name in seen:
                raise ValueError(f"feature name '{feature.name}' appears twice")
            seen.add(feature.name)
        return features

    def plugin_settings(self, name: str) -> Any:
        """The validated ``[plugins.NAME]`` table (the registered model's defaults when the
        file has none); only after :func:`complete_config`."""
        settings = self._plugin_settings.get(name)
        if settings is None:
            raise KeyError(f"no plugin config table '{name}' is registered (or the config was "
                           f"not validated against the plugins)")
        return settings

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p

    def resolved_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-able data (stored with every model)."""
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------------------------
# Loading and error formatting
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> EngineConfig:
    """Read and validate an engine.toml file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"configuration file not found: {path}", source=str(path))
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start:exc.start + 1]
        raise ConfigError(f"not UTF-8 text (byte {bad!r} at offset {exc.start}); TOML files "
                          f"are UTF-8", source=str(path)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
    return parse_config(raw, source=str(path), base_dir=path.parent)


def parse_config(
    raw: Mapping[str, Any], *, source: str = "<config>", base_dir: str | Path = "."
) -> EngineConfig:
    """Validate an already-parsed mapping (engine.toml contents or a stored resolved config)."""
    data = {k: v for k, v in raw.items() if k not in ("source", "base_dir")}
    try:
        config = EngineConfig.model_validate(data)
    except ValidationError as exc:
        raise _config_error(exc, source) from None
    config.source = source
    config.base_dir = str(base_dir)
    return config


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    messages = _one_per_key([(err, *_format_error(err)) for err in exc.errors()])
    key, first = messages[0]
    # One line: shells, CI logs and the property tests read the first line only.
    more = "".join(f"; also [{k}]: {m}" for k, m in messages[1:4])
    if len(messages) > 4:
        more += f"; and {len(messages) - 4} more"
    return ConfigError(first + more, source=source, key=key)


def _one_per_key(found: list[tuple[Any, str, str]]) -> list[tuple[str, str]]:
    """A union (``label = str | list | {column, equals}``) reports one error per member; keep
    the member the value looked like (a constraint it broke) over the type mismatches."""
    best: dict[str, tuple[bool, str]] = {}
    # `equals = []` breaks a constraint inside the LabelRule member; the str and list members'
    # type mismatches on the enclosing key only say what the value is not
    constrained = [key for err, key, _ in found if not str(err["type"]).endswith("_type")]
    found = [(err, key, message) for err, key, message in found
             if not (str(err["type"]).endswith("_type") and any(
                 c.startswith(key + ".") or c.startswith(key + "[") for c in constrained))]
    for err, key, message in found:
        mismatch = str(err["type"]).endswith("_type")
        if key not in best or (best[key][0] and not mismatch):
            best[key] = (mismatch, message)
    return [(key, message) for key, (_, message) in best.items()]


def _format_error(err: Any) -> tuple[str, str]:
    loc = [part for part in err["loc"] if not _is_union_tag(part)]
    key = _key_path(loc)
    kind = err["type"]
    found = err.get("input")
    if kind == "extra_forbidden":
        parent = _model_at(EngineConfig, loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        name = str(loc[-1])
        hint = f"; expected one of: {', '.join(allowed)}{suggest(name, allowed)}" if allowed else ""
        return _key_path(loc[:-1]) or name, f"unknown key '{name}'{hint}"
    if kind == "missing":
        return key, "required key is missing"
    if kind == "value_error":  # a validator's own sentence already says what was found
        return key, str(err["msg"]).removeprefix("Value error, ")
    return key, f"{err['msg'].lower()}; found {_describe(found)}"


def flat_keys(data: Any, *, lists: bool = False, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (``{"fusion.weights.click": 1.0}``); with ``lists``,
    non-empty lists too, as config errors name keys (``{"features[0].name": "user_id"}``)."""
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flat_keys(value, lists=lists,
                                 prefix=f"{prefix}.{key}" if prefix else str(key)))
        return out
    if lists and isinstance(data, list) and data:
        out = {}
        for i, value in enumerate(data):
            out.update(flat_keys(value, lists=lists, prefix=f"{prefix}[{i}]"))
        return out
    return {prefix: data}


def _is_union_tag(part: Any) -> bool:
    # pydantic adds the union member (e.g. 'str', 'list[str]', 'LabelRule') to error locations.
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in _TYPE_TAGS)


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-before", "function-after",
              "function-wrap", "constrained-str", "constrained-int", "constrained-float",
              "constrained-list"}


def _key_path(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


def _model_at(model: type[BaseModel], loc: list[Any]) -> type[BaseModel] | None:
    """The pydantic model class that sits at ``loc`` inside ``model`` (for key suggestions)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None
        if part in current.model_fields:
            current = _unwrap(current.model_fields[part].annotation)
        else:
            current = _unwrap(current, mapping_value=True)
    return current if isinstance(current, type) and issubclass(current, BaseModel) else None


def _unwrap(annotation: Any, mapping_value: bool = False) -> Any:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        models = [a for a in get_args(annotation)
                  if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if models else annotation
    if origin is list:
        return _unwrap(get_args(annotation)[0])
    if origin is dict:
        return _unwrap(get_args(annotation)[1])
    return annotation


# --------------------------------------------------------------------------------------------
# Second stage: component names and parameters, once plugins are loaded
# --------------------------------------------------------------------------------------------


def resolve_component(
    table: ComponentTable[Any], kind: str, params: Mapping[str, Any], *, key: str, source: str
) -> tuple[Any, Params]:
    """Look a component up and validate its parameters; returns ``(factory, params)``."""
    component = table.get(kind, key=f"{key}.kind", source=source)
    parsed = validate_table(component.params, params, key=key, source=source,
                            what=f"parameters of {table.singular} '{component.name}'")
    return component.factory, parsed


def validate_table(model: type[Any], raw: Mapping[str, Any], *, key: str, source: str,
                   what: str) -> Any:
    """``raw`` validated by the pydantic ``model``; the first problem as a config error naming
    the dotted key, what was expected and what was found."""
    try:
        return model.model_validate(dict(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        sub_key, message = _format_param_error(first, model)
        raise ConfigError(f"{message} ({what})", source=source,
                          key=f"{key}.{sub_key}" if sub_key else key) from None


def _format_param_error(err: Any, model: type[BaseModel]) -> tuple[str, str]:
    loc = [p for p in err["loc"] if not _is_union_tag(p)]
    if err["type"] == "extra_forbidden":
        allowed = sorted(model.model_fields)
        name = str(loc[-1])
        expected = ", ".join(allowed) if allowed else "no parameters"
        return name, f"unknown key '{name}'; expected one of: {expected}{suggest(name, allowed)}"
    if err["type"] == "missing":
        return _key_path(loc), "required key is missing"
    if err["type"] == "value_error":
        return _key_path(loc), str(err["msg"]).removeprefix("Value error, ")
    return _key_path(loc), f"{err['msg'].lower()}; found {_describe(err.get('input'))}"


def default_loss(table: ComponentTable[Any], task_type: str, *, key: str, source: str) -> str:
    """The registered default loss whose ``task_types`` include ``task_type``."""
    fits = [c.name for c in table.defaults()
            if task_type in getattr(c.factory, "task_types", ())]
    if len(fits) != 1:
        why = "no" if not fits else f"{len(fits)} ({', '.join(fits)})"
        raise ConfigError(f"expected a loss name: {why} enabled plugin registers a default "
                          f"loss for {task_type} tasks; available: {', '.join(table.names())}",
                          source=source, key=key)
    return fits[0]


def complete_config(config: EngineConfig, engine: Engine) -> None:
    """Write each family's registered default where ``config`` names none (``"default"``, or
    no loss for a task), so the config saved with a model records the components it really
    used, and validate the plugin-owned ``[plugins.NAME]`` tables. Component parameters are
    validated where the components are built, once (:func:`rankengine.plan.make_plan`)."""
    c, src = engine.components, config.source
    refs: list[tuple[Any, str, Any, str]] = [
        (config.model, "backbone", c.backbones, "model.backbone"),
        (config.model, "tower", c.towers, "model.tower"),
        (config.model, "cascade", c.cascades, "model.cascade"),
        (config.loss, "weighting", c.loss_weightings, "loss.weighting"),
        (config.loss, "sample_weighting", c.sample_weightings, "loss.sample_weighting"),
    ]
    for owner, attr, table, key in refs:
        ref = getattr(owner, attr)
        name = table.get(ref.kind, key=f"{key}.kind", source=src).name
        if name != ref.kind:
            setattr(owner, attr, ComponentRef(kind=name, **ref.params))
    fusion = c.fusions.get(config.fusion.kind, key="fusion.kind", source=src).name
    if fusion != config.fusion.kind:
        config.fusion = FusionSection(kind=fusion, **config.fusion.params)
    calibration = config.calibration
    # No [calibration] table and no calibrator plugin enabled (a model saved before calibrators
    # existed names only its own plugins): it stays uncalibrated, as it was trained.
    uncalibrated = calibration.kind == DEFAULT_KIND and not calibration.regression and \
        not calibration.params and not c.calibrators.defaults()
    calibrator = calibration.kind if uncalibrated else \
        c.calibrators.get(calibration.kind, key="calibration.kind", source=src).name
    if calibrator != calibration.kind:
        config.calibration = CalibrationSection(kind=calibrator,
                                                regression=calibration.regression,
                                                **calibration.params)
    for name, task in config.tasks.items():
        key = f"tasks.{name}.loss"
        if not task.losses:
            task.loss = ComponentRef(kind=default_loss(c.losses, task.type, key=key,
                                                       source=src))
            continue
        several = isinstance(task.loss, list)
        named = [ComponentRef(kind=c.losses.get(
            ref.kind, key=f"{key}[{i}].kind" if several else f"{key}.kind", source=src).name,
            **ref.params) for i, ref in enumerate(task.losses)]
        task.loss = named if several else named[0]
    for name in config.plugins:
        c.config_tables.get(name, key=f"plugins.{name}", source=src)
    for table in c.config_tables:
        config._plugin_settings[table.name] = validate_table(
            table.factory, config.plugins.get(table.name, {}), key=f"plugins.{table.name}",
            source=src, what=f"settings of plugin table '{table.name}'")
