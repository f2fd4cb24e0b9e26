"""The workflow config (docs/formats.md): load, validate, expand rows, and the one path layout.

A config (configs/toy.yaml, configs/ci.yaml, configs/paper.yaml) is checked against
`workflow/schemas/config.schema.yaml` and then semantically (unknown training run, loop or cache
outside the backbone, steps < 1, duplicate row names, ...); every error is an `ILFConfigError`
naming the key, e.g. `rows[t1_alpha512_ilf].feedback.training='nope' is not allowed: expected one of ...`.

Rows are expanded: `defaults` <- row <- each `variants` entry <- each combination of `vary` values,
names formatted from the vary keys (`"fig8_ilf_{steps}"`). Rows whose generation settings are
identical share one image folder (`shares_images_with`), so a table that repeats a baseline does not
pay for it twice. The expanded config is what `<out_dir>/workflow_config.json` holds and what every
`ilf` command reads; `ilf.harness.workflow_layout.Layout` is the only place that knows where files go.

    ilf rows --config configs/paper.yaml      # validate, print every row
"""
from __future__ import annotations

import copy
import functools
import hashlib
import itertools
import json
import re
from pathlib import Path
from typing import Any

import yaml

from ..config import CACHE_RENAMED, FeedbackConfig, upgrade_cache_dict
from ..config_file import TRAINING_FIELDS, WORKFLOW_KEYS, Shown, file_error, read_config
from ..errors import ILFConfigError
from ..peers import PEERS  # the peer methods (ilf.peers is the one list)
from ..registry import training_refusal
from .clip_records import VIDEO_METRICS
from .prompts import TASK_OF_SET
from .reference import REFERENCE_METRICS, fidelity_references
from .workflow_layout import Layout  # the path layout (re-exported: common.smk imports it from here)

REPO_ROOT = Path(__file__).resolve().parents[2]
SCHEMA_PATH = REPO_ROOT / "workflow" / "schemas" / "config.schema.yaml"
DEFAULT_CONFIG = "configs/toy.yaml"
METHODS = ("baseline", "cache", "ilf", *PEERS)
ACCOUNT_PLACEHOLDER = "YOUR_SLURM_ACCOUNT"
# Row keys that do not change the images (everything else does: two rows equal on the rest share images).
PRESENTATION_KEYS = ("name", "table", "group", "label", "paper_row", "reference_row", "metrics", "note", "shards", "batch_size",
                     "generation_dir", "shares_images_with", "block_forwards_analytic")
ROW_DEFAULTS: dict[str, Any] = {
    "paper_row": None, "reference_row": None, "cache": None, "feedback": None, "num_prompts": None,
    "images_per_prompt": 1, "metrics": [], **{peer: None for peer in PEERS},
}
# a row's feedback settings default to FeedbackConfig's own (eq. 4: ratio m/n), except t_post: the paper's rows rescale
FEEDBACK_DEFAULTS: dict[str, Any] = {"iteration": None, "feedback_steps": "all", "t_post": "rescale",
                                     "ratio": FeedbackConfig.__dataclass_fields__["ratio"].default}
CACHE_DEFAULTS: dict[str, Any] = {"location": "inner", "interval": 3}


# ------------------------------------------------------------------------------------------ validation
def _key_path(path: Any, prefix: str = "") -> str:
    out = prefix
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<config>"


_SCHEMA_TYPES = {"object": "a mapping", "array": "a list", "string": "a string", "integer": "an integer",
                 "number": "a number", "boolean": "true or false", "null": "null"}


@functools.lru_cache(maxsize=None)
def _validators() -> tuple[Any, Any]:
    """JSON-schema validators of a whole config and of one expanded row."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    row = {"definitions": schema["definitions"], "$ref": "#/definitions/row"}
    return jsonschema.Draft202012Validator(schema), jsonschema.Draft202012Validator(row)


def validate_schema(cfg: dict[str, Any]) -> None:
    """JSON-schema check of the raw config; the first error is raised naming its key."""
    _raise_first(_validators()[0].iter_errors(cfg))


def _check_expanded_row(row: dict[str, Any], i: int) -> None:
    """A row made from `defaults`, `variants` and `vary` is checked as a written row is (types, known keys)."""
    name = row.get("name")
    _raise_first(_validators()[1].iter_errors(row), f"rows[{name if isinstance(name, str) else i}]")


def _raise_first(errors: Any, prefix: str = "") -> None:
    errors = sorted(errors, key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if errors:
        err = errors[0]
        key = _key_path(err.absolute_path, prefix)
        if err.validator == "additionalProperties":
            patterns = [re.compile(p) for p in err.schema.get("patternProperties", {})]  # e.g. `^_` (YAML anchors)
            extra = sorted(k for k in set(err.instance) - set(err.schema.get("properties", {}))
                           if not any(p.search(str(k)) for p in patterns))
            if extra:
                allowed = sorted(err.schema.get("properties", {}))
                raise ILFConfigError(f"{key}.{extra[0]}" if key != "<config>" else extra[0],
                                     Shown(err.instance[extra[0]]),
                                     f"a known key: {', '.join(allowed)}" if allowed else "no such key")
        if err.validator == "type":
            types = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
            raise ILFConfigError(key, Shown(err.instance), " or ".join(_SCHEMA_TYPES.get(t, t) for t in types))
        if err.validator == "required":
            missing = next(k for k in err.validator_value if k not in err.instance)
            raise ILFConfigError(f"{key}.{missing}" if key != "<config>" else missing, None, "a value (a required key)")
        raise ILFConfigError(key, Shown(err.instance), err.message if not isinstance(err.instance, (dict, list)) else
                             err.message.replace(repr(err.instance), "it"))


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge (lists and scalars replace)."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[keys[-1]] = copy.deepcopy(value)


def expand_rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """`defaults` <- row <- variant <- vary combination, with names formatted from variant/vary keys."""
    defaults = cfg.get("defaults") or {}
    rows: list[dict[str, Any]] = []
    for i, raw in enumerate(cfg["rows"]):
        base = _merge(defaults, {k: v for k, v in raw.items() if k not in ("vary", "variants")})
        variants = raw.get("variants") or [None]
        vary = raw.get("vary") or {}
        keys = list(vary)
        for variant in variants:
            for combo in itertools.product(*(vary[k] for k in keys)):
                row = base
                ctx: dict[str, Any] = {}
                if variant is not None:
                    ctx["variant"] = variant["id"]
                    row = _merge(row, {k: v for k, v in variant.items() if k != "id"})
                else:
                    row = copy.deepcopy(row)
                for k, v in zip(keys, combo):
                    _set_dotted(row, k, v)
                    ctx[k.split(".")[-1]] = v
                for field in ("name", "label", "group", "paper_row"):
                    if isinstance(row.get(field), str) and "{" in row[field]:
                        try:
                            row[field] = row[field].format(**ctx)
                        except (KeyError, IndexError, ValueError) as err:
                            raise ILFConfigError(f"rows[{i}].{field}", row[field],
                                                 f"placeholders among {sorted(ctx)} ({err})") from None
                if "name" not in row:
                    raise ILFConfigError(f"rows[{i}].name", None, "a row name")
                rows.append(row)
    return rows


def _check_name(key: str, name: str) -> None:
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", name):
        raise ILFConfigError(key, name, "letters, digits, '_', '.', '+', '-' (no '/' or spaces)")


def generation_signature(row: dict[str, Any]) -> str:
    """Hash of everything in a resolved row that changes its images (records carry it; resume checks it).

    Feedback schedules are compared as resolved step lists (`outer:4` = `skip-inner:8` at 12 steps)."""
    core = {k: v for k, v in row.items() if k not in PRESENTATION_KEYS}
    if isinstance(core.get("cache"), dict):  # under the settings' former names, as records made before were signed
        former = {new: old for old, new in CACHE_RENAMED.items()}
        core["cache"] = {former.get(k, k): v for k, v in core["cache"].items()}
    if isinstance(core.get("feedback"), dict):
        from ..schedule import resolve_feedback_steps

        fb = dict(core["feedback"])
        fb["feedback_steps"] = resolve_feedback_steps(fb["feedback_steps"], row["steps"])
        core["feedback"] = fb
    return hashlib.sha256(json.dumps(core, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prompt_specs(row: dict[str, Any]) -> list[dict[str, Any]]:
    """The row's prompt sets as a list of {set, num_prompts, images_per_prompt}."""
    p = row["prompts"]
    if isinstance(p, str):
        return [{"set": p, "num_prompts": row.get("num_prompts"), "images_per_prompt": row.get("images_per_prompt", 1)}]
    return [{"set": s["set"], "num_prompts": s.get("num_prompts"), "images_per_prompt": s.get("images_per_prompt", 1)}
            for s in p]


def _resolve_row(cfg: dict[str, Any], row: dict[str, Any], layout: Layout) -> dict[str, Any]:
    from ..accounting import expected_block_forwards
    from ..config import CacheConfig, FeedbackConfig

    name = row["name"]
    key = f"rows[{name}]"
    _check_name(f"{key}.name", name)
    for field in ("table", "backbone", "steps", "method", "prompts"):
        if row.get(field) is None:
            raise ILFConfigError(f"{key}.{field}", None, "a value (it has no default)")
    row = _merge(ROW_DEFAULTS, row)
    backbone = row["backbone"]
    if backbone not in cfg["backbones"]:
        raise ILFConfigError(f"{key}.backbone", backbone, sorted(cfg["backbones"]))
    spec = cfg["backbones"][backbone]
    steps = row["steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ILFConfigError(f"{key}.steps", steps, "an integer >= 1")
    if row["method"] not in METHODS:
        raise ILFConfigError(f"{key}.method", row["method"], METHODS)
    row.setdefault("group", backbone)
    row.setdefault("label", name)
    row.setdefault("guidance_scale", spec.get("guidance_scale", 4.5))
    row.setdefault("shards", cfg.get("shards", 1))
    explicit_batch = "batch_size" in row
    row.setdefault("batch_size", spec.get("batch_size", 8))
    row.update(task=spec["task"], resolution=spec["resolution"], num_blocks=spec["num_blocks"], seed=cfg["seed"],
               world=cfg["world"])
    if spec["task"] == "t2v":  # clips: frame count and width (image rows keep their keys, and so their signature)
        if spec.get("num_frames") is None:
            raise ILFConfigError(f"backbones.{backbone}.num_frames", None, "the frames per clip of a t2v backbone")
        row.update(num_frames=spec["num_frames"], width=spec.get("width", spec["resolution"]))
        for m in row["metrics"]:
            if m not in VIDEO_METRICS:
                raise ILFConfigError(f"{key}.metrics", m, f"a metric of video clips ({', '.join(VIDEO_METRICS)})")
    n = spec["num_blocks"]
    method_cfg: Any = None
    if row["method"] == "cache":
        if not row.get("cache"):
            raise ILFConfigError(f"{key}.cache", row.get("cache"), "a cache block {location, num_cached, interval}")
        try:
            row["cache"] = _merge(CACHE_DEFAULTS, upgrade_cache_dict(row["cache"]))
            method_cfg = CacheConfig.from_dict(row["cache"]).validate(n)
        except ILFConfigError as err:
            raise ILFConfigError(f"{key}.cache.{err.field}", err.value, err.allowed) from None
    else:
        row["cache"] = None
    if row["method"] == "ilf":
        fb = row.get("feedback") or {}
        run = fb.get("training")
        runs = cfg.get("training") or {}
        if run not in runs:
            raise ILFConfigError(f"{key}.feedback.training", run, sorted(runs) or "a key of `training` (none defined)")
        fb = _merge(FEEDBACK_DEFAULTS, fb)
        it = fb["iteration"]
        if it is not None and (not isinstance(it, int) or isinstance(it, bool) or it < 1):
            raise ILFConfigError(f"{key}.feedback.iteration", it, "null (the final checkpoint) or an iteration >= 1")
        fb.update(loop_start=runs[run]["loop_start"], loop_end=runs[run]["loop_end"],
                  checkpoint=layout.checkpoint_dir(run, fb["iteration"]))
        try:
            method_cfg = FeedbackConfig(loop_start=fb["loop_start"], loop_end=fb["loop_end"],
                                        feedback_steps=fb["feedback_steps"], t_post=fb["t_post"], ratio=fb["ratio"]).validate(n)
            row["block_forwards_analytic"] = expected_block_forwards(method_cfg, n, steps)
        except ILFConfigError as err:
            raise ILFConfigError(f"{key}.feedback.{err.field}", err.value, err.allowed) from None
        row["feedback"] = fb
    elif row["method"] in PEERS:
        row["feedback"] = None
        row["block_forwards_analytic"] = _resolve_peer(row, key, n, steps, explicit_batch)
    else:
        row["feedback"] = None
        row["block_forwards_analytic"] = expected_block_forwards(method_cfg, n, steps)
    true_cfg = _true_cfg_scale(row, key)
    if true_cfg is not None:  # in the signature only where the pipeline runs true CFG (other rows keep theirs)
        row["true_cfg_scale"] = true_cfg
    if isinstance(row.get("block_forwards_analytic"), int):  # per pipeline call: guidance as two calls doubles it
        row["block_forwards_analytic"] *= row_calls_per_step(row)
    for peer in PEERS:  # only the row's own method keeps its settings
        if peer != row["method"]:
            row[peer] = None
    for j, ps in enumerate(prompt_specs(row)):
        want = TASK_OF_SET.get(ps["set"], "c2i")
        if want != spec["task"]:
            raise ILFConfigError(f"{key}.prompts", ps["set"], f"a {spec['task']} prompt set for backbone {backbone!r}")
        if cfg["world"] == "toy" and not ps["set"].startswith("toy-"):
            raise ILFConfigError(f"{key}.prompts", ps["set"], "a toy prompt set (toy-captions, toy-digits) in the toy world")
    for m in row["metrics"]:
        if m not in REFERENCE_METRICS and (cfg["world"] == "toy") != m.startswith("toy_"):
            raise ILFConfigError(f"{key}.metrics", m, "toy_* metrics in the toy world, real metrics in the paper world "
                                 f"({', '.join(REFERENCE_METRICS)} in both)")
    return row


def row_calls_per_step(row: dict[str, Any]) -> int:
    """Transformer calls per step of a row's pipeline as `ilf generate` calls it (`ilf.accounting.calls_per_step`:
    2 for Wan at guidance_scale > 1 and for true CFG (`true_cfg_kwargs`; toy-flux's: the empty caption as
    negative) at a scale > 1; 1 for batched guidance and the other toy backbones)."""
    from ..accounting import calls_per_step
    from ..registry import BACKBONES

    g = row["guidance_scale"]
    if row["backbone"] == "toy-flux":  # ilf.toy.flux.toy_flux_prompt_kwargs: true_cfg_scale = g, a negative if g > 1
        return calls_per_step("FluxPipeline", true_cfg_scale=g, negative_prompt="" if g > 1 else None)
    spec = BACKBONES.get(row["backbone"])
    return 1 if spec is None else calls_per_step(spec.pipeline_class, guidance_scale=g, **true_cfg_kwargs(row))


# The negative prompt of true classifier-free guidance: Qwen-Image's model card (`negative_prompt=" "`).
TRUE_CFG_NEGATIVE = " "


def true_cfg_kwargs(row: dict[str, Any]) -> dict[str, Any]:
    """The true classifier-free guidance arguments `ilf generate` passes a resolved row's pipeline: `true_cfg_scale`,
    and at a scale > 1 the negative prompt `TRUE_CFG_NEGATIVE` (one per prompt), which turns it on (FluxPipeline,
    QwenImagePipeline: a cond and an uncond transformer call per step). Empty for other rows.

    Args:
        row: a resolved row (`resolve`; its `true_cfg_scale` is set only where the pipeline runs true CFG).

    Returns:
        `{}`, `{"true_cfg_scale": s}` (s <= 1) or `{"true_cfg_scale": s, "negative_prompt": " "}`.
    """
    scale = row.get("true_cfg_scale")
    if scale is None:
        return {}
    return {"true_cfg_scale": scale, **({"negative_prompt": TRUE_CFG_NEGATIVE} if scale > 1 else {})}


def _true_cfg_scale(row: dict[str, Any], key: str) -> float | None:
    """The true CFG scale of a row whose registry pipeline has true CFG (`ilf.accounting.GUIDANCE_AS_TWO_CALLS`
    entries that need a negative prompt): the row's `true_cfg_scale`, else, for a transformer without a guidance
    embedding (Qwen-Image, FLUX.1-schnell), its `guidance_scale` (Qwen-Image's model card: `true_cfg_scale=4.0`).
    None for the others (FLUX.1-dev's `guidance_scale` is its distilled guidance; true CFG only when asked)."""
    from ..accounting import GUIDANCE_AS_TWO_CALLS
    from ..registry import BACKBONES

    spec = BACKBONES.get(row["backbone"]) if row["backbone"] != "toy-flux" else None
    asked = row.get("true_cfg_scale")
    if spec is None or not GUIDANCE_AS_TWO_CALLS.get(spec.pipeline_class, ("", False))[1]:
        if asked is not None:
            true_cfg = sorted(k for k, (_, neg) in GUIDANCE_AS_TWO_CALLS.items() if neg)
            raise ILFConfigError(f"{key}.true_cfg_scale", asked, f"no value: only the pipelines with true CFG "
                                 f"({', '.join(true_cfg)}) take it; backbone {row['backbone']!r} guides by guidance_scale")
        return None
    if asked is None and spec.transformer_config.get("guidance_embeds"):
        return None
    scale = row["guidance_scale"] if asked is None else asked
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale < 0:
        raise ILFConfigError(f"{key}.true_cfg_scale", scale, "a number >= 0")
    return float(scale)


def _resolve_peer(row: dict[str, Any], key: str, num_blocks: int, steps: int, explicit_batch: bool) -> int | None:
    """Validate a peer row's settings (`<method>: {...}`); its analytic count, or None when dynamic.

    A dynamic cache decides per pipeline call, from the whole batch: its rows generate one image per call
    (batch_size 1) so that each image's measured count is its own.
    """
    from ..peers import peer_config

    method = row["method"]
    try:
        cfg = peer_config(method, row.get(method)).validate(num_blocks, steps)
        analytic = cfg.expected_block_forwards(num_blocks, steps)
    except ILFConfigError as err:
        field = err.field if err.field.startswith(f"{method}.") else f"{method}.{err.field}"
        raise ILFConfigError(f"{key}.{field}", err.value, err.allowed) from None
    g = row["guidance_scale"]
    if cfg.needs_guidance and isinstance(g, (int, float)) and g <= 1:
        raise ILFConfigError(f"{key}.guidance_scale", g, f"> 1 for {method} (it approximates the unconditional half "
                             "of a classifier-free-guidance batch; at guidance_scale <= 1 the pipeline runs none)")
    row[method] = cfg.to_dict()
    if analytic == "dynamic":
        if explicit_batch and row["batch_size"] != 1:
            raise ILFConfigError(f"{key}.batch_size", row["batch_size"], "1 for a dynamic cache (it decides per call, "
                                 "from the whole batch, so a larger batch would change every image's count)")
        row["batch_size"] = 1
        return None
    return analytic


def _training_yaml(spec: dict[str, Any], key: str) -> dict[str, Any]:
    path = Path(spec["config"])
    path = path if path.is_absolute() else REPO_ROOT / path
    if not path.exists():
        raise ILFConfigError(f"{key}.config", spec["config"], "an existing training YAML (configs/train/<name>.yaml)")
    data = read_config(path, TRAINING_FIELDS)
    for k, v in (spec.get("overrides") or {}).items():
        _set_dotted(data, k, v)
    return data


def _check_registered_backbone(name: str, spec: dict[str, Any]) -> None:
    """A registry backbone (`ilf.registry.BACKBONES`) must have the registry's task and block count N (every
    analytic count and FLOPs figure rests on N)."""
    from ..registry import BACKBONES

    reg = BACKBONES.get(name)
    if reg is None:
        return
    for field, want in (("task", reg.task), ("num_blocks", reg.num_blocks)):
        if spec.get(field) != want:
            raise ILFConfigError(f"backbones.{name}.{field}", spec.get(field), f"{want!r}, the registry's")


def _check_training(cfg: dict[str, Any]) -> None:
    """Each run's YAML exists; its inner loop (from the YAML + overrides) is filled in as loop_start/loop_end."""
    for run, spec in (cfg.get("training") or {}).items():
        key = f"training.{run}"
        _check_name(key, run)
        data = _training_yaml(spec, key)
        why = training_refusal(str(data.get("backbone")))
        if why is not None:
            raise ILFConfigError(f"{key}.config", spec["config"], f"a training YAML of a backbone `ilf train` takes "
                                 f"(backbone {data.get('backbone')!r}: {why})")
        fb = data.get("feedback")
        fb = {} if fb is None else fb
        if not isinstance(fb, dict):
            raise ILFConfigError(f"{key}.config", spec["config"],
                                 f"a training YAML whose `feedback` is a mapping, not {Shown(fb)}")
        for field in ("loop_start", "loop_end"):
            from_yaml = fb.get(field, FeedbackConfig.__dataclass_fields__[field].default)
            if field in spec and spec[field] != from_yaml:
                raise ILFConfigError(f"{key}.{field}", spec[field], f"the value in {spec['config']} ({from_yaml})")
            spec[field] = from_yaml
        try:
            FeedbackConfig(loop_start=spec["loop_start"], loop_end=spec["loop_end"])
        except ILFConfigError as err:
            raise ILFConfigError(f"{key}.{err.field}", err.value, err.allowed) from None
        lat = spec.get("latents")
        if lat is not None and lat not in (cfg.get("precompute") or {}):
            raise ILFConfigError(f"{key}.latents", lat, sorted(cfg.get("precompute") or {}) or "a key of `precompute`")
    for i, feat in enumerate(cfg.get("features") or []):
        if feat["backbone"] not in cfg["backbones"]:
            raise ILFConfigError(f"features[{i}].backbone", feat["backbone"], sorted(cfg["backbones"]))


def resolve(cfg: dict[str, Any]) -> dict[str, Any]:
    """Validate and expand a raw config (or re-check a resolved one); returns a new dict."""
    if not isinstance(cfg, dict):
        raise ILFConfigError("<config>", type(cfg).__name__, "a mapping (YAML document)")
    cfg = copy.deepcopy(cfg)
    validate_schema(cfg)
    cfg.setdefault("device", "auto")
    cfg.setdefault("launcher", "local")
    cfg.setdefault("shards", 1)
    cfg.setdefault("rows_per_job", 1)
    cfg.setdefault("prefetch", False)
    cfg.setdefault("paper_numbers", "configs/paper_numbers.csv")
    cfg.setdefault("metric_options", {})
    cfg.setdefault("training", {})
    cfg.setdefault("precompute", {})
    cfg.setdefault("features", [])
    for name in cfg["backbones"]:
        _check_name(f"backbones.{name}", name)
        if cfg["world"] == "toy" and not name.startswith("toy-"):
            raise ILFConfigError(f"backbones.{name}", name, "toy-t2i, toy-c2i or toy-flux in the toy world")
        _check_registered_backbone(name, cfg["backbones"][name])
    _check_training(cfg)
    layout = Layout.of(cfg)
    rows = cfg["rows"] if cfg.get("resolved") else expand_rows(cfg)
    resolved: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    first_by_sig: dict[str, str] = {}
    for i, row in enumerate(rows):
        _check_expanded_row(row, i)
        r = _resolve_row(cfg, {k: v for k, v in row.items()
                               if k not in ("generation_dir", "shares_images_with", "block_forwards_analytic")}, layout)
        if r["name"] in seen:
            raise ILFConfigError(f"rows[{r['name']}].name", r["name"], "a name no other row has")
        seen[r["name"]] = len(resolved)
        sig = generation_signature(r)
        owner = first_by_sig.setdefault(sig, r["name"])
        r["shares_images_with"] = None if owner == r["name"] else owner
        r["generation_dir"] = layout.row_dir(owner)
        resolved.append(r)
    for r in resolved:
        if r.get("reference_row") is not None and r["reference_row"] not in seen:
            raise ILFConfigError(f"rows[{r['name']}].reference_row", r["reference_row"], "the name of another row")
    cfg["rows"] = resolved
    fidelity_references(cfg)  # every row scored against a reference has one, one per image folder
    for key in [k for k in cfg if k.startswith("_")] + ["defaults"]:
        cfg.pop(key, None)
    cfg["resolved"] = True
    return cfg


def load_workflow_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read a workflow YAML (or a resolved `workflow_config.json`), apply `overrides`, validate and expand.

    Every `ilf` command that takes a workflow config reads it here, so each sees the rows the workflow sees.

    Args:
        path: the config file (default `configs/toy.yaml` of this repository).
        overrides: top-level values merged over the file's before validation.

    Returns:
        The resolved config: `rows` expanded (`defaults`, `variants`, `vary`) and filled in.

    Raises:
        FileNotFoundError: there is no such file.
        ConfigFileError: the file is not valid YAML, not a mapping, or a value is not allowed; one line naming
            the file, the key and (where the key is in the file) its line and column.
    """
    path = Path(path or REPO_ROOT / DEFAULT_CONFIG)
    cfg = read_config(path, WORKFLOW_KEYS)
    if overrides:
        cfg = _merge(cfg, overrides)
    try:
        return resolve(cfg)
    except ILFConfigError as err:
        raise file_error(path, err) from None


# --------------------------------------------------------------------------------------------- queries
def get_row(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    for row in cfg["rows"]:
        if row["name"] == name:
            return row
    raise ILFConfigError("row", name, sorted(r["name"] for r in cfg["rows"]))


def generation_rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per image folder (rows that share images with an earlier row are left out)."""
    return [r for r in cfg["rows"] if r["shares_images_with"] is None]


def metrics_for_dir(cfg: dict[str, Any], owner: str) -> list[str]:
    """Union (in first-seen order) of the metrics of every row whose images live in `owner`'s folder."""
    out: list[str] = []
    d = get_row(cfg, owner)["generation_dir"]
    for r in cfg["rows"]:
        if r["generation_dir"] == d:
            out += [m for m in r["metrics"] if m not in out]
    return out


def training_runs_needed(cfg: dict[str, Any]) -> list[str]:
    return sorted({r["feedback"]["training"] for r in cfg["rows"] if r["method"] == "ilf"})


def checkpoint_iterations(cfg: dict[str, Any], run: str) -> list[int]:
    """Intermediate checkpoint iterations rows need from `run` (Fig. 7)."""
    return sorted({r["feedback"]["iteration"] for r in cfg["rows"]
                   if r["method"] == "ilf" and r["feedback"]["training"] == run and r["feedback"]["iteration"]})


def row_tables(row: dict[str, Any]) -> list[str]:
    """The tags of a row's `table` ("table1", or a list like [table1, fig8])."""
    t = row["table"]
    return [str(x) for x in t] if isinstance(t, list) else [str(t)]


# Tables of the project's own (`ilf.report.tables.OWN_SPECS`): LaTeX + HTML, no table beside the paper's numbers.
OWN_TABLES = ("toy_flow",)


def tables(cfg: dict[str, Any]) -> list[str]:
    """table1..table6 keys that have at least one row, then the own tables (`OWN_TABLES`) that have one."""
    found = {t for r in cfg["rows"] for t in row_tables(r)}
    return (sorted((t for t in found if re.fullmatch(r"table\d+", t)), key=lambda t: int(t[5:]))
            + [t for t in OWN_TABLES if t in found])


def training_overrides(cfg: dict[str, Any], run: str) -> dict[str, Any]:
    """`ilf train --set` overrides of training run `run`: the config's own, the run name, and every intermediate
    checkpoint a row needs added to the YAML's `keep_iterations` (Fig. 7)."""
    runs = cfg.get("training") or {}
    if run not in runs:
        raise ILFConfigError("training", run, sorted(runs))
    spec = runs[run]
    out = {"name": run, **(spec.get("overrides") or {})}
    base_keep = _training_yaml(spec, f"training.{run}").get("keep_iterations") or []
    keep = sorted(set(base_keep) | set(checkpoint_iterations(cfg, run)))
    if keep:
        out["keep_iterations"] = keep
    return out


def check_slurm_account(account: Any) -> None:
    """Raise when the SLURM profile's account is missing or still the README's placeholder."""
    if account in (None, "", ACCOUNT_PLACEHOLDER) or str(account).strip("'\"") in ("", ACCOUNT_PLACEHOLDER):
        raise ILFConfigError("profiles/slurm/config.yaml default-resources.slurm_account", account,
                             "your SLURM account (replace the placeholder; see docs/workflow.md, 'Running on SLURM')")

