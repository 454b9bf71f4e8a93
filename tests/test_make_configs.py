"""scripts/make_configs.py documents where every number of the built-in configs comes from: it must
still write exactly the committed files, or the documentation and the configs have drifted apart."""

from pathlib import Path

from repo_scripts import ROOT, load_script

CONFIGS = ROOT / "src" / "btkd" / "configs"
HAND_WRITTEN = {"imagenet"}  # written by hand: no recipe to derive them from


def yaml_files(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*.yaml"))
            if p.relative_to(root).parts[0] not in HAND_WRITTEN}


def test_the_generator_writes_exactly_the_committed_configs(tmp_path, monkeypatch):
    make_configs = load_script("scripts/make_configs.py")
    for name, folder in (("ROOT", "cifar100"), ("FASHION", "fashion_mnist"), ("CIFAR10", "cifar10")):
        assert getattr(make_configs, name) == CONFIGS / folder
        monkeypatch.setattr(make_configs, name, tmp_path / folder)
    make_configs.main()
    written, committed = yaml_files(tmp_path), yaml_files(CONFIGS)
    assert len(written) > 200
    assert sorted(set(committed) - set(written)) == [], "committed configs the generator does not write"
    assert sorted(set(written) - set(committed)) == [], "configs the generator writes that are not committed"
    changed = [name for name in written if written[name] != committed[name]]
    assert changed == [], "run `python scripts/make_configs.py` and commit, or fix the generator"
