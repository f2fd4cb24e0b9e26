"""Configuration of the two methods: Inner Loop Feedback (paper Sec. 3) and the caching baseline (Sec. 2.2).

Both are plain dataclasses with documented defaults, checked on construction (fields that need no
backbone); `validate(num_blocks)` checks a config against a backbone depth. Both raise `ILFConfigError`
(a `ValueError`) naming the field, the value and what is allowed; nothing is ever half-applied because
every `apply_*` validates before touching the model.
"""
from __future__ import annotations

import re
import warnings
from dataclasses import InitVar, asdict, dataclass, field, fields
from typing import Any, Union

from .errors import ILFConfigError

T_POST_STRATEGIES = ("default", "uniform", "rescale", "anneal")
RATIOS = ("n/m", "m/n")
INITS = ("copy", "fresh")
FEEDBACK_STREAMS = ("all", "image")  # which of F's output streams are fed back (multi-stream backbones)
SCHEDULE_NAMES = ("all", "none", "alternating")
SCHEDULE_PATTERNS = ("first:k", "last:k", "outer:k", "skip-inner:k")
CACHE_LOCATIONS = ("first", "last", "outer", "inner", "alternating")
# Former names of cache settings -> their names now; the former still load (dicts, configs, stored records).
CACHE_RENAMED: dict[str, str] = {"num_blocks": "num_cached"}

FeedbackSteps = Union[str, list[int], tuple[int, ...]]
_SCHEDULE_RE = re.compile(r"^(first|last|outer|skip-inner):(\d+)$")


def _check_feedback_steps(value: Any) -> None:
    """Syntax check of a feedback schedule; the step range is checked once the step count is known."""
    allowed = f"one of {', '.join(map(repr, SCHEDULE_NAMES + SCHEDULE_PATTERNS))} (k >= 1), or a list of step indices >= 0"
    if isinstance(value, str):
        if value in SCHEDULE_NAMES:
            return
        m = _SCHEDULE_RE.match(value)
        if m and int(m.group(2)) >= 1:
            return
        raise ILFConfigError("feedback_steps", value, allowed)
    if isinstance(value, (list, tuple)):
        if all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value) and len(set(value)) == len(value):
            return
        raise ILFConfigError("feedback_steps", value, allowed + " without duplicates")
    raise ILFConfigError("feedback_steps", value, allowed)


def _from_dict(cls: Any, d: dict[str, Any]) -> Any:
    """Build a config dataclass from a dict (validated on construction), naming any unknown field."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ILFConfigError(unknown[0], d[unknown[0]], f"a {cls.__name__} field: {sorted(known)}")
    return cls(**d)


@dataclass
class FeedbackConfig:
    """Inner Loop Feedback settings (paper Sec. 3.1-3.3, METHOD.md).

    The defaults are the paper's main setting: inner loop over blocks 8..19 of a 28-block backbone, feedback on
    every step, t_post by eq. 4. Fields are checked on construction; block indices against a backbone's depth
    by `validate(num_blocks)`, which `apply_feedback` calls.

    Args:
        loop_start (`int`, defaults to 8): b, the first block of the inner loop (0-based, inclusive).
        loop_end (`int`, defaults to 19): e, the last block of the inner loop (inclusive); the feedback block F
            reads its output and starts as a copy of it. The loop has m = e - b + 1 blocks (`loop_size`),
            one scale each.
        feedback_steps (`str` or `list[int]`, defaults to `"all"`): the sampling steps that run feedback (Sec. 3.3,
            "skipping"): `"all"`, `"none"`, `"alternating"`, `"first:k"`, `"last:k"`, `"outer:k"`,
            `"skip-inner:k"` or 0-based step indices (`resolve_feedback_steps`); the other steps run the plain
            backbone.
        t_post (`str`, defaults to `"rescale"`): the time condition of the blocks after F, in the scheduler's
            timestep units (`post_feedback_timestep`): `"default"` (t), `"uniform"`, `"rescale"` (eq. 4) or
            `"anneal"` (eq. 5).
        ratio (`str`, defaults to `"m/n"`): rho of eq. 4: `"m/n"` keeps t_post between t and the next step
            (METHOD.md), `"n/m"` as printed in the paper.
        init (`str`, defaults to `"copy"`): F's initialisation: a `"copy"` of block e's weights, or the block
            class's `"fresh"` init.
        streams (`str`, defaults to `"all"`): on a multi-stream backbone (FLUX, SD3: image and text streams), which
            of F's output streams are fed back: `"all"` (one scale per loop block and stream) or `"image"` (the
            image stream only, one scale per loop block); a single-stream backbone has only the image stream.

    Raises:
        ILFConfigError: a field is outside what is allowed (the message names the field, value and choices).

    Example:
        ```py
        from ilf import FeedbackConfig

        config = FeedbackConfig(loop_start=8, loop_end=19, feedback_steps="outer:4")  # Table 1's schedule
        config.loop_size  # 12
        FeedbackConfig.from_dict(config.to_dict()) == config  # True
        ```
    """

    loop_start: int = 8  # b: first block of the inner loop (inclusive)
    loop_end: int = 19  # e: last block of the inner loop (inclusive); the feedback block reads its output
    feedback_steps: FeedbackSteps = "all"  # steps that run feedback (Sec. 3.3 "skipping"); others are plain steps
    t_post: str = "rescale"  # post-feedback time condition: default (t) | uniform | rescale (eq. 4) | anneal (eq. 5)
    ratio: str = "m/n"  # eq. 4's rho: m/N keeps t_post between t and the next step (METHOD.md); "n/m" = as printed
    init: str = "copy"  # feedback block initialisation: copy of block e's weights, or the block class's fresh init
    streams: str = "all"  # multi-stream backbones: feed back every stream of F's output, or the image stream only

    def __post_init__(self) -> None:
        self.validate()  # depth-independent checks at construction; `validate(num_blocks)` on attach

    @property
    def loop_size(self) -> int:
        """m = e - b + 1, the number of blocks the feedback is fed back into."""
        return self.loop_end - self.loop_start + 1

    def validate(self, num_blocks: int | None = None) -> "FeedbackConfig":
        """Raise `ILFConfigError` for any field outside what is allowed (for a backbone of `num_blocks`)."""
        for name in ("loop_start", "loop_end"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ILFConfigError(name, v, "an integer block index >= 0")
        if num_blocks is not None:
            for name in ("loop_start", "loop_end"):
                v = getattr(self, name)
                if v >= num_blocks:
                    raise ILFConfigError(name, v, f"a block index in 0..{num_blocks - 1} (the backbone has {num_blocks} blocks)")
        if self.loop_end < self.loop_start:
            raise ILFConfigError("loop_end", self.loop_end, f"an index >= loop_start={self.loop_start} (bounds are inclusive)")
        _check_feedback_steps(self.feedback_steps)
        if self.t_post not in T_POST_STRATEGIES:
            raise ILFConfigError("t_post", self.t_post, T_POST_STRATEGIES)
        if self.ratio not in RATIOS:
            raise ILFConfigError("ratio", self.ratio, RATIOS)
        if self.init not in INITS:
            raise ILFConfigError("init", self.init, INITS)
        if self.streams not in FEEDBACK_STREAMS:
            raise ILFConfigError("streams", self.streams, FEEDBACK_STREAMS)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(d["feedback_steps"], tuple):
            d["feedback_steps"] = list(d["feedback_steps"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FeedbackConfig":
        return _from_dict(cls, d)


@dataclass
class CacheConfig:
    """The paper's caching baseline (Sec. 2.2, Fig. 6; METHOD.md "The caching baseline").

    Blocks in the cached set are computed on steps `s % interval == 0` and replaced by
    `input + cached residual` on the other steps. Defaults: Table 1 (inner 18 blocks, every 3rd step).

    Args:
        location (`str`, defaults to `"inner"`): where the cached set C sits in the block stack: `"first"`,
            `"last"`, `"outer"` (half first, half last), `"inner"` (centred) or `"alternating"` (evenly spaced);
            see `cached_block_indices`.
        num_cached (`int`, defaults to 18): c, how many blocks are cached (at most the backbone's depth N);
            `num_blocks=` (keyword) is its former name, still accepted with a `DeprecationWarning`.
        interval (`int`, defaults to 3): k, the cached blocks recompute on steps s % k == 0 (step 0 always).

    Raises:
        ILFConfigError: a field is outside what is allowed (the message names the field, value and choices).

    Example:
        ```py
        from ilf import CacheConfig, cached_block_indices

        config = CacheConfig(location="inner", num_cached=18, interval=3)  # Table 1
        cached_block_indices(config, 28)  # [5, 6, ..., 22]
        ```
    """

    location: str = "inner"  # first | last | outer | inner | alternating
    num_cached: int = 18  # c: how many blocks are cacheable (N, the backbone's depth, is `validate`'s argument)
    interval: int = 3  # k: recompute every k-th step (step 0 always computes)
    num_blocks: InitVar[int | None] = field(default=None, kw_only=True)  # former name of `num_cached`

    def __post_init__(self, num_blocks: int | None = None) -> None:
        if num_blocks is not None:
            _warn_renamed("num_blocks")
            default = type(self).__dataclass_fields__["num_cached"].default
            if self.num_cached != default and self.num_cached != num_blocks:  # both names given, and they differ
                raise ILFConfigError("num_blocks", num_blocks, f"no value beside num_cached={self.num_cached} "
                                     "(num_blocks is num_cached's former name)")
            self.num_cached = num_blocks
        self.validate()  # depth-independent checks at construction; `validate(num_blocks)` on attach

    def validate(self, num_blocks: int | None = None) -> "CacheConfig":
        """Raise `ILFConfigError` for any field outside what is allowed (for a backbone of `num_blocks` blocks)."""
        if self.location not in CACHE_LOCATIONS:
            raise ILFConfigError("location", self.location, CACHE_LOCATIONS)
        c = self.num_cached
        if not isinstance(c, int) or isinstance(c, bool) or c < 0:
            raise ILFConfigError("num_cached", c, "an integer c >= 0")
        if num_blocks is not None and c > num_blocks:
            raise ILFConfigError("num_cached", c, f"c <= N = {num_blocks} (the backbone's number of blocks)")
        k = self.interval
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ILFConfigError("interval", k, "an integer k >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CacheConfig":
        """Build from a dict such as `to_dict()` returns; former key names load with a `DeprecationWarning`."""
        return _from_dict(cls, upgrade_cache_dict(d))


def _warn_renamed(old: str, stacklevel: int = 4) -> None:
    """Warn that cache setting `old` is deprecated, naming its current name (stacklevel 4: the caller's caller)."""
    warnings.warn(f"the cache setting `{old}` is deprecated: it is now `{CACHE_RENAMED[old]}` (c, the number of "
                  "cached blocks); write that instead", DeprecationWarning, stacklevel=stacklevel)


def _get_num_blocks(self: CacheConfig) -> int:
    _warn_renamed("num_blocks", stacklevel=3)
    return self.num_cached


def _set_num_blocks(self: CacheConfig, value: int) -> None:
    _warn_renamed("num_blocks", stacklevel=3)
    self.num_cached = value


# The dataclass made `num_blocks` an init-only keyword (class default None); reading or setting it on a config
# is `num_cached`'s former name, too.
CacheConfig.num_blocks = property(_get_num_blocks, _set_num_blocks, doc="Deprecated: `num_cached`.")  # type: ignore[assignment]


def upgrade_cache_dict(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of cache settings `d` (a `CacheConfig` dict, a workflow row's `cache`) with former key names replaced
    by the current ones, each with a `DeprecationWarning` naming the new key.

    Args:
        d: cache settings, e.g. `{"location": "inner", "num_blocks": 18, "interval": 3}`.

    Returns:
        The same settings under the current names, e.g. `{"location": "inner", "num_cached": 18, "interval": 3}`.

    Raises:
        ILFConfigError: a setting is given under both its former and its current name.
    """
    out = dict(d)
    for old, new in CACHE_RENAMED.items():
        if old in out:
            if new in out:
                raise ILFConfigError(old, out[old], f"only `{new}` (`{old}` is its former name)")
            _warn_renamed(old)
            out[new] = out.pop(old)
    return out


def cached_block_indices(config: CacheConfig, num_blocks: int) -> list[int]:
    """The set C of cached block indices for a cache config on a backbone (METHOD.md "The caching baseline").

    Args:
        config: the cache settings (`location`, c = `num_cached`).
        num_blocks: N, the backbone's depth.

    Returns:
        c sorted, 0-based block indices.

    Raises:
        ILFConfigError: c > N.

    Example:
        ```py
        cached_block_indices(CacheConfig("outer", 4, 2), 28)  # [0, 1, 26, 27]
        ```
    """
    config.validate(num_blocks)
    n, c = num_blocks, config.num_cached
    if c == 0:
        return []
    if config.location == "first":
        idx = range(c)
    elif config.location == "last":
        idx = range(n - c, n)
    elif config.location == "outer":
        head = c - c // 2  # c/2 first, c/2 last (the extra one first when c is odd)
        idx = list(range(head)) + list(range(n - c // 2, n))
    elif config.location == "inner":
        start = (n - c) // 2
        idx = range(start, start + c)
    else:  # alternating: c evenly spaced indices
        idx = sorted({int(i * n / c) for i in range(c)})
    return list(idx)

