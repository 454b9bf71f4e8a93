"""docs/API.md is generated from the code (scripts/make_api_reference.py): it is current, every public
symbol in it has a docstring, and it renders the same on every machine and Python."""

import importlib
import os
import sys
import tempfile
from pathlib import Path

import pytest

from repo_scripts import load_script


@pytest.fixture(scope="module")
def ref():
    return load_script("scripts/make_api_reference.py")


@pytest.fixture(scope="module")
def text(ref):
    return ref.render()


def test_the_api_reference_is_generated_from_the_code(ref, text):
    committed = ref.OUT.read_text() if ref.OUT.is_file() else ""
    assert committed == text, f"docs/API.md differs from the docstrings and signatures: run `{ref.COMMAND}`"


def test_a_changed_docstring_makes_the_committed_reference_stale(ref, monkeypatch, capsys):
    from btkd.engine import Trainer

    assert ref.main(["--check"]) == 0
    monkeypatch.setattr(Trainer.fit, "__doc__", Trainer.fit.__doc__ + " Changed.")
    assert ref.main(["--check"]) == 1
    assert "docs/API.md is stale" in capsys.readouterr().err


def test_every_public_symbol_and_member_has_a_docstring(ref, text):
    entries = ref.all_entries()
    assert len(entries) > 120
    assert [e.qualname for e in entries if not e.doc.strip()] == []
    for e in entries:  # each with its heading and its docstring's first line
        assert f"`{e.qualname}`\n" in text, e.qualname
        first = e.doc.splitlines()[0].split("``")[0].split("<")[0]
        assert first in text, e.qualname


def test_every_name_in_a_documented_modules_all_is_in_the_reference(ref, text):
    for modname, _ in ref.MODULES:
        for name in importlib.import_module(modname).__all__:
            assert f"`{modname}.{name}`" in text or f"[`{name}`](#" in text, f"{modname}.{name}"
    for name in ("BTKD", "Trainer", "Grid", "load_config", "register_model", "build_model", "DATASETS", "Split",
                 "run_bench", "resolve_checkpoint"):
        assert f".{name}`\n\n```python\n" in text, name
    assert "| `small` | `convnet`, `mlp` |" in text  # the model registry, by family
    assert '"synthetic": load_synthetic,' in text  # DATASETS as its source writes it
    assert "[`btkd.config`](#btkdconfig)" in text and "## `btkd.config`" in text  # contents link to headings


def test_a_missing_docstring_stops_the_script(ref, monkeypatch):
    from btkd.engine import Trainer

    monkeypatch.setattr(Trainer.fit, "__doc__", None)
    with pytest.raises(ref.CannotRender, match="btkd.engine.Trainer.fit"):
        ref.render()
    assert ref.main(["--check"]) == 2


def test_signatures_render_stably(ref, text):
    # annotations as written in the source, defaults by value: never an object's address
    assert "class BTKD(\n    host: Union[str, HostLoss] = 'kd'," in text
    assert "    echo: Callable[[str], None] = print,\n" in text  # a function default by its name
    assert "    data: DataConfig = DataConfig(),\n" in text and "    imports: List[str] = [],\n" in text
    assert "beta: Union[float, Tensor] = float('nan')," in text
    assert " at 0x" not in text and "<function" not in text and "<factory>" not in text
    with pytest.raises(ref.CannotRender, match="no stable text"):
        ref._value(object(), "f(x=...)")
    assert ref._value((0.5, "a", None, [1]), "f") == "(0.5, 'a', None, [1])"


def test_the_reference_names_no_machine_path_and_renders_the_same_twice(ref, text):
    assert ref.render() == text
    here = {str(Path(ref.ROOT).resolve()), str(Path.home()), os.getcwd(), tempfile.gettempdir(), sys.prefix}
    for path in (here - {"", "/"}) | {"site-packages"}:
        assert path not in text, path


def test_docstrings_become_markdown(ref):
    doc = ("Summary.\n\nArgs:\n    a, b: the pair,\n        on two lines.\n    **rest: the rest.\n\n"
           "A ``<tag>`` and a <tag>, ``code\nover lines``.\n\nExample::\n\n    x = 1 < 2\n")
    md = ref._markdown(doc)
    assert "- `a`, `b`: the pair, on two lines.\n- `**rest`: the rest." in md
    assert "A `<tag>` and a &lt;tag>, `code\nover lines`." in md
    assert "Example:\n\n```\nx = 1 < 2\n```" in md


def test_the_registries_list_btkd_s_own_entries_only(ref, text, monkeypatch):
    from btkd.models import MODELS

    monkeypatch.setitem(MODELS, "users_model", lambda num_classes=10: None)  # a user's registration
    assert ref.render() == text
