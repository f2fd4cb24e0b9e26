"""Dependencies: pyproject floors never cap or contradict the pins, the pins agree with what the pinned
packages declare, setup files install the same lists, and every command our messages name exists."""
import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
STACK = {"torch", "torchvision", "diffusers", "transformers", "huggingface-hub", "accelerate"}


def _requirements(path: Path) -> list[Requirement]:
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(Requirement(line))
    return out


def _pins() -> dict[str, str]:
    """name -> exact version pinned (==) in requirements.txt / requirements-nodeps.txt."""
    pins = {}
    for f in ("requirements.txt", "requirements-nodeps.txt"):
        for r in _requirements(ROOT / f):
            exact = [s.version for s in r.specifier if s.operator == "=="]
            if exact:
                pins[canonicalize_name(r.name)] = exact[0]
    return pins


def _pyproject_deps() -> list[Requirement]:
    return [Requirement(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]]


def test_pyproject_has_floors_only_and_they_admit_the_pins():
    pins = _pins()
    deps = _pyproject_deps()
    names = {canonicalize_name(r.name) for r in deps}
    assert {"torch", "diffusers", "transformers", "huggingface-hub"} <= names
    for r in deps:
        ops = {s.operator for s in r.specifier}
        assert ops == {">="}, f"{r}: pyproject states floors only (no cap, no exact pin), got {ops}"
        name = canonicalize_name(r.name)
        if name in pins:
            assert r.specifier.contains(pins[name], prereleases=True), f"{r} excludes the pin {name}=={pins[name]}"
        try:
            installed = version(r.name)
        except PackageNotFoundError:
            continue
        assert r.specifier.contains(installed, prereleases=True), f"{r} excludes the installed {installed}"


def test_pins_satisfy_what_the_pinned_packages_declare():
    """Every package of requirements.txt accepts our pins of what it depends on; the --no-deps packages
    accept our pins of the core stack (their other declared pins are why they are installed --no-deps)."""
    pins = _pins()
    nodeps = {canonicalize_name(r.name) for r in _requirements(ROOT / "requirements-nodeps.txt")}
    problems = []
    for pkg in pins:
        try:
            declared = requires(pkg) or []
        except PackageNotFoundError:
            continue
        for line in declared:
            dep = Requirement(line)
            if dep.marker is not None and not dep.marker.evaluate({"extra": ""}):
                continue
            name = canonicalize_name(dep.name)
            if name not in pins or (pkg in nodeps and name not in STACK):
                continue
            if not dep.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{pkg} needs {dep}, we pin {name}=={pins[name]}")
    assert not problems, problems


def test_setup_and_conda_install_the_same_lists():
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "-r requirements.txt" in setup
    assert re.search(r"--no-deps[^\n]*-r requirements-nodeps\.txt", setup)
    env = (ROOT / "environment.yml").read_text()
    assert "-r requirements.txt" in env and "requirements-nodeps.txt" in env
    py = re.search(r"python=(3\.\d+)", env).group(1)
    assert f"python{py}" in setup, "environment.yml and scripts/setup.sh use the same Python"


# ---------------------------------------------------------------- commands named in messages
_PROGRAMS_WITH_SUBCOMMANDS = ("ilf", "hf", "pip")
# a program name followed by a space and a word (bare names are path parts or dict keys, not commands)
_COMMAND = re.compile(r"(?<![\w./-])(?<!from )(?<!import )(ilf|hf|huggingface-cli|pip|snakemake|torchrun) +"
                      r"(--help|[a-z][a-z0-9_-]*)")


def _message_strings(path: Path) -> list[str]:
    """String literals of a module (f-string text included), docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def named_commands() -> set[tuple[str, str | None]]:
    """(program, sub-command or None) for every command a message in ilf/ names."""
    found = set()
    for path in sorted((ROOT / "ilf").rglob("*.py")):
        for text in _message_strings(path):
            for prog, sub in _COMMAND.findall(text):
                found.add((prog, sub if prog in _PROGRAMS_WITH_SUBCOMMANDS and sub != "--help" else None))
    return found


def test_messages_name_commands_of_the_pinned_versions():
    cmds = named_commands()
    assert ("ilf", "prefetch") in cmds and ("hf", "download") in cmds  # the scan sees our messages
    assert not [c for c in cmds if c[0] == "huggingface-cli"], "huggingface-hub >= 1 ships `hf`, not huggingface-cli"


@pytest.mark.parametrize("prog,sub", sorted(named_commands(), key=lambda c: (c[0], c[1] or "")))
def test_named_command_help_runs(prog, sub, capsys):
    args = [sub, "--help"] if sub else ["--help"]
    if prog == "ilf":  # this checkout's ilf, in process
        from ilf.cli import main

        with pytest.raises(SystemExit) as exit_info:
            main(args)
        assert exit_info.value.code == 0, f"`ilf {' '.join(args)}` failed"
        assert f"usage: ilf {sub or ''}".rstrip() in capsys.readouterr().out
        return
    exe = Path(sys.executable).parent / prog
    assert exe.exists(), f"`{prog}` is named in a message but not installed by the pinned requirements"
    res = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"`{prog} {' '.join(args)}`: {res.stderr[-2000:]}"
