"""Every name `import ilf` exports is documented in diffusers' docstring form."""
import inspect

import pytest

import ilf

CONSTANTS = {"BACKBONES"}  # a dict: documented by its `#:` comment in ilf/registry.py


@pytest.mark.parametrize("name", sorted(set(ilf.__all__) - CONSTANTS))
def test_public_name_has_args_returns_raises_and_example_sections(name):
    obj = getattr(ilf, name)
    doc = inspect.getdoc(obj) or ""
    assert "Example:" in doc and "```py" in doc, f"{name}: no Example section"
    if inspect.isclass(obj) and issubclass(obj, Exception):
        params = [p for p in inspect.signature(obj.__init__).parameters if p not in ("self", "args", "kwargs")]
    else:
        params = [p for p in inspect.signature(obj).parameters if p not in ("self", "args", "kwargs")]
    if params:
        section = doc.split("Args:", 1)[-1] if "Args:" in doc else ""
        missing = [p for p in params if f"{p}" not in section]
        assert "Args:" in doc and not missing, f"{name}: Args section missing {missing or 'entirely'}"
    if inspect.isfunction(obj) or inspect.isfunction(getattr(obj, "__wrapped__", None)):
        returns = inspect.signature(obj).return_annotation
        if returns not in ("None", None):
            assert "Returns:" in doc, f"{name}: no Returns section"
        assert "Raises:" in doc, f"{name}: no Raises section"
