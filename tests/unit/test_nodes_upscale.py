"""UpscaleModelLoader + ImageUpscaleWithModel: a tiny ESRGAN built with spandrel's own architecture, saved
as a file and loaded through the same code as a downloaded model; tiled upscaling blends tiles seamlessly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from worker.engine import ExecutionContext, registry
from worker.errors import UserError
from worker.models.store import ModelStore
from worker.models.upscale import spandrel
from worker.nodes.upscale import _positions, tiled_upscale


def tiny_esrgan(scale: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """The state dict of an ESRGAN (RRDBNet) with 8 filters and 1 block: the layout of real ESRGAN files."""
    spandrel()  # importable without torchvision
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(seed)
    net = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=scale)
    return {key: value.contiguous() for key, value in net.state_dict().items()}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    root = tmp_path_factory.mktemp("upscale-root")
    folder = root / "upscale_models"
    (folder / "sub").mkdir(parents=True)
    save_file(tiny_esrgan(2), str(folder / "x2.safetensors"))
    torch.save(tiny_esrgan(4, seed=1), folder / "sub" / "x4.pth")
    torch.save({"params_ema": tiny_esrgan(2, seed=2)}, folder / "wrapped.pth")  # as BasicSR saves them
    (folder / "broken.safetensors").write_bytes(b"not a safetensors file")
    save_file({"weight": torch.zeros(3, 3)}, str(folder / "unknown.safetensors"))
    return ModelStore([root], tmp_path_factory.mktemp("upscale-cache"), torch.device("cpu"), torch.float32)


def ctx(store: ModelStore | None = None) -> ExecutionContext:
    return ExecutionContext(job_id="t", models=store, device=torch.device("cpu"), input_images={}, workflow={})


def test_store_lists_upscale_models_in_subfolders(store: ModelStore) -> None:
    assert store.list("upscale_models") == [
        "broken.safetensors", "sub/x4.pth", "unknown.safetensors", "wrapped.pth", "x2.safetensors"
    ]


@pytest.mark.parametrize(("name", "scale"), [("x2.safetensors", 2), ("sub/x4.pth", 4), ("wrapped.pth", 2)])
def test_loader_detects_esrgan_and_its_scale(store: ModelStore, name: str, scale: int) -> None:
    (model,) = registry()["UpscaleModelLoader"].fn(ctx(store), model_name=name)
    assert model.architecture.name == "ESRGAN"
    assert model.scale == scale
    assert store.upscale_model(name) is model  # resident: loaded once


def test_loaded_weights_are_the_files(store: ModelStore) -> None:
    model = store.upscale_model("x2.safetensors")
    original = tiny_esrgan(2)
    loaded = model.model.state_dict()
    assert set(loaded) == set(original)
    assert all(torch.equal(loaded[key], original[key]) for key in original)


@pytest.mark.parametrize(("name", "message"), [
    ("broken.safetensors", "cannot read broken.safetensors"),
    ("unknown.safetensors", "architecture not recognized"),
    ("missing.pth", "upscale_models 'missing.pth' not found"),
])
def test_loader_errors_are_user_errors(store: ModelStore, name: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        store.upscale_model(name)


def test_upscale_with_model_multiplies_the_size(store: ModelStore) -> None:
    model = store.upscale_model("x2.safetensors")
    image = torch.rand(2, 24, 40, 3)
    (out,) = registry()["ImageUpscaleWithModel"].fn(ctx(store), upscale_model=model, image=image)
    assert out.shape == (2, 48, 80, 3)
    assert out.min() >= 0.0 and out.max() <= 1.0
    with torch.inference_mode():
        whole = model(image.movedim(-1, 1)).clamp(0, 1).movedim(1, -1)
    assert torch.allclose(out, whole, atol=1e-5)  # one tile: the model's own output


def test_upscale_rejects_images_with_other_channel_counts(store: ModelStore) -> None:
    with pytest.raises(UserError, match="takes 3-channel images; this image has 4"):
        registry()["ImageUpscaleWithModel"].fn(ctx(store), upscale_model=store.upscale_model("x2.safetensors"),
                                              image=torch.rand(1, 8, 8, 4))


# -- tiling ---------------------------------------------------------------------------------------------


def nearest_x3(tile: torch.Tensor) -> torch.Tensor:
    return F.interpolate(tile, scale_factor=3, mode="nearest")


def test_tile_positions_cover_the_axis_like_comfyui() -> None:
    assert _positions(500, 512, 32) == [0, 468]  # a second start pulled back to length - overlap
    assert _positions(1000, 512, 32) == [0, 480, 960]
    assert _positions(20, 512, 32) == [0]


def test_tiles_blend_without_seams_for_a_pointwise_model() -> None:
    image = torch.rand(2, 3, 37, 53)
    tiled = tiled_upscale(image, nearest_x3, scale=3, out_channels=3, tile=16, overlap=4)
    assert tiled.shape == (2, 3, 111, 159)
    assert torch.allclose(tiled, nearest_x3(image), atol=1e-6)


def test_tiled_esrgan_stays_close_to_the_whole_image(store: ModelStore) -> None:
    model = store.upscale_model("x2.safetensors")
    image = torch.rand(1, 3, 48, 48)
    with torch.inference_mode():
        whole = model(image)
        tiled = tiled_upscale(image, model, scale=2, out_channels=3, tile=32, overlap=8)
    assert tiled.shape == whole.shape
    assert (tiled - whole).abs().mean() < 0.1 * whole.abs().mean()


def test_tile_progress_is_reported() -> None:
    seen: list[tuple[int, int]] = []
    tiled_upscale(torch.rand(1, 3, 30, 30), nearest_x3, 3, 3, tile=16, overlap=4,
                  on_tile=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 9) for i in range(1, 10)]


class OomAboveModel(torch.nn.Module):
    """Runs out of 'memory' on tiles larger than `limit` pixels per side."""

    input_channels = output_channels = 3
    scale = 2

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.model = torch.nn.Conv2d(3, 3, 1)
        self.limit = limit
        self.sizes: list[int] = []

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        self.sizes.append(max(tile.shape[-2:]))
        if max(tile.shape[-2:]) > self.limit:
            raise torch.OutOfMemoryError("fake")
        return F.interpolate(tile, scale_factor=2, mode="nearest")


def test_out_of_memory_halves_the_tile_then_gives_up() -> None:
    model = OomAboveModel(limit=256)
    image = torch.rand(1, 600, 600, 3)
    (out,) = registry()["ImageUpscaleWithModel"].fn(ctx(), upscale_model=model, image=image)
    assert out.shape == (1, 1200, 1200, 3)
    assert max(model.sizes[1:]) == 256  # 512 failed once, then 256-pixel tiles
    with pytest.raises(torch.OutOfMemoryError):
        registry()["ImageUpscaleWithModel"].fn(ctx(), upscale_model=OomAboveModel(limit=64), image=image)
