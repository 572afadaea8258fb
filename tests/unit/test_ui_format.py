"""The UI -> API conversion on hand-written saved workflows, over node definitions shaped like ComfyUI's own
(INPUT_TYPES / RETURN_TYPES with the same inputs in the same order): no ComfyUI here."""

from __future__ import annotations

import random
from typing import Any, ClassVar

import pytest

from tests.ui_workflows import SUBGRAPH_IN, SUBGRAPH_OUT, Graph, txt2img_ui, txt2img_ui_as_api
from worker.embed.needs import NodeMeta, missing_models
from worker.embed.ui_format import dynamic_prompt, is_ui_workflow, to_api
from worker.errors import UserError

SAMPLERS, SCHEDULERS = ["euler", "dpmpp_2m"], ["normal", "karras"]


class Node:
    REQUIRED: ClassVar[dict[str, Any]] = {}
    OPTIONAL: ClassVar[dict[str, Any]] = {}
    HIDDEN: ClassVar[dict[str, Any]] = {}
    RETURN_TYPES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": cls.REQUIRED, "optional": cls.OPTIONAL, "hidden": cls.HIDDEN}


def node(required: dict[str, Any], returns: tuple[str, ...] = (), optional: dict[str, Any] | None = None,
         hidden: dict[str, Any] | None = None, output: bool = False) -> type:
    return type("Def", (Node,), {"REQUIRED": required, "OPTIONAL": optional or {}, "HIDDEN": hidden or {},
                                 "RETURN_TYPES": returns, "OUTPUT_NODE": output})


NODES = {
    "CheckpointLoaderSimple": node({"ckpt_name": (["tiny-sd15.safetensors"],)}, ("MODEL", "CLIP", "VAE")),
    "CLIPTextEncode": node({"text": ("STRING", {"multiline": True, "dynamicPrompts": True}), "clip": ("CLIP",)},
                           ("CONDITIONING",)),
    "EmptyLatentImage": node({"width": ("INT", {"default": 512}), "height": ("INT", {"default": 512}),
                              "batch_size": ("INT", {"default": 1})}, ("LATENT",)),
    "KSampler": node({"model": ("MODEL",), "seed": ("INT", {"default": 0, "control_after_generate": True}),
                      "steps": ("INT", {"default": 20}), "cfg": ("FLOAT", {"default": 8.0}),
                      "sampler_name": (SAMPLERS,), "scheduler": (SCHEDULERS,), "positive": ("CONDITIONING",),
                      "negative": ("CONDITIONING",), "latent_image": ("LATENT",),
                      "denoise": ("FLOAT", {"default": 1.0})}, ("LATENT",)),
    "VAEDecode": node({"samples": ("LATENT",), "vae": ("VAE",)}, ("IMAGE",)),
    "SaveImage": node({"images": ("IMAGE",), "filename_prefix": ("STRING", {"default": "ComfyUI"})}, (),
                      hidden={"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}, output=True),
    "LoraLoader": node({"model": ("MODEL",), "clip": ("CLIP",), "lora_name": (["a.safetensors"],),
                        "strength_model": ("FLOAT", {"default": 1.0}), "strength_clip": ("FLOAT", {"default": 1.0})},
                       ("MODEL", "CLIP")),
    "RandomNoise": node({"noise_seed": ("INT", {"default": 0})}, ("NOISE",)),  # seed-like by its name
    "LoadImage": node({"image": (["in.png"], {"image_upload": True})}, ("IMAGE", "MASK")),
    "ImageScale": node({"image": ("IMAGE",), "upscale_method": ("COMBO", {"options": ["nearest-exact", "bilinear"]}),
                        "width": ("INT", {"default": 512}), "height": ("INT", {"default": 512}),
                        "crop": (["disabled", "center"],)}, ("IMAGE",), optional={
                            "mask": ("MASK",), "strength": ("FLOAT", {"default": 1.0, "forceInput": True})}),
    "PrimitiveInt": node({"value": ("INT", {"default": 0})}, ("INT",)),
}


def convert(workflow: dict[str, Any]) -> dict[str, Any]:
    prompt = to_api(workflow, NODES, random.Random(0)).prompt
    for entry in prompt.values():
        entry.pop("_meta", None)
    return prompt


def test_the_acceptance_workflow_becomes_its_api_form() -> None:
    """Subgraph with a promoted seed, PrimitiveNode, Reroute, a bypassed LoRA and a Note."""
    ui = txt2img_ui(seed=31337, steps=4, width=64, height=48)
    assert is_ui_workflow(ui) and not is_ui_workflow(txt2img_ui_as_api(seed=1))
    assert convert(ui) == txt2img_ui_as_api(seed=31337, steps=4, width=64, height=48)


def test_widgets_in_definition_order_with_control_after_generate() -> None:
    g = Graph()
    g.node(1, "KSampler", [42, "randomize", 7, 5.5, "dpmpp_2m", "karras", 0.9],
           [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
           ["LATENT"])
    g.node(2, "RandomNoise", [9, "fixed"], [], ["NOISE"])
    g.node(3, "LoadImage", ["in.png", "image"], [], ["IMAGE", "MASK"])
    prompt = convert(g.workflow())
    assert prompt["1"]["inputs"] == {"seed": 42, "steps": 7, "cfg": 5.5, "sampler_name": "dpmpp_2m",
                                     "scheduler": "karras", "denoise": 0.9}
    assert prompt["2"]["inputs"] == {"noise_seed": 9}  # named seed-like: a control value follows it
    assert prompt["3"]["inputs"] == {"image": "in.png"}  # the upload button's value is not an input


def test_converted_widgets_optional_and_force_input() -> None:
    g = Graph()
    g.node(1, "LoadImage", ["in.png", "image"], [], ["IMAGE", "MASK"])
    g.node(2, "PrimitiveInt", [200], [], ["INT"])
    # width converted to an input and linked; the V3-style COMBO and the optional mask as saved
    g.node(3, "ImageScale", ["bilinear", 512, 32, "center"], [("image", "IMAGE"), ("mask", "MASK"),
                                                               ("strength", "FLOAT"), ("width", "INT")], ["IMAGE"],
           widget_inputs=("width",))
    g.link(1, 0, 3, "image", "IMAGE")
    g.link(1, 1, 3, "mask", "MASK")
    g.link(2, 0, 3, "width", "INT")
    assert convert(g.workflow())["3"]["inputs"] == {
        "upscale_method": "bilinear", "width": ["2", 0], "height": 32, "crop": "center", "image": ["1", 0],
        "mask": ["1", 1]}


def test_primitive_node_gives_its_value_and_is_not_in_the_graph() -> None:
    g = Graph()
    g.node(1, "PrimitiveNode", [777, "increment"], [], ["INT"])
    g.node(2, "EmptyLatentImage", [512, 512, 1], [("width", "INT"), ("height", "INT")], ["LATENT"],
           widget_inputs=("width", "height"))
    g.link(1, 0, 2, "width", "INT")
    g.link(1, 0, 2, "height", "INT")
    assert convert(g.workflow()) == {"2": {"class_type": "EmptyLatentImage",
                                           "inputs": {"width": 777, "height": 777, "batch_size": 1}}}


def test_reroutes_in_a_chain() -> None:
    g = Graph()
    g.node(1, "CheckpointLoaderSimple", ["tiny-sd15.safetensors"], [], ["MODEL", "CLIP", "VAE"])
    g.node(2, "Reroute", None, [("", "*")], ["*"])
    g.node(3, "Reroute", None, [("", "*")], ["*"])
    g.node(4, "CLIPTextEncode", ["x"], [("clip", "CLIP")], ["CONDITIONING"])
    g.link(1, 1, 2, "", "CLIP")
    g.link(2, 0, 3, "", "*")
    g.link(3, 0, 4, "clip", "CLIP")
    assert convert(g.workflow())["4"]["inputs"] == {"text": "x", "clip": ["1", 1]}


def test_bypassed_node_passes_on_the_input_of_the_type() -> None:
    g = Graph()
    g.node(1, "CheckpointLoaderSimple", ["tiny-sd15.safetensors"], [], ["MODEL", "CLIP", "VAE"])
    g.node(2, "LoraLoader", ["a.safetensors", 1, 1], [("model", "MODEL"), ("clip", "CLIP")], ["MODEL", "CLIP"], mode=4)
    g.node(3, "CLIPTextEncode", ["x"], [("clip", "CLIP")], ["CONDITIONING"])
    g.node(4, "KSampler", [1, "fixed", 2, 7, "euler", "normal", 1], [("model", "MODEL")], ["LATENT"])
    g.link(1, 0, 2, "model", "MODEL")
    g.link(1, 1, 2, "clip", "CLIP")
    g.link(2, 1, 3, "clip", "CLIP")
    g.link(2, 0, 4, "model", "MODEL")
    prompt = convert(g.workflow())
    assert "2" not in prompt
    assert prompt["3"]["inputs"]["clip"] == ["1", 1] and prompt["4"]["inputs"]["model"] == ["1", 0]


def test_muted_nodes_are_dropped_with_the_links_to_them() -> None:
    g = Graph()
    g.node(1, "CheckpointLoaderSimple", ["tiny-sd15.safetensors"], [], ["MODEL", "CLIP", "VAE"], mode=2)
    g.node(2, "CLIPTextEncode", ["x"], [("clip", "CLIP")], ["CONDITIONING"])
    g.node(3, "SaveImage", ["muted"], [("images", "IMAGE")], [], mode=2)
    g.link(1, 1, 2, "clip", "CLIP")
    assert convert(g.workflow()) == {"2": {"class_type": "CLIPTextEncode", "inputs": {"text": "x"}}}


def nested_workflow() -> dict[str, Any]:
    """root: checkpoint -> [outer subgraph 10: text encode, [inner subgraph 20: KSampler]] -> decode."""
    inner = Graph(nested=True)
    inner.input("model", "MODEL")
    inner.input("positive", "CONDITIONING")
    inner.input("steps", "INT")
    inner.output("LATENT", "LATENT")
    inner.node(3, "KSampler", [5, "fixed", 20, 7, "euler", "normal", 1], [
        ("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("steps", "INT")],
        ["LATENT"], widget_inputs=("steps",))
    inner.link(SUBGRAPH_IN, 0, 3, "model", "MODEL")
    inner.link(SUBGRAPH_IN, 1, 3, "positive", "CONDITIONING")
    inner.link(SUBGRAPH_IN, 1, 3, "negative", "CONDITIONING")
    inner.link(SUBGRAPH_IN, 2, 3, "steps", "INT")
    inner.link(3, 0, SUBGRAPH_OUT, "LATENT", "LATENT")

    outer = Graph(nested=True)
    outer.input("model", "MODEL")
    outer.input("clip", "CLIP")
    outer.output("LATENT", "LATENT")
    outer.node(4, "CLIPTextEncode", ["inside"], [("clip", "CLIP")], ["CONDITIONING"])
    # no proxyWidgets (an older frontend): the instance's values follow its widget-fed inputs
    outer.node(20, "inner-id", [12], [("model", "MODEL"), ("positive", "CONDITIONING")], ["LATENT"])
    outer.link(SUBGRAPH_IN, 1, 4, "clip", "CLIP")
    outer.link(SUBGRAPH_IN, 0, 20, "model", "MODEL")
    outer.link(4, 0, 20, "positive", "CONDITIONING")
    outer.link(20, 0, SUBGRAPH_OUT, "LATENT", "LATENT")

    root = Graph()
    root.node(1, "CheckpointLoaderSimple", ["tiny-sd15.safetensors"], [], ["MODEL", "CLIP", "VAE"])
    root.node(10, "outer-id", [], [("model", "MODEL"), ("clip", "CLIP")], ["LATENT"])
    root.node(2, "VAEDecode", [], [("samples", "LATENT"), ("vae", "VAE")], ["IMAGE"])
    root.link(1, 0, 10, "model", "MODEL")
    root.link(1, 1, 10, "clip", "CLIP")
    root.link(10, 0, 2, "samples", "LATENT")
    root.link(1, 2, 2, "vae", "VAE")
    return root.workflow([outer.definition("outer-id", "Outer"), inner.definition("inner-id", "Inner")])


def test_nested_subgraphs_get_path_ids_and_wire_through() -> None:
    prompt = convert(nested_workflow())
    assert set(prompt) == {"1", "10:4", "10:20:3", "2"}
    assert prompt["10:4"]["inputs"] == {"text": "inside", "clip": ["1", 1]}
    assert prompt["10:20:3"]["inputs"] == {
        "seed": 5, "steps": 12, "cfg": 7, "sampler_name": "euler", "scheduler": "normal", "denoise": 1,
        "model": ["1", 0], "positive": ["10:4", 0], "negative": ["10:4", 0]}
    assert prompt["2"]["inputs"] == {"samples": ["10:20:3", 0], "vae": ["1", 2]}


def test_a_bypassed_subgraph_instance_passes_through() -> None:
    workflow = nested_workflow()
    g = Graph()
    g.nodes = {n["id"]: n for n in workflow["nodes"]}
    g.nodes[10]["mode"] = 4
    g.nodes[10]["inputs"].append({"name": "latent", "type": "LATENT", "link": None})
    prompt = convert(workflow)
    assert set(prompt) == {"1", "2"} and "samples" not in prompt["2"]["inputs"]  # nothing of type LATENT to pass


def test_errors_name_every_ui_node_with_its_subgraph_path() -> None:
    workflow = nested_workflow()
    inner = workflow["definitions"]["subgraphs"][1]
    inner["nodes"][0]["widgets_values"] = [5, "fixed", 20, 7, "euler"]  # two short
    unknown = {"id": 9, "type": "ImageResizeKJv2", "mode": 0, "inputs": [], "outputs": [], "widgets_values": [1],
               "properties": {"cnr_id": "comfyui-kjnodes", "ver": "1.1.0"}}
    workflow["definitions"]["subgraphs"][0]["nodes"].append(unknown)
    with pytest.raises(UserError) as caught:
        to_api(workflow, NODES)
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("node type 'ImageResizeKJv2' is not installed in this worker (node 9 "
                                  "(ImageResizeKJv2) in subgraph node 10 ('Outer')): it comes from the custom node "
                                  "package 'comfyui-kjnodes' 1.1.0")
    assert problems[1] == (
        "node 3 (KSampler) in subgraph node 20 ('Inner') in subgraph node 10 ('Outer'): widgets_values has 5 "
        "value(s) ([5, \"fixed\", 20, 7, \"euler\"]); its definition expects 7 in this order: seed, "
        "seed (control_after_generate), steps, cfg, sampler_name, scheduler, denoise")


def test_too_many_widget_values_are_refused() -> None:
    g = Graph()
    g.node(1, "EmptyLatentImage", [512, 512, 1, 4], [], ["LATENT"])
    with pytest.raises(UserError, match=r"node 1 \(EmptyLatentImage\): widgets_values has 4 value\(s\) "
                                        r"\(\[512, 512, 1, 4\]\); its definition expects 3 in this order: width, "
                                        r"height, batch_size"):
        to_api(g.workflow(), NODES)


def test_dynamic_prompts_and_list_values() -> None:
    assert dynamic_prompt("a {red|red} cube // a comment\n/* block */ {x|{y|y}}", random.Random(0)) in (
        "a red cube \n x", "a red cube \n y")
    g = Graph()
    g.node(1, "CLIPTextEncode", ["{cat|cat} photo // why"], [("clip", "CLIP")], ["CONDITIONING"])
    g.node(2, "PrimitiveNode", [[1, 2]], [], ["*"])
    g.node(3, "EmptyLatentImage", [64, 64, 1], [("batch_size", "INT")], ["LATENT"], widget_inputs=("batch_size",))
    g.link(2, 0, 3, "batch_size", "INT")
    prompt = convert(g.workflow())
    assert prompt["1"]["inputs"] == {"text": "cat photo "}
    assert prompt["3"]["inputs"]["batch_size"] == {"__value__": [1, 2]}  # a list value is not a link


def test_missing_models_by_folder_with_the_workflows_url() -> None:
    converted = to_api(txt2img_ui(seed=1, ckpt="sd_xl_base_1.0.safetensors"), NODES)
    meta: dict[str, NodeMeta] = converted.meta
    meta["4"] = NodeMeta("node 4 (CheckpointLoaderSimple)", "CheckpointLoaderSimple", models=meta["4"].models)
    lines = missing_models(converted.prompt, {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints"},
                           lambda folder: ["tiny-sd15.safetensors"], meta)
    assert lines == ["model file checkpoints/sd_xl_base_1.0.safetensors is not in this worker's model folders "
                     "(needed by node 4 (CheckpointLoaderSimple) input 'ckpt_name'); checkpoints/ holds "
                     "'tiny-sd15.safetensors'; download: https://example.com/tiny.safetensors"]
    empty = missing_models(converted.prompt, {("CheckpointLoaderSimple", "ckpt_name"): "checkpoints"},
                           lambda folder: [], meta)
    assert "; checkpoints/ is empty; download:" in empty[0]


def test_a_short_list_takes_the_defaults_of_widgets_newer_than_the_workflow() -> None:
    g = Graph()  # saved before batch_size existed: the frontend gives it its default
    g.node(1, "EmptyLatentImage", [640, 384], [], ["LATENT"])
    assert convert(g.workflow())["1"]["inputs"] == {"width": 640, "height": 384, "batch_size": 1}
