from __future__ import annotations

from worker.engine import registry
from worker.engine.introspect import object_info

LIMITS = {"max_side": 2048, "max_batch": 4, "max_steps": 50}


def choices(source: str) -> list[str]:
    return {"checkpoints": ["a.safetensors", "tiny-sd"], "input_images": [], "loras": ["l.safetensors"]}.get(
        source, []
    )


def test_object_info_lists_nodes_inputs_and_model_names() -> None:
    info = object_info(registry(), choices, LIMITS)
    assert info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"] == [["a.safetensors", "tiny-sd"]]
    assert info["CheckpointLoaderSimple"]["output"] == ["MODEL", "CLIP", "VAE"]
    width = info["EmptyLatentImage"]["input"]["required"]["width"]
    assert width == ["INT", {"default": 512, "min": 16, "max": 2048, "step": 8}]  # limits from the settings
    assert info["KSampler"]["input"]["required"]["sampler_name"][0][:2] == ["euler", "euler_ancestral"]
    assert info["SaveImage"]["output_node"] and info["SaveImage"]["returned"]
    assert info["PreviewImage"]["output_node"] and not info["PreviewImage"]["returned"]
    assert info["LoraLoader"]["input"]["required"]["lora_name"] == [["l.safetensors"]]
