"""Model files by URL, fetched once into the model cache (input.models; a UI workflow's properties.models with
MODEL_DOWNLOADS=on). ComfyUI-free: worker/embed/models.py tells ComfyUI about the files."""

from worker.downloads.cache import ModelCache
from worker.downloads.ensure import Folders, ensure
from worker.downloads.http import DownloadError
from worker.downloads.spec import ModelSpec, parse_models

__all__ = ["DownloadError", "Folders", "ModelCache", "ModelSpec", "ensure", "parse_models"]
