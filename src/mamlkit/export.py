"""Export a run's meta-learned initialisation for use outside mamlkit.

A checkpoint holds the whole learner (``model.``-prefixed keys, plus any parameters the algorithm
learns itself, such as Meta-SGD's rates) and the optimizer and random states needed to resume.
What a user deploys or fine-tunes elsewhere is the model's initialisation alone, under the
model's own parameter names:

- ``safetensors``: one ``model.safetensors`` file, loadable with
  ``model.load_state_dict(safetensors.torch.load_file(path))`` into a fresh instance of the model;
- ``hf``: a Hugging Face ``save_pretrained`` folder, for a ``transformers`` model whose
  architecture is described by a ``config.json`` (``--hf-config``), loadable with
  ``from_pretrained``.

``mamlkit export RUN --format safetensors|hf`` runs :func:`export_run`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mamlkit.checkpoint import load_checkpoint

FORMATS = ("safetensors", "hf")
MODEL_PREFIX = "model."


def model_state(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The model's parameters and buffers from a mamlkit checkpoint, under plain names."""
    learner = checkpoint.get("learner")
    if not isinstance(learner, dict):
        raise ValueError("The checkpoint holds no learner state; export a checkpoint written by "
                         "mamlkit train (checkpoints/best.pt or last.pt).")
    state = {k[len(MODEL_PREFIX):]: v for k, v in learner.items() if k.startswith(MODEL_PREFIX)}
    if not state:
        raise ValueError("The checkpoint's learner has no model.* entries to export.")
    return state


def find_checkpoint(run_dir: Path, name: str = "best.pt") -> Path:
    """The checkpoint of the run's meta-learned model: the one ``checkpoints/NAME`` below
    ``run_dir`` that is not a baseline's (``pretrained/``); ``ValueError`` listing the
    candidates when there are several."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"Run directory {run_dir} does not exist; pass the --run-dir of a "
                                "training run.")
    found = [p for p in sorted(run_dir.glob(f"**/checkpoints/{name}"))
             if p.parent.parent.name != "pretrained"]
    if not found:
        raise FileNotFoundError(f"No checkpoints/{name} below {run_dir}: it is not a finished "
                                "mamlkit run (or pass --checkpoint PATH).")
    if len(found) > 1:
        listed = ", ".join(str(p) for p in found)
        raise ValueError(f"{run_dir} holds several meta-learned checkpoints ({listed}); pick one "
                         "with --checkpoint PATH.")
    return found[0]


def save_safetensors(state: dict[str, Tensor], path: Path, metadata: dict[str, str] | None = None
                     ) -> Path:
    """Write ``state`` as a safetensors file (tensors made contiguous and unshared)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def save_hf(state: dict[str, Tensor], hf_config: Path, out_dir: Path) -> Path:
    """Load ``state`` into the ``transformers`` model described by ``hf_config`` (a folder with
    a ``config.json``, or that file) and ``save_pretrained`` it into ``out_dir``."""
    model = hf_model_from_config(hf_config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        detail = " ".join(str(error).split())[:300]
        raise ValueError(f"The run's model does not match the architecture in {hf_config} "
                         f"({detail}). Pass the config of the model the run trained, with its class in "
                         '"architectures" (e.g. ["BertForSequenceClassification"]).') from None
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


def hf_model_from_config(hf_config: Path) -> nn.Module:
    """A freshly initialised ``transformers`` model of the architecture in ``config.json`` (the
    class named in its ``architectures``, else ``AutoModel``); nothing is downloaded."""
    try:
        import transformers
    except ImportError as error:
        raise ImportError('--format hf needs transformers: pip install "mamlkit[integrations]"') \
            from error
    hf_config = Path(hf_config)
    folder = hf_config.parent if hf_config.is_file() else hf_config
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"No config.json at {hf_config}; pass the folder of the Hugging "
                                "Face model's config (save_pretrained or config.save_pretrained).")
    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        return transformers.AutoModel.from_config(config)
    return cls(config)


def export_run(run_dir: Path, fmt: str, out: Path | None = None, checkpoint: Path | None = None,
               hf_config: Path | None = None) -> Path:
    """Export the meta-learned initialisation of ``run_dir`` (its best checkpoint unless
    ``checkpoint``) in format ``fmt``; returns what was written (default ``RUN/export/...``)."""
    if fmt not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}.")
    if fmt == "hf" and hf_config is None:
        raise ValueError("--format hf needs the Hugging Face model's architecture: pass "
                         "--hf-config DIR (a folder with its config.json). For any other model "
                         "use --format safetensors.")
    path = Path(checkpoint) if checkpoint else find_checkpoint(Path(run_dir))
    saved = load_checkpoint(path, map_location="cpu")
    state = model_state(saved)
    if fmt == "hf":
        return save_hf(state, Path(hf_config), Path(out) if out else Path(run_dir) / "export" / "hf")
    from mamlkit import __version__

    config = saved.get("config") or {}
    metadata = {"format": "pt", "mamlkit_version": __version__, "checkpoint": str(path),
                "iteration": str(saved.get("iteration", "")), "algorithm": str(config.get("algo", "")),
                "task": str(config.get("task", ""))}
    target = Path(out) if out else Path(run_dir) / "export" / "model.safetensors"
    return save_safetensors(state, target, metadata)
