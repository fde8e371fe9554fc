"""The documentation cannot drift: docs/config.md is the schema's reference as generated, every
schema key is described, and every link of README.md and docs/ reaches a file and heading."""
from __future__ import annotations

import re

from sslprune.control import reference

from conftest import ROOT

REGENERATE = "python -m sslprune.control.reference > docs/config.md"


def test_config_reference_is_the_generated_text():
    written = (ROOT / "docs" / "config.md").read_text()
    assert written == reference.text(), f"docs/config.md is stale: regenerate it with `{REGENERATE}`"


def test_every_schema_key_has_a_description_and_every_description_a_key():
    paths = [k.path for k in reference.keys()]
    assert len(paths) == len(set(paths))
    undescribed = [p for p in paths if not reference.DESCRIPTIONS.get(p, "").strip()]
    assert not undescribed, f"schema keys without a description in sslprune/control/reference.py: {undescribed}"
    gone = sorted(set(reference.DESCRIPTIONS) - set(paths))
    assert not gone, f"descriptions of keys the schema no longer has: {gone}"
    assert not set(reference.ALLOWED) - set(paths)
    assert all("\n" not in d and "|" not in d for d in reference.DESCRIPTIONS.values())


def test_reference_rows_carry_the_schemas_type_default_and_allowed_values():
    rows = {line.split(" | ")[0][3:-1]: line for line in reference.text().splitlines() if line.startswith("| `")}
    assert rows["model.name"] == (
        "| `model.name` | str | `\"resnet_small\"` | `resnet_small`, `resnet18_cifar`, `resnet50`, `alexnet`, "
        "`alexnet_cifar`, `vgg19` | architecture; `alexnet_cifar` is AlexNet's layers for 8-32 px images, "
        "`vgg19` has one FC classifier |")
    assert rows["data.train_limit"].startswith("| `data.train_limit` | int or null | `null` |  | ")
    assert rows["retrain.schemes"].startswith(
        '| `retrain.schemes` | list of str | `["winning_ticket", "random_reinit", "random"]` | `winning_ticket`, ')
    # a data set or an optimisation met again points at its first section instead of repeating it
    assert rows["probe.datasets"].startswith("| `probe.datasets` | list of group (keys of `data`) | `[]` |")
    assert rows["retrain.optim"].startswith("| `retrain.optim` | group (keys of `signals.<name>.optim`) |")
    assert "`retrain.data.name`" not in rows and "`signals.<name>.data.root`" not in rows
    assert rows["launcher.single.cpus_per_task"].startswith("| `launcher.single.cpus_per_task` | int or null | `null`")


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_anchor(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_every_link_of_the_readme_and_docs_reaches_a_file_and_heading():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue  # an external address
            file, _, anchor = target.partition("#")
            dest = (page.parent / file).resolve() if file else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and (dest.suffix != ".md" or anchor not in _anchors(dest)):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
    assert len(pages) >= 5  # README, config, development, reproduction, store


def test_readme_is_a_manual_of_about_three_hundred_lines():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 310
