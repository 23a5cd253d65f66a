"""Hugging Face Hub ids (``deepmind/language-perceiver``) -> a local directory.

Resolution goes through ``huggingface_hub`` (the optional extra ``[hub]``) and its local
cache: ``HF_HUB_CACHE`` (else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``). With
``HF_HUB_OFFLINE=1`` only the cache is used, and an id that is not there is an error
saying how to get it. Both variables are read at every call (not when
``huggingface_hub`` is imported), so a test or a notebook can point them elsewhere.

Only the files a Perceiver directory needs are fetched: ``config.json`` and the weights
(``model.safetensors``, else ``pytorch_model.bin``). Conversion of the directory is the
business of :mod:`perceptio.checkpoints`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

# owner/name, as the Hub spells repository ids (an optional @revision after it)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
FILES = ["config.json", "*.safetensors", "pytorch_model.bin"]


def is_hub_id(name: str | os.PathLike) -> bool:
    """Whether ``name`` reads as a Hub id and is not an existing local path."""
    text = str(name)
    return bool(HUB_ID.match(text)) and not Path(text).expanduser().exists()


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def cache_dir() -> str | None:
    """The Hub cache from the environment at call time (None: huggingface_hub's default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return str(Path(os.environ["HF_HOME"]) / "hub")
    return None


def hub_directory(hub_id: str) -> Path:
    """The local snapshot of ``hub_id`` (``owner/name`` or ``owner/name@revision``),
    downloaded into the cache unless ``HF_HUB_OFFLINE=1``."""
    try:
        import huggingface_hub
        from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise ImportError(f"{hub_id!r} is a Hugging Face Hub id; resolving it needs huggingface_hub: "
                          "pip install 'perceptio[hub]' (or pass a local directory)") from None
    repo, _, revision = hub_id.partition("@")
    where = cache_dir() or "the default Hugging Face cache"
    try:
        path = huggingface_hub.snapshot_download(repo, revision=revision or None, cache_dir=cache_dir(),
                                                 allow_patterns=FILES, local_files_only=offline())
    except (LocalEntryNotFoundError, EntryNotFoundError) as e:
        if offline():
            raise FileNotFoundError(
                f"{hub_id}: not in the Hugging Face cache ({where}) and HF_HUB_OFFLINE=1; download it once with "
                f"`huggingface-cli download {repo}` (or `hf download {repo}`) on a machine with network access "
                "and copy the cache, or unset HF_HUB_OFFLINE"
            ) from None
        raise FileNotFoundError(f"{hub_id}: could not be downloaded into {where} ({type(e).__name__}: {e})") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{hub_id}: no such repository on the Hugging Face Hub (or it is private: "
                                "log in with `huggingface-cli login`)") from None
    return Path(path)
