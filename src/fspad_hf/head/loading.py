"""Safe loading of draft-head folders: JSON config + safetensors weights only.

A head folder is data, never code: `FSPADDraftModel.from_pretrained` reads `config.json` and
`model.safetensors` (or a sharded safetensors index) and nothing else. Pickle checkpoints
(`pytorch_model.bin`, `*.pt`, ...) are refused because unpickling can execute arbitrary code, and no
`trust_remote_code` is needed or used. The checks here run before transformers touches the files, so
a broken folder gives an error that names the file and the fix.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from safetensors import SafetensorError

from ..compat import load_kwargs
from ..integrity import CorruptCheckpointError, check_safetensors_file, read_json

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_INDEX_NAME = "model.safetensors.index.json"
INT8_WEIGHTS_NAME = "model.int8.safetensors"  # int8 storage, see fspad_hf.head.storage
INT8_INDEX_NAME = "model.int8.safetensors.index.json"  # int8 storage in shards
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")

_SAVE_HINT = "Save the head again with head.save_pretrained(folder) (it writes config.json + model.safetensors)."


# head_kind -> "module:Class" of the modeling class that kind's folders load into (imported on first use, so
# this module needs no import of the modeling modules). `FSPADDraftModel.from_pretrained` dispatches by it.
HEAD_CLASSES: dict[str, str] = {
    "fspad": "fspad_hf.head.modeling:FSPADDraftModel",
    "eagle3": "fspad_hf.head.eagle3:Eagle3DraftModel",
}
HUB_CONFIG_KWARGS = ("revision", "subfolder", "token", "cache_dir", "local_files_only", "force_download")


def head_class(kind: str) -> type:
    """The modeling class registered for head kind `kind` (`HEAD_CLASSES`)."""
    import importlib

    if kind not in HEAD_CLASSES:
        raise ValueError(f"Unknown head kind '{kind}' (known: {sorted(HEAD_CLASSES)}).")
    module, name = HEAD_CLASSES[kind].split(":")
    return getattr(importlib.import_module(module), name)


def _head_kind_of(cls, source, kwargs: dict) -> str:
    """The `head_kind` recorded in the config of `source` (a local folder or a Hub repo id)."""
    if kwargs.get("config") is not None:
        return getattr(kwargs["config"], "head_kind", "fspad")
    folder = os.path.join(str(source), kwargs.get("subfolder") or "")
    if os.path.isdir(folder):
        return read_json(Path(folder) / CONFIG_NAME).get("head_kind", "fspad")
    try:
        config_dict, _ = cls.config_class.get_config_dict(str(source), **{k: kwargs[k] for k in HUB_CONFIG_KWARGS if k in kwargs})
    except OSError:  # unreachable or missing repo: transformers' loader below reports it in its own words
        return "fspad"
    return config_dict.get("head_kind", "fspad")


def _variant_name(name: str, variant: str | None) -> str:
    """`model.safetensors` -> `model.<variant>.safetensors` (transformers' naming)."""
    if not variant:
        return name
    stem, ext = name.split(".", 1)
    return f"{stem}.{variant}.{ext}"


def check_head_config(path: Path) -> None:
    """The folder's `config.json` must describe an FSPAD head built for a target."""
    config = read_json(path)
    if config.get("model_type") not in (None, "fspad"):
        raise ValueError(
            f"{path} describes a '{config.get('model_type')}' model, not an FSPAD draft head (model_type 'fspad'). "
            "Load target models with AutoModelForCausalLM; load heads saved by FSPADDraftModel.save_pretrained."
        )
    if config.get("auto_map"):
        logger.warning("%s has an 'auto_map' (remote code) entry; FSPADDraftModel ignores it and runs no code from the folder.", path)
    kind = config.get("head_kind", "fspad")
    if kind not in HEAD_CLASSES:
        raise ValueError(f"{path} describes a head of kind '{kind}', which this fspad-hf does not know (known: "
                         f"{sorted(HEAD_CLASSES)}); upgrade fspad-hf.")
    if kind != "fspad":  # e.g. EAGLE-3: the layer is built from the head's own layer config
        if not isinstance(config.get("draft_layer_config"), dict):
            raise ValueError(f"{path} is an '{kind}' head without 'draft_layer_config'; convert it again with "
                             "fspad_hf.interop.load_eagle3 (fspad-hf convert --from eagle3).")
        return
    if not isinstance(config.get("target_config"), dict):
        raise ValueError(
            f"{path} has no 'target_config' (the target's text config the head's layers are built from), so the "
            "head cannot be constructed. Rebuild the head with FSPADDraftModel.from_target(target) and save it again."
        )


def weights_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors files `from_pretrained` will read (single file, or every file of the index)."""
    single = folder / _variant_name(SAFE_WEIGHTS_NAME, variant)
    if single.is_file():
        return [single]
    index = folder / _variant_name(SAFE_INDEX_NAME, variant)
    if index.is_file():
        return _index_files(index)
    return int8_weights_files(folder) if variant is None else []


def _index_files(index: Path) -> list[Path]:
    """The weight files a safetensors index lists (each must exist next to it)."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CorruptCheckpointError(f"{index} has no 'weight_map'. {_SAVE_HINT}")
    files = [index.parent / name for name in sorted(set(weight_map.values()))]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{index} lists weight files that are missing from {index.parent}: {missing}.")
    return files


def int8_weights_files(folder: Path) -> list[Path]:
    """The int8 storage of a bundled head (fspad_hf.head.storage): one file, or the shards of its index."""
    single, index = folder / INT8_WEIGHTS_NAME, folder / INT8_INDEX_NAME
    if single.is_file():
        return [single]
    return _index_files(index) if index.is_file() else []


def looks_like_missing_local_path(source: str | os.PathLike) -> bool:
    """A path that cannot be a Hub repo id ("owner/name") and does not exist locally."""
    text = str(source)
    if os.path.exists(text):
        return False
    return isinstance(source, os.PathLike) or text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", "")


def check_head_folder(folder: str | os.PathLike, variant: str | None = None, need_config: bool = True) -> list[Path]:
    """Check a local head folder before loading: config present and sane, safetensors weights readable.
    Returns the weights files that will be read.

    Raises:
        FileNotFoundError: no `config.json` (when `need_config`) or no weights at all.
        ValueError: only pickle weights are present (refused), or the config is not an FSPAD head.
        CorruptCheckpointError: a config/weights file is corrupt or truncated.
    """
    folder = Path(folder)
    config = folder / CONFIG_NAME
    if need_config:
        if not config.is_file():
            raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}, so it is not a saved FSPAD head. {_SAVE_HINT}")
        check_head_config(config)
    files = weights_files(folder, variant)
    pickles = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(PICKLE_SUFFIXES))
    if not files:
        if pickles:
            raise ValueError(
                f"{folder} holds only pickle checkpoint(s) {pickles}; fspad_hf loads heads from safetensors only, "
                "because unpickling can run arbitrary code. If you trust the file, convert it yourself: "
                "state = torch.load(path, weights_only=True); head.load_state_dict(state); head.save_pretrained(folder)."
            )
        raise FileNotFoundError(
            f"{folder} has no weights file ({_variant_name(SAFE_WEIGHTS_NAME, variant)} or "
            f"{_variant_name(SAFE_INDEX_NAME, variant)}). {_SAVE_HINT}"
        )
    if pickles:
        logger.info("Ignoring pickle file(s) %s in %s: only safetensors weights are loaded.", pickles, folder)
    for path in files:
        check_safetensors_file(path, _SAVE_HINT)
    return files


def load_head(cls, base_from_pretrained, source, *model_args, **kwargs):
    """`FSPADDraftModel.from_pretrained`: short names of shipped heads, local folders (checked first, so a
    broken file gives an error naming it), int8 storage, or a Hub repo id (transformers' loader).

    `use_safetensors=True` is forced: pickle checkpoints are never read.
    """
    from .shipped import looks_like_short_name, resolve_shipped
    from .storage import load_int8

    if kwargs.get("use_safetensors") is False:
        raise ValueError("FSPAD heads load from safetensors only (use_safetensors=False would allow pickle files).")
    kwargs["use_safetensors"] = True
    if source is not None and looks_like_short_name(source):
        source = resolve_shipped(str(source))
    if source is not None and looks_like_missing_local_path(source):
        raise FileNotFoundError(f"Head folder not found: {source} (neither a local folder nor a Hub repo id 'owner/name').")
    if source is not None and os.path.isdir(os.path.join(str(source), kwargs.get("subfolder") or "")):
        folder = os.path.join(str(source), kwargs.get("subfolder") or "")
        files = check_head_folder(folder, variant=kwargs.get("variant"), need_config=kwargs.get("config") is None)
    if source is not None:  # the folder's head kind picks the class (e.g. EAGLE-3 -> Eagle3DraftModel)
        wanted = head_class(_head_kind_of(cls, source, kwargs))
        if wanted is not cls:
            if not issubclass(wanted, cls):
                raise ValueError(f"'{source}' holds a {wanted.__name__} head; load it with {wanted.__name__}.from_pretrained "
                                 "(or FSPADDraftModel.from_pretrained, which picks the class).")
            return wanted.from_pretrained(source, *model_args, **kwargs)
    if source is not None and os.path.isdir(os.path.join(str(source), kwargs.get("subfolder") or "")):
        if kwargs.get("variant") is None and files == int8_weights_files(Path(folder)):
            return load_int8(cls, folder, kwargs.get("dtype", kwargs.get("torch_dtype")))
    try:
        return base_from_pretrained(source, *model_args, **load_kwargs(kwargs))
    except SafetensorError as error:  # e.g. a Hub download cut short
        raise CorruptCheckpointError(
            f"The safetensors weights of '{source}' are corrupt or truncated: {error}. Download them again."
        ) from error


__all__ = ["CorruptCheckpointError", "HEAD_CLASSES", "head_class", "check_head_folder", "looks_like_missing_local_path", "check_head_config",
           "weights_files", "load_head", "PICKLE_SUFFIXES"]
