"""Reading a config file: one YAML (or JSON) mapping, or one `ConfigFileError` line naming the file, what is
wrong and where (line, column).

Workflow configs (`ilf.harness.workflow_config.load_workflow_config`) and training YAMLs
(`ilf.train.load_train_config`) are both read by `read_config`, so every `ilf` command that takes `--config`
fails the same way on a syntax error, a tab, a list or a scalar where a mapping belongs, or an empty file;
`file_error` turns a field's `ILFConfigError` into the same one line, with the field's line and column.
"""
from __future__ import annotations

import re
import reprlib
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigFileError, ILFConfigError

_KIND = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number",
         type(None): "null"}
WORKFLOW_KEYS = "workflow keys (name, world, out_dir, seed, backbones, rows, ...)"
TRAINING_FIELDS = "training fields (backbone, feedback, data, optim, iterations or epochs, ...)"
_TOKEN = re.compile(r"\[([^\]]*)\]|([^.\[\]]+)")
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxstring, _SHORT.maxother = 2, 3, 3, 40, 40


def yaml_kind(value: Any) -> str:
    """What a parsed YAML value is, in words ("a mapping", "a list", "a string", ...)."""
    return next((name for t, name in _KIND.items() if type(value) is t), type(value).__name__)


class Shown(str):
    """A value as an error message shows it: shortened, without quotes (`{'a': 1, ...}`)."""

    def __new__(cls, value: Any) -> "Shown":
        return super().__new__(cls, _SHORT.repr(value))

    def __repr__(self) -> str:
        return str(self)


def read_config(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping a YAML (or JSON) config file holds.

    Args:
        path: the file.
        what: its top-level keys in words, for the message (e.g. `"training fields (backbone, data, ...)"`).

    Returns:
        The parsed mapping.

    Raises:
        FileNotFoundError: there is no such file.
        ConfigFileError: the file cannot be read, is not UTF-8, is not valid YAML, is empty or is not a mapping;
            one line naming the file and, where known, the line and column.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigFileError(path, f"not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigFileError(path, f"cannot be read: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        raise _yaml_error(path, err) from None
    except yaml.YAMLError as err:
        raise ConfigFileError(path, f"invalid YAML: {' '.join(str(err).split())}") from None
    if data is None:
        raise ConfigFileError(path, f"the file is empty: expected a mapping of {what}")
    if not isinstance(data, dict):
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raise ConfigFileError(path, f"expected a mapping of {what}, not {yaml_kind(data)}",
                              node.start_mark.line + 1, node.start_mark.column + 1)
    return data


def _yaml_error(path: Path, err: yaml.MarkedYAMLError) -> ConfigFileError:
    mark = err.problem_mark or err.context_mark
    problem = " ".join(str(err.problem or err.context).split())
    if "'\\t'" in problem:
        what = "invalid YAML: a tab character (YAML indents with spaces only)"
    else:
        what = f"invalid YAML: {problem}"
        ctx = err.context_mark
        if err.context and err.problem and ctx is not None and (ctx.line, ctx.column) != (mark.line, mark.column):
            what += f", {' '.join(err.context.split())} started at line {ctx.line + 1}, column {ctx.column + 1}"
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (None, None)
    return ConfigFileError(path, what, line, column)


def locate(path: str | Path, field: str) -> tuple[int, int] | None:
    """(line, column), 1-based, of a field like `rows[3].cache.num_cached` or `rows[t1_ilf].steps` in a file.

    A list item is found by index, by its `name`, or by the name template it was expanded from; a dotted key
    (`feedback.loop_end` in `overrides`) as one key. When the whole path is not in the file (a value a template
    row takes from `defaults` or a variant, a key that is missing), the deepest part that is. None when the
    file cannot be parsed.
    """
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    if node is None:
        return None
    keys = [m.group(1) if m.group(1) is not None else m.group(2) for m in _TOKEN.finditer(field)]
    mark, i = node.start_mark, 0
    while i < len(keys):
        if isinstance(node, yaml.MappingNode):
            hit = None
            for j in range(i + 1, len(keys) + 1):
                name = ".".join(keys[i:j])
                hit = next(((k, v) for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == name), None)
                if hit is not None:
                    break
            if hit is None:
                break
            (key_node, node), i = hit, j
            mark = key_node.start_mark
        elif isinstance(node, yaml.SequenceNode):
            key, items = keys[i], node.value
            if key.isdigit():
                item = items[int(key)] if int(key) < len(items) else None
            else:  # a row by its name; else the template (`name: "t6_{location}"`) that made it
                names = [(it, _scalar(it, "name")) for it in items]
                item = next((it for it, n in names if n == key), None) or next(
                    (it for it, n in names if n is not None and "{" in n and _made_from(n, key)), None)
            if item is None:
                break
            node, i, mark = item, i + 1, item.start_mark
        else:
            break
    return mark.line + 1, mark.column + 1


def _scalar(node: yaml.Node, key: str) -> str | None:
    """The scalar value of `key` in a mapping node (None when absent or not a scalar)."""
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode) and k.value == key and isinstance(v, yaml.ScalarNode):
                return v.value
    return None


def _made_from(template: str, name: str) -> bool:
    """Whether a `{placeholder}` name template can format to `name`."""
    parts = re.split(r"(\{[^{}]*\})", template)
    return re.fullmatch("".join(".+?" if p.startswith("{") else re.escape(p) for p in parts), name) is not None


def file_error(path: str | Path, err: ILFConfigError) -> ConfigFileError:
    """`err` (a field of the file's content) as one line naming the file and the field's line and column."""
    if isinstance(err, ConfigFileError):  # already names its file (e.g. a training YAML a workflow config names)
        return err
    line, column = locate(path, err.field) or (None, None)
    return ConfigFileError(path, str(err), line, column, err.field, err.value, err.allowed)
