"""ComfyUI custom nodes from custom_nodes/ folders: loading, refusals, validation, whole jobs, /health."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import decode_result_image, txt2img
from worker.custom_nodes import CustomNodes, ProtocolError, adapt, load_custom_nodes
from worker.engine import build_plan, registry
from worker.engine.introspect import object_info
from worker.engine.registry import register, unregister
from worker.jobs import run_job

GOOD_INIT = '''
from .nodes import ImageBrightness, ImageStats, PickChannel, ClashingDecode

NODE_CLASS_MAPPINGS = {
    "ImageBrightness": ImageBrightness,
    "PickChannel": PickChannel,
    "ImageStats": ImageStats,
    "VAEDecode": ClashingDecode,
}
NODE_DISPLAY_NAME_MAPPINGS = {"ImageBrightness": "Image Brightness"}
'''

GOOD_NODES = '''
import torch

RECORDED = []


class ImageBrightness:
    """Scale the pixel values."""

    CATEGORY = "image/adjust"
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": ("IMAGE",),
                             "factor": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0, "step": 0.01})}}

    def apply(self, image, factor):
        return ((image * factor).clamp(0.0, 1.0),)


class PickChannel:
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "channel_mask")
    FUNCTION = "pick"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"image": ("IMAGE",), "channel": (["red", "green", "blue"],)},
            "optional": {"strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0}), "mask": ("MASK",)},
        }

    def pick(self, image, channel, strength=1.0, mask=None):
        index = ["red", "green", "blue"].index(channel)
        out = torch.zeros_like(image)
        out[..., index] = image[..., index] * strength
        return (out, image[..., index])


class ImageStats:
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "stats"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"images": ("IMAGE",)},
                "hidden": {"unique_id": "UNIQUE_ID", "prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}}

    def stats(self, images, unique_id=None, prompt=None, extra_pnginfo=None):
        RECORDED.append({"mean": float(images.mean()), "shape": tuple(images.shape), "unique_id": unique_id,
                         "prompt": prompt, "extra_pnginfo": extra_pnginfo})
        return {"ui": {"text": [str(float(images.mean()))]}}


class ClashingDecode(ImageBrightness):
    pass
'''

SINGLE_FILE = '''
class NoFunction:
    RETURN_TYPES = ("INT",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}


class BadInputs:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return ["not", "a", "dict"]

    def run(self):
        return (1,)


class ConstantInt:
    RETURN_TYPES = ("INT",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": ("INT", {"default": 3, "min": 0, "max": 10})}}

    def run(self, value):
        return (value,)


NODE_CLASS_MAPPINGS = {"NoFunction": NoFunction, "BadInputs": BadInputs, "ConstantInt": ConstantInt}
'''


def write(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return folder


@pytest.fixture(scope="module")
def custom(tmp_path_factory: pytest.TempPathFactory):
    folder = write(tmp_path_factory.mktemp("custom_nodes"), {
        "good_pack/__init__.py": GOOD_INIT,
        "good_pack/nodes.py": GOOD_NODES,
        "broken_import/__init__.py": "raise RuntimeError('boom while importing')\n",
        "needs_comfy/__init__.py": "import comfy.utils\nNODE_CLASS_MAPPINGS = {}\n",
        "no_mappings.py": "X = 1\n",
        "single_nodes.py": SINGLE_FILE,
        "README.md": "not code\n",
        "off_pack.disabled/__init__.py": "raise RuntimeError('never imported')\n",
    })
    report = load_custom_nodes([folder, folder.parent / "does-not-exist"])
    yield report
    report.unload()
    assert "ImageBrightness" not in registry() and "good_pack" not in sys.modules
    assert registry()["VAEDecode"].source == ""  # the built-in node stays


def job(workflow: dict) -> dict:
    return {"id": "custom", "input": {"workflow": workflow}}


def test_nodes_are_loaded_and_adapted(custom: CustomNodes) -> None:
    assert custom.loaded == {"good_pack": ["ImageBrightness", "PickChannel", "ImageStats"],
                             "single_nodes": ["ConstantInt"]}
    nodes = registry()
    factor = nodes["ImageBrightness"].inputs["factor"]
    assert (factor.type, factor.default, factor.min, factor.max, factor.optional) == ("FLOAT", 1.0, 0.0, 4.0, False)
    pick = nodes["PickChannel"]
    assert pick.inputs["channel"].type == "COMBO" and pick.inputs["channel"].choices == ("red", "green", "blue")
    assert pick.inputs["strength"].optional and pick.inputs["mask"].optional and pick.inputs["mask"].type == "MASK"
    assert pick.outputs == ("IMAGE", "MASK") and pick.source == "good_pack"
    assert nodes["ImageStats"].output_node and not nodes["ImageStats"].temp_output
    assert "unique_id" not in nodes["ImageStats"].inputs  # hidden inputs are filled in, never sent


def test_object_info_shows_custom_nodes(custom: CustomNodes) -> None:
    info = object_info(registry(), lambda source: [], {})
    assert info["ImageBrightness"]["display_name"] == "Image Brightness"
    assert info["ImageBrightness"]["category"] == "image/adjust"
    assert info["ImageBrightness"]["description"] == "Scale the pixel values."
    assert info["ImageBrightness"]["input"]["required"]["factor"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 4.0}]
    assert info["PickChannel"]["input"]["optional"]["mask"] == ["MASK"]
    assert info["PickChannel"]["output_name"] == ["image", "channel_mask"]
    assert info["ImageStats"]["output_node"] is True


def test_broken_custom_nodes_are_reported_not_fatal(custom: CustomNodes) -> None:
    failed = custom.failed
    assert "RuntimeError: boom while importing" in failed["broken_import"]
    assert "No module named 'comfy'" in failed["needs_comfy"]
    assert "NODE_CLASS_MAPPINGS" in failed["no_mappings"]
    assert "FUNCTION" in failed["single_nodes/NoFunction"]
    assert "INPUT_TYPES() must return a dict" in failed["single_nodes/BadInputs"]
    assert "built-in node" in failed["good_pack/VAEDecode"]
    assert set(failed) == {"broken_import", "needs_comfy", "no_mappings", "single_nodes/NoFunction",
                           "single_nodes/BadInputs", "good_pack/VAEDecode"}  # README.md, *.disabled skipped
    assert "broken_import" not in sys.modules
    assert registry()["VAEDecode"].source == ""


def test_a_package_name_is_loaded_once(custom: CustomNodes, tmp_path: Path) -> None:
    again = load_custom_nodes([write(tmp_path, {"good_pack/__init__.py": GOOD_INIT, "good_pack/nodes.py": GOOD_NODES})])
    assert "already taken" in again.failed["good_pack"] and not again.loaded


def test_clash_between_custom_packages_keeps_the_first(custom: CustomNodes, tmp_path: Path) -> None:
    second = load_custom_nodes([write(tmp_path, {"other_pack.py": SINGLE_FILE})])
    try:
        assert "custom node package single_nodes" in second.failed["other_pack/ConstantInt"]
        assert registry()["ConstantInt"].source == "single_nodes"
    finally:
        second.unload()


def test_validation_uses_the_custom_specs(custom: CustomNodes, runtime) -> None:
    workflow = txt2img()
    workflow["10"] = {"class_type": "ImageBrightness", "inputs": {"image": ["8", 0], "factor": 9}}
    workflow["11"] = {"class_type": "PickChannel", "inputs": {"image": ["10", 0], "channel": "purple"}}
    workflow["12"] = {"class_type": "SaveImage", "inputs": {"images": ["11", 0]}}
    workflow["13"] = {"class_type": "ImageStats", "inputs": {}}
    error = run_job(runtime, job(workflow))["error"]
    assert "node 10 (ImageBrightness) input 'factor': 9 is above the maximum 4" in error
    assert "node 11 (PickChannel) input 'channel': 'purple' is not one of red, green, blue" in error
    assert "node 13 (ImageStats): missing required input 'images' (IMAGE)" in error


def test_whole_job_runs_custom_nodes_after_vae_decode(custom: CustomNodes, runtime) -> None:
    recorded = sys.modules["good_pack.nodes"].RECORDED
    recorded.clear()
    workflow = txt2img(seed=5)
    workflow["10"] = {"class_type": "ImageBrightness", "inputs": {"image": ["8", 0], "factor": 0.5}}
    workflow["11"] = {"class_type": "PickChannel", "inputs": {"image": ["10", 0], "channel": "red"}}
    workflow["12"] = {"class_type": "SaveImage", "inputs": {"filename_prefix": "red", "images": ["11", 0]}}
    workflow["13"] = {"class_type": "ImageStats", "inputs": {"images": ["10", 0]}}
    result = run_job(runtime, job(workflow))
    assert "error" not in result, result
    by_name = {item["filename"]: np.asarray(decode_result_image(item).convert("RGB")).astype(int)
               for item in result["images"]}
    original, red = by_name["ComfyUI_00001_.png"], by_name["red_00001_.png"]
    assert (red[..., 1:] == 0).all()
    assert np.abs(red[..., 0] - original[..., 0] / 2).max() <= 1.0
    [stats] = recorded
    assert stats["unique_id"] == "13" and stats["prompt"]["13"]["class_type"] == "ImageStats"
    assert stats["shape"] == (1, 64, 64, 3) and stats["extra_pnginfo"] == {}
    assert result["metadata"]["nodes_ms"]["13 ImageStats"] >= 0


def test_links_to_custom_sockets_are_type_checked(custom: CustomNodes, runtime) -> None:
    workflow = txt2img()
    workflow["10"] = {"class_type": "PickChannel", "inputs": {"image": ["8", 0], "channel": "red", "mask": ["8", 0]}}
    workflow["12"] = {"class_type": "SaveImage", "inputs": {"images": ["10", 0]}}
    error = run_job(runtime, job(workflow))["error"]
    assert "expects MASK, but output 0 of node 8 (VAEDecode) is IMAGE" in error


def test_a_failing_custom_node_is_named_in_the_error(runtime) -> None:
    register(adapt("Exploding", _node_class(inputs={"required": {"value": ("IMAGE",)}},
                                            run=lambda self, value: (value / 0, 1 // 0)), "pack"))
    try:
        workflow = txt2img()
        workflow["10"] = {"class_type": "Exploding", "inputs": {"value": ["8", 0]}}
        workflow["9"]["inputs"]["images"] = ["10", 0]
        error = run_job(runtime, job(workflow))["error"]
    finally:
        unregister("Exploding")
    assert "node 10 (Exploding)" in error and "ZeroDivisionError" in error


def _node_class(**attrs):
    base = {"RETURN_TYPES": ("IMAGE",), "FUNCTION": "run", "run": lambda self, **kw: (kw.get("value"),)}
    inputs = attrs.pop("inputs", {"required": {}})
    return type("Node", (), {**base, **attrs, "INPUT_TYPES": classmethod(lambda cls: inputs)})


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"inputs": {"required": {"x": ("INT", {"min": "max_side"})}}}, "min 'max_side' is not a number"),
        ({"inputs": {"required": {"x": "IMAGE"}}}, "is not a (type, options) tuple"),
        ({"inputs": {"required": {"x": ("COMBO", {})}}}, "COMBO without a list of options"),
        ({"inputs": {"extra": {}}}, "must return a dict with the keys"),
        ({"INPUT_IS_LIST": True}, "list execution"),
        ({"OUTPUT_IS_LIST": (True,)}, "list execution"),
        ({"RETURN_NAMES": ("a", "b")}, "RETURN_NAMES"),
        ({"RETURN_TYPES": None}, "RETURN_TYPES"),
        ({"FUNCTION": "missing"}, "FUNCTION"),
    ],
)
def test_protocol_errors(attrs: dict, message: str) -> None:
    with pytest.raises(ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adapt("X", _node_class(**attrs), "pack")


def test_new_style_combo_and_wildcard_inputs(runtime) -> None:
    combo = adapt("ComboNode", _node_class(inputs={"required": {"mode": ("COMBO", {"options": ["a", "b"],
                                                                                    "default": "b"})}}), "pack")
    assert combo.inputs["mode"].choices == ("a", "b") and combo.inputs["mode"].default == "b"
    anything = adapt("AnyPassThrough", _node_class(inputs={"required": {"value": ("*",)}}), "pack")
    register(anything)
    try:
        workflow = txt2img()
        workflow["10"] = {"class_type": "AnyPassThrough", "inputs": {"value": ["8", 0]}}
        workflow["9"]["inputs"]["images"] = ["10", 0]
        plan = build_plan(workflow, registry(), runtime.models.list, {"max_side": 4096, "max_batch": 16,
                                                                       "max_steps": 200})
        assert "10" in plan.order
        with pytest.raises(ValueError, match="registered twice"):
            register(anything)
    finally:
        unregister("AnyPassThrough")
    assert "AnyPassThrough" not in registry()


def test_boot_loads_custom_nodes_and_health_lists_them(base_env: dict, tmp_path: Path) -> None:
    from worker.config import Settings
    from worker.runtime import boot

    folder = write(tmp_path / "nodes", {
        "health_pack.py": SINGLE_FILE.replace("ConstantInt", "HealthConstant"),
        "health_broken/__init__.py": "raise ImportError('missing dependency xyz')\n",
    })
    runtime = boot(Settings.from_env({**base_env, "PRELOAD_CHECKPOINTS": "none", "CUSTOM_NODES_DIRS": str(folder)}))
    try:
        health = runtime.health()["custom_nodes"]
        assert health["dirs"][0] == str(folder)
        assert health["loaded"] == {"health_pack": ["HealthConstant"]}
        assert health["failed"]["health_broken"] == "import failed: ImportError: missing dependency xyz"
        assert "FUNCTION" in health["failed"]["health_pack/NoFunction"]
        assert "custom_nodes" in runtime.boot_seconds
        assert "HealthConstant" in registry()
    finally:
        runtime.custom_nodes.unload()
    assert "HealthConstant" not in registry()


def test_validate_inputs_is_called_before_the_node_runs(runtime) -> None:
    ran = []
    node_class = _node_class(inputs={"required": {"image": ("IMAGE",), "amount": ("INT", {"default": 2})}},
                             run=lambda self, image, amount: ran.append(amount) or (image,))
    node_class.VALIDATE_INPUTS = classmethod(lambda cls, amount: amount % 2 == 0 or "amount must be even")
    register(adapt("EvenOnly", node_class, "pack"))
    try:
        workflow = txt2img()
        workflow["10"] = {"class_type": "EvenOnly", "inputs": {"image": ["8", 0], "amount": 3}}
        workflow["9"]["inputs"]["images"] = ["10", 0]
        error = run_job(runtime, job(workflow))["error"]
        workflow["10"]["inputs"]["amount"] = 4
        result = run_job(runtime, job(workflow))
    finally:
        unregister("EvenOnly")
    assert "node 10 (EvenOnly): invalid input: amount must be even" in error
    assert "images" in result and ran == [4]
