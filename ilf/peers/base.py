"""What every peer shares: its config interface, its record on the model, and its removal.

A peer config (one dataclass per method) has `validate(num_blocks, num_steps)`, `to_dict()`,
`from_dict(d)` and `expected_block_forwards(num_blocks, num_steps)`: an int for a fixed (static)
budget, "dynamic" when the count is only known by counting at run time (`ilf.count_block_forwards`).
Each field's own range is declared beside it (`number`, `timestep_range`) and checked by `validate`,
which then runs the peer's `extra_checks` (across fields, against the backbone's depth and the steps).
Attaching a peer checks the model is free and leaves a `PeerState` as the model's record, as ILF and the
cache do (`ilf.attach.check_free`, `ilf.attach.set_record`); `ilf.remove` detaches it through the record.
"""
from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Self

if TYPE_CHECKING:
    from torch import nn

from ..errors import ILFConfigError


@dataclass
class PeerState:
    """What is attached to one transformer, and how to take it off again."""

    name: str
    config: Any
    undo: Callable[[], None]  # restores the model (and pipeline) exactly
    info: dict[str, Any] = field(default_factory=dict)  # e.g. MagCache's calibrated ratios

    @property
    def description(self) -> str:
        """The attached peer, for "already attached" errors."""
        return f"the peer {self.name}"

    def detach(self, model: nn.Module) -> None:
        """Restore the model (and pipeline) exactly (`ilf.remove`)."""
        self.undo()


class PeerConfig:
    """Mixin for the peer config dataclasses: dict round trip and the shared checks."""

    name: ClassVar[str] = ""
    source: ClassVar[str] = ""  # the library that implements it
    needs_guidance: ClassVar[bool] = False  # runs only on classifier-free-guidance batches (guidance_scale > 1)

    def validate(self, num_blocks: int | None = None, num_steps: int | None = None) -> Self:
        """Check every field's declared range, then `extra_checks`.

        Args:
            num_blocks: the backbone's depth N, if known.
            num_steps: the steps of the runs, if known.

        Returns:
            The config itself.

        Raises:
            ILFConfigError: a setting is out of range, naming it as `<peer>.<field>`.
        """
        for f in dataclasses.fields(self):  # type: ignore[arg-type]  (the subclasses are dataclasses)
            check = f.metadata.get("check")
            if check is not None:
                check(f"{self.name}.{f.name}", getattr(self, f.name))
        self.extra_checks(num_blocks, num_steps)
        return self

    def extra_checks(self, num_blocks: int | None, num_steps: int | None) -> None:
        """Checks beyond each field's own range (none by default)."""

    def expected_block_forwards(self, num_blocks: int, num_steps: int) -> int | str:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "PeerConfig":
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ILFConfigError(f"{cls.name}.{unknown[0]}", d[unknown[0]], f"a {cls.__name__} field: {sorted(known)}")
        for k, v in d.items():  # YAML gives lists where the dataclasses keep tuples
            if isinstance(v, list) and isinstance(getattr(cls, k, None), tuple):
                d[k] = tuple(v)
        return cls(**d).validate()


def number(default: Any, low: float, integer: bool = False, none_ok: bool = False, high: float | None = None) -> Any:
    """A dataclass field holding a number in [low, high] (an int if `integer`, or None if `none_ok`), checked by
    `PeerConfig.validate` (see `check_number`)."""
    check = functools.partial(check_number, low=low, integer=integer, none_ok=none_ok, high=high)
    return field(default=default, metadata={"check": check})


def timestep_range(default: tuple) -> Any:
    """A dataclass field holding a timestep range [low, high] with low < high, checked by `PeerConfig.validate`."""
    return field(default=default, metadata={"check": check_range})


def check_range(name: str, r: Any) -> None:
    """Raise ILFConfigError unless `r` is [low, high] timesteps (numbers) with low < high."""
    if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(isinstance(x, (int, float)) for x in r) and r[0] < r[1]):
        raise ILFConfigError(name, r, "[low, high] timesteps with low < high")


def check_number(name: str, value: Any, low: float, integer: bool = False, none_ok: bool = False,
                 high: float | None = None) -> None:
    """Raise ILFConfigError unless `value` is a number (int if `integer`) in [low, high] (or None if allowed)."""
    if value is None and none_ok:
        return
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        what = "an integer" if integer else "a number"
        rng = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ILFConfigError(name, value, f"{what} {rng}" + (" or null" if none_ok else ""))


def get_peer(model: nn.Module) -> PeerState | None:
    """The attached peer's record, or None (also when ILF, the cache or another method is attached)."""
    from ..attach import get_record

    record = get_record(model)
    return record if isinstance(record, PeerState) else None
