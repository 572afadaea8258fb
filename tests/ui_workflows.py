"""Hand-written workflows in ComfyUI's saved (UI) format, shaped as its frontend saves them: nodes with
`inputs` (name, type, link, widget), `outputs` (type, links), `widgets_values`, `mode`; links as
[id, origin, origin slot, target, target slot, type] at the root and as objects inside subgraphs."""

from __future__ import annotations

from typing import Any

from tests.helpers import TINY

SUBGRAPH_IN, SUBGRAPH_OUT = -10, -20


class Graph:
    """A root graph or a subgraph definition being written: nodes, and links that fill both ends' slots."""

    def __init__(self, nested: bool = False):
        self.nodes: dict[int, dict[str, Any]] = {}
        self.links: list[Any] = []
        self.nested = nested
        self.inputs: list[dict[str, Any]] = []
        self.outputs: list[dict[str, Any]] = []
        self._next_link = 100 if nested else 1

    def node(self, node_id: int, kind: str, widgets: list[Any] | None = None, inputs: list[tuple[str, str]] = (),
             outputs: list[str] = (), mode: int = 0, widget_inputs: tuple[str, ...] = (), **extra: Any) -> int:
        self.nodes[node_id] = {
            "id": node_id, "type": kind, "mode": mode, "pos": [0, 0], "size": [100, 50], "flags": {}, "order": 0,
            "inputs": [{"name": n, "type": t, "link": None, **({"widget": {"name": n}} if n in widget_inputs else {})}
                       for n, t in inputs],
            "outputs": [{"name": t, "type": t, "links": []} for t in outputs],
            "properties": {"Node name for S&R": kind, "cnr_id": "comfy-core", "ver": "0.8.0"},
            **({"widgets_values": widgets} if widgets is not None else {}), **extra}
        return node_id

    def input(self, name: str, kind: str) -> int:
        self.inputs.append({"id": f"in-{name}", "name": name, "type": kind, "linkIds": []})
        return len(self.inputs) - 1

    def output(self, name: str, kind: str) -> int:
        self.outputs.append({"id": f"out-{name}", "name": name, "type": kind, "linkIds": []})
        return len(self.outputs) - 1

    def link(self, origin: int, origin_slot: int, target: int, target_input: str, kind: str = "*") -> int:
        link_id = self._next_link
        self._next_link += 1
        if target == SUBGRAPH_OUT:
            target_slot = target_input_index = next(i for i, o in enumerate(self.outputs) if o["name"] == target_input)
            self.outputs[target_input_index]["linkIds"].append(link_id)
        else:
            inputs = self.nodes[target]["inputs"]
            target_slot = next(i for i, slot in enumerate(inputs) if slot["name"] == target_input)
            inputs[target_slot]["link"] = link_id
        if origin == SUBGRAPH_IN:
            self.inputs[origin_slot]["linkIds"].append(link_id)
        else:
            self.nodes[origin]["outputs"][origin_slot]["links"].append(link_id)
        if self.nested:
            self.links.append({"id": link_id, "origin_id": origin, "origin_slot": origin_slot, "target_id": target,
                               "target_slot": target_slot, "type": kind})
        else:
            self.links.append([link_id, origin, origin_slot, target, target_slot, kind])
        return link_id

    def definition(self, subgraph_id: str, name: str) -> dict[str, Any]:
        return {"id": subgraph_id, "version": 1, "name": name, "state": {}, "revision": 0, "config": {},
                "inputNode": {"id": SUBGRAPH_IN, "bounding": [0, 0, 1, 1]},
                "outputNode": {"id": SUBGRAPH_OUT, "bounding": [0, 0, 1, 1]},
                "inputs": self.inputs, "outputs": self.outputs, "widgets": [], "nodes": list(self.nodes.values()),
                "links": self.links, "groups": [], "extra": {}}

    def workflow(self, subgraphs: list[dict[str, Any]] = ()) -> dict[str, Any]:
        return {"id": "test", "revision": 0, "last_node_id": max(self.nodes, default=0), "last_link_id": 0,
                "nodes": list(self.nodes.values()), "links": self.links, "groups": [], "config": {},
                "extra": {"ds": {"scale": 1, "offset": [0, 0]}}, "version": 0.4,
                **({"definitions": {"subgraphs": list(subgraphs)}} if subgraphs else {})}


SAMPLER_SUBGRAPH = "5f2c0c55-0000-4000-8000-000000000001"


def txt2img_ui(*, seed: int, steps: int = 3, cfg: float = 7.0, width: int = 64, height: int = 64,
               positive: str = "a red cube", negative: str = "blurry", prefix: str = "ComfyUI",
               ckpt: str = TINY) -> dict[str, Any]:
    """tests.helpers.txt2img as a user builds it in ComfyUI: a bypassed LoRA loader after the checkpoint, the
    CLIP through a Reroute, the width from a PrimitiveNode, and sampling and decoding in a subgraph whose seed
    is a promoted widget. Its API form is txt2img(...) with the same arguments."""
    sub = Graph(nested=True)
    for name, kind in (("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
                       ("latent_image", "LATENT"), ("vae", "VAE"), ("seed", "INT")):
        sub.input(name, kind)
    sub.output("IMAGE", "IMAGE")
    sub.node(3, "KSampler", [seed + 1, "randomize", steps, cfg, "euler", "normal", 1.0],
             [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
              ("latent_image", "LATENT"), ("seed", "INT")], ["LATENT"], widget_inputs=("seed",))
    sub.node(8, "VAEDecode", [], [("samples", "LATENT"), ("vae", "VAE")], ["IMAGE"])
    for index, name in enumerate(("model", "positive", "negative", "latent_image")):
        sub.link(SUBGRAPH_IN, index, 3, name, sub.inputs[index]["type"])
    sub.link(SUBGRAPH_IN, 5, 3, "seed", "INT")  # the inner widget value (seed + 1) is overridden by the instance's
    sub.link(SUBGRAPH_IN, 4, 8, "vae", "VAE")
    sub.link(3, 0, 8, "samples", "LATENT")
    sub.link(8, 0, SUBGRAPH_OUT, "IMAGE", "IMAGE")

    root = Graph()
    root.node(4, "CheckpointLoaderSimple", [ckpt], [], ["MODEL", "CLIP", "VAE"],
              properties={"models": [{"name": ckpt, "url": "https://example.com/tiny.safetensors",
                                      "directory": "checkpoints"}], "cnr_id": "comfy-core"})
    root.node(12, "LoraLoader", ["not-installed-lora.safetensors", 0.8, 0.8], [("model", "MODEL"), ("clip", "CLIP")],
              ["MODEL", "CLIP"], mode=4)
    root.node(15, "Reroute", None, [("", "*")], ["CLIP"])
    root.node(6, "CLIPTextEncode", [positive], [("clip", "CLIP")], ["CONDITIONING"])
    root.node(7, "CLIPTextEncode", [negative], [("clip", "CLIP")], ["CONDITIONING"])
    root.node(20, "PrimitiveNode", [width, "fixed"], [], ["INT"])
    root.node(5, "EmptyLatentImage", [width + 8, height, 1], [("width", "INT")], ["LATENT"], widget_inputs=("width",))
    root.node(10, SAMPLER_SUBGRAPH, [seed],
              [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"),
               ("latent_image", "LATENT"), ("vae", "VAE")], ["IMAGE"],
              properties={"proxyWidgets": [["-1", "seed"]]})
    root.node(9, "SaveImage", [prefix], [("images", "IMAGE")], [])
    root.node(30, "Note", ["bypassed LoRA on purpose"], [], [])
    root.link(4, 0, 12, "model", "MODEL")
    root.link(4, 1, 12, "clip", "CLIP")
    root.link(12, 1, 15, "", "CLIP")
    root.link(15, 0, 6, "clip", "CLIP")
    root.link(15, 0, 7, "clip", "CLIP")
    root.link(20, 0, 5, "width", "INT")
    root.link(12, 0, 10, "model", "MODEL")
    root.link(6, 0, 10, "positive", "CONDITIONING")
    root.link(7, 0, 10, "negative", "CONDITIONING")
    root.link(5, 0, 10, "latent_image", "LATENT")
    root.link(4, 2, 10, "vae", "VAE")
    root.link(10, 0, 9, "images", "IMAGE")
    return root.workflow([sub.definition(SAMPLER_SUBGRAPH, "Sample and decode")])


def txt2img_ui_as_api(*, seed: int, steps: int = 3, cfg: float = 7.0, width: int = 64, height: int = 64,
                      positive: str = "a red cube", negative: str = "blurry", prefix: str = "ComfyUI",
                      ckpt: str = TINY) -> dict[str, Any]:
    """What ComfyUI's frontend queues for txt2img_ui (node ids as it makes them, no _meta)."""
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": positive, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": negative, "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": 1}},
        "10:3": {"class_type": "KSampler", "inputs": {
            "seed": seed, "steps": steps, "cfg": cfg, "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0,
            "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0], "latent_image": ["5", 0]}},
        "10:8": {"class_type": "VAEDecode", "inputs": {"samples": ["10:3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": prefix, "images": ["10:8", 0]}},
    }
