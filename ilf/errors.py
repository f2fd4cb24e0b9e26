"""Exceptions with messages that say what is wrong and what is allowed.

Every user error is a `ValueError` (or a subclass) so callers can catch one type; missing
weights or data raise `MissingAssetError`, a `FileNotFoundError` whose message is one paragraph
naming the item, where it was looked for and the command that fetches it.
"""
from __future__ import annotations

from typing import Any, Iterable


class ILFConfigError(ValueError):
    """A configuration field has a value outside what is allowed (a `ValueError`).

    The message is one line: `<field>=<value!r> is not allowed: expected <allowed>`.

    Args:
        field: the field's name (dotted for nested settings, e.g. `"magcache.num_inference_steps"`).
        value: the value given.
        allowed: what is allowed, as text, or the allowed values (shown as "one of ...").

    Example:
        ```py
        try:
            ilf.FeedbackConfig(loop_start=8, loop_end=30).validate(28)
        except ilf.ILFConfigError as err:
            print(err.field, err.value)  # loop_end 30
        ```
    """

    def __init__(self, field: str, value: Any, allowed: str | Iterable[Any]):
        if not isinstance(allowed, str):
            allowed = "one of " + ", ".join(repr(a) for a in allowed)
        self.field, self.value, self.allowed = field, value, allowed
        super().__init__(f"{field}={value!r} is not allowed: expected {allowed}")


class UnsupportedModelError(ValueError):
    """The target is not a model class (or pipeline) that ILF knows how to attach to (a `ValueError`).

    The message names the target's class and what is supported (the families in `ilf/adapters/`).

    Example:
        ```py
        try:
            ilf.apply_cache(torch.nn.Linear(4, 4))
        except ilf.UnsupportedModelError as err:
            print(err)  # target=Linear is not supported: expected a DiTTransformer2DModel, ...
        ```
    """


class AlreadyAttachedError(ValueError):
    """A second method was applied to a model that already carries one (a `ValueError`).

    Also raised when ILF or the cache meets a stateful diffusers hook inside `transformer_blocks` (e.g. a
    first-block cache), which assumes one call per block per step; the message names both.

    Example:
        ```py
        ilf.apply_feedback(pipe)
        try:
            ilf.apply_cache(pipe)
        except ilf.AlreadyAttachedError:
            ilf.remove(pipe)
            ilf.apply_cache(pipe)
        ```
    """


class CheckpointError(ValueError):
    """A checkpoint is corrupted or does not match the model it is loaded into (a `ValueError`).

    The message names the file and what differs (backbone class, depth, block shapes, the weights' sha256).

    Example:
        ```py
        try:
            ilf.load_feedback(pipe, "runs/pixart/final")
        except ilf.CheckpointError as err:
            print(err)  # feedback checkpoint runs/pixart/final does not fit this backbone: number of blocks: ...
        ```
    """


class NonFiniteLossError(ValueError):
    """Training met a loss or gradient norm that is not finite (NaN or inf) and stopped (a `ValueError`).

    Raised by `ilf.train.train` before the optimizer step of the iteration it names, so the weights, the optimizer
    state and every checkpoint on disk stay those of the iterations before. The message is one line: the run, the
    iteration, which value is not finite, the last checkpoint, and what to change (usually a lower `optim.lr`, or
    `mixed_precision: no`) before `--resume-from` that checkpoint.

    Args:
        run: the training run's name.
        iteration: the iteration (1-based optimizer step) whose batch gave the value; it was not taken.
        what: `"loss"` or `"gradient norm"`.
        value: the value (NaN or +-inf).
        last_checkpoint: the iteration of the last checkpoint written, or `None` if there is none yet.

    Example:
        ```py
        try:
            ilf.train.train(config, "runs/x")
        except ilf.NonFiniteLossError as err:
            print(err.iteration, err.what)  # 37 loss
        ```
    """

    def __init__(self, run: str, iteration: int, what: str, value: float, last_checkpoint: int | None):
        self.run, self.iteration, self.what, self.value = run, iteration, what, value
        self.last_checkpoint = last_checkpoint
        resume = (f"the last checkpoint is iteration {last_checkpoint} (--resume-from it)" if last_checkpoint
                  else "no checkpoint was written yet")
        super().__init__(f"training run {run!r} stopped at iteration {iteration}: the {what} is {value} (not "
                         f"finite); the step was not taken and {resume}; lower optim.lr or set mixed_precision: no")


class MissingAssetError(FileNotFoundError):
    """Weights, prompts or reference data are not in the local cache (offline compute nodes).

    The message is one paragraph: the item, where it was looked for, and the command that fetches it
    (README "Offline compute nodes").

    Args:
        item: what is missing, e.g. `"weights of backbone 'dit-xl-2-256'"`.
        location: where it was looked for.
        fetch_command: the command that stores it in the ILF cache, e.g. `"ilf prefetch --backbone dit-xl-2-256"`.
        detail: more context, appended in parentheses.

    Example:
        ```py
        try:
            pipe = ilf.load_pipeline("dit-xl-2-256")
        except ilf.MissingAssetError as err:
            print(err.fetch_command)  # ilf prefetch --backbone dit-xl-2-256
        ```
    """

    def __init__(self, item: str, location: str, fetch_command: str, detail: str = ""):
        self.item, self.location, self.fetch_command = item, location, fetch_command
        msg = (
            f"{item} is not available locally (looked in {location}). "
            f"This machine does not download anything at run time: on a machine with internet access run "
            f"`{fetch_command}`, which stores it in the ILF cache (set ILF_CACHE, default ~/.cache/ilf; "
            f"Hugging Face weights go to ILF_CACHE/hf), then copy or mount that directory on this machine "
            f"and point ILF_CACHE at it."
        )
        if detail:
            msg += f" ({detail})"
        super().__init__(msg)


class MissingLatentsError(FileNotFoundError):
    """The precomputed latents `ilf train` reads are missing or incomplete (made locally by `ilf precompute`,
    never downloaded).

    Args:
        item: what is missing, e.g. `"meta.json of the precomputed latents"`.
        root: the latent folder (`data.latents_dir` or `--latents`).
        config: the training YAML, when the caller knows it (the command names it; `None` names a placeholder).
        resumes: whether a precompute run of the same config completes the folder (a missing shard).

    Example:
        ```py
        try:
            ilf.train.train(config, "runs/x")
        except ilf.errors.MissingLatentsError as err:
            print(err.with_config("configs/train/flux1_dev.yaml"))
        ```
    """

    def __init__(self, item: str, root: str, config: str | None = None, resumes: bool = False):
        self.item, self.root, self.config, self.resumes = item, root, config, resumes
        cmd = f"ilf precompute --config {config or 'YOUR_TRAIN.yaml'} --out {root}"
        super().__init__(f"{item} not found in {root}: make them first with `{cmd}`"
                         + (" (it resumes where it stopped)" if resumes else "") + ", or pass --latents DIR")

    def with_config(self, config: str) -> "MissingLatentsError":
        """The same error naming the training YAML in its command."""
        return MissingLatentsError(self.item, self.root, config, self.resumes)


class ConfigFileError(ILFConfigError):
    """A config file (a workflow config or a training YAML) is not a valid one.

    The message is one line: the file, what is wrong, and where (line, column) when the place is known,
    e.g. `configs/x.yaml: rows={'a': 1} is not allowed: expected a list (line 3, column 1)`.
    """

    def __init__(self, path: Any, what: str, line: int | None = None, column: int | None = None,
                 field: str = "config", value: Any = None, allowed: str = ""):
        where = f" (line {line}, column {column})" if line is not None else ""
        ValueError.__init__(self, f"{path}: {what}{where}")
        self.path, self.what, self.line, self.column = str(path), what, line, column
        self.field, self.value, self.allowed = field, value, allowed
