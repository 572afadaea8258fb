"""worker/embed/validate.py's pure checks and messages, over small node definitions shaped like ComfyUI's
(INPUT_TYPES() / RETURN_TYPES), without ComfyUI."""

from __future__ import annotations

from typing import Any

import pytest

from worker.embed.validate import Limits, choices, comfy_problems, limit_problems, shape_problems, unused_inputs

LIMITS = Limits(max_nodes=10, max_side=1024, max_batch=4, max_steps=50, max_frames=81, max_text_chars=100)


class Loader:
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"ckpt_name": (["a.safetensors", "b.safetensors"],)}}


class Sampler:
    RETURN_TYPES = ("LATENT",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {"model": ("MODEL",), "seed": ("INT", {"default": 0}), "steps": ("INT", {"min": 1}),
                         "sampler_name": ([f"s{i}" for i in range(12)],)},
            "optional": {"denoise": ("FLOAT", {"default": 1.0})},
            "hidden": {"unique_id": "UNIQUE_ID"},
        }


class V3Combo:
    """The V3 schema's COMBO: the type name, then the options in the spec."""

    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"mode": ("COMBO", {"options": ["fast", "slow"]})}, "optional": {"flag": ("BOOLEAN",)}}


class Output:
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {"required": {"images": ("IMAGE",)}}


class Broken:
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        raise RuntimeError("a custom node that cannot describe itself")


NODES = {"Loader": Loader, "Sampler": Sampler, "V3Combo": V3Combo, "Output": Output, "Broken": Broken}


def graph() -> dict[str, Any]:
    return {
        "4": {"class_type": "Loader", "inputs": {"ckpt_name": "a.safetensors"}},
        "3": {"class_type": "Sampler", "inputs": {"model": ["4", 0], "seed": 1, "steps": 20, "sampler_name": "s1"}},
        "9": {"class_type": "Output", "inputs": {"images": ["3", 0]}},
    }


# --- shape_problems ----------------------------------------------------------------------------------------


def test_a_well_formed_graph_has_no_shape_problems() -> None:
    assert shape_problems(graph(), NODES, LIMITS) == []
    # Link sources may be given as numbers; literal lists that are not [id, index] are values, not links.
    numeric = graph() | {"5": {"class_type": "V3Combo", "inputs": {"mode": "fast", "values": [1.5, 2], "x": []}}}
    numeric["3"]["inputs"]["model"] = [4, 2]
    numeric["4"] = {"class_type": "Loader", "inputs": {}}
    assert shape_problems({str(k): v for k, v in numeric.items()}, NODES, LIMITS) == []


def test_too_many_nodes_is_the_only_problem_reported() -> None:
    prompt = {str(i): "not a node" for i in range(11)}
    assert shape_problems(prompt, NODES, LIMITS) == [
        "the workflow has 11 nodes; the limit is 10 (MAX_WORKFLOW_NODES)"]
    assert len(shape_problems({str(i): "x" for i in range(10)}, NODES, LIMITS)) == 10  # at the limit: checked


def test_every_shape_problem_at_once_naming_node_and_input() -> None:
    prompt = graph() | {
        "1": ["KSampler"],
        "2": {"inputs": {}},
        "5": {"class_type": "", "inputs": {}},
        "6": {"class_type": "Output", "inputs": "images"},
        "7": {"class_type": "Output", "inputs": {"images": ["99", 0]}},
        "8": {"class_type": "Output", "inputs": {"images": ["4", 3]}},
    }
    problems = shape_problems(prompt, NODES, LIMITS)
    assert problems == [
        "node 1: expected an object with 'class_type' and 'inputs'",
        "node 2: 'class_type' is missing; expected the node's type, e.g. \"KSampler\"",
        "node 5: 'class_type' is missing; expected the node's type, e.g. \"KSampler\"",
        "node 6 (Output): 'inputs' must be an object of input name -> value or link",
        "node 7 (Output) input 'images': links to node 99, which is not in the workflow",
        "node 8 (Output) input 'images': links to output 3 of node 4 (Loader), which has 3 output(s) "
        "(MODEL, CLIP, VAE)",
    ]


def test_link_to_a_node_with_no_outputs_and_negative_indexes() -> None:
    prompt = graph() | {"10": {"class_type": "Output", "inputs": {"images": ["9", 0]}},
                        "11": {"class_type": "Output", "inputs": {"images": ["4", -1]}}}
    assert shape_problems(prompt, NODES, LIMITS) == [
        "node 10 (Output) input 'images': links to output 0 of node 9 (Output), which has 0 output(s)",
        "node 11 (Output) input 'images': links to output -1 of node 4 (Loader), which has 3 output(s) "
        "(MODEL, CLIP, VAE)",
    ]


def test_unknown_node_types_are_grouped_by_type() -> None:
    prompt = graph() | {"20": {"class_type": "FancyNode", "inputs": {}}, "21": {"class_type": "FancyNode"},
                        "22": {"class_type": "Other", "inputs": {}}}
    problems = shape_problems(prompt, NODES, LIMITS)
    assert len(problems) == 2
    assert problems[0].startswith("node 20, 21: node type 'FancyNode' is not installed in this worker")
    assert problems[1].startswith("node 22: node type 'Other' is not installed")
    assert "/object_info" in problems[0]


def test_a_link_from_an_unknown_node_type_is_not_checked_for_its_outputs() -> None:
    prompt = {"1": {"class_type": "FancyNode", "inputs": {}},
              "2": {"class_type": "Output", "inputs": {"images": ["1", 7]}}}
    problems = shape_problems(prompt, NODES, LIMITS)
    assert problems == [problems[0]] and "FancyNode" in problems[0]  # only the missing type, said once


# --- limit_problems ----------------------------------------------------------------------------------------


def test_limits_on_literal_inputs_by_name() -> None:
    prompt = {
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 2048, "height": 1024, "batch_size": 5}},
        "3": {"class_type": "KSampler", "inputs": {"steps": 51, "seed": 10**12}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x" * 101}},
        "7": {"class_type": "WanImageToVideo", "inputs": {"length": 82, "width": ["5", 0]}},
        "8": {"class_type": "SomeCustomNode", "inputs": {"resolution": float("inf"), "amount": 4}},
    }
    assert limit_problems(prompt, LIMITS) == [
        "node 5 (EmptyLatentImage) input 'width': 2048 is over this worker's limit of 1024 pixels (MAX_IMAGE_SIDE)",
        "node 5 (EmptyLatentImage) input 'batch_size': 5 is over this worker's limit of 4 (MAX_BATCH_SIZE)",
        "node 3 (KSampler) input 'steps': 51 is over this worker's limit of 50 (MAX_STEPS)",
        "node 6 (CLIPTextEncode) input 'text': text of 101 characters is over the limit of 100 (MAX_TEXT_CHARS)",
        "node 7 (WanImageToVideo) input 'length': 82 is over this worker's limit of 81 frames (MAX_FRAMES)",
        "node 8 (SomeCustomNode) input 'resolution': inf is over this worker's limit of 1024 pixels "
        "(MAX_IMAGE_SIDE)",
    ]


def test_values_at_the_limits_and_odd_values_pass() -> None:
    prompt = {
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 1024, "height": 1024.0, "batch_size": 4}},
        "3": {"class_type": "KSampler", "inputs": {"steps": 50, "denoise": 99.0, "frames": True}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "x" * 100, "clip": ["4", 1]}},
        "7": "not a node",
        "8": {"class_type": "Odd", "inputs": None},
    }
    assert limit_problems(prompt, LIMITS) == []
    assert limit_problems({"1": {"inputs": {"steps": float("nan")}}}, LIMITS) == [
        "node 1 input 'steps': nan is over this worker's limit of 50 (MAX_STEPS)"]


# --- choices ----------------------------------------------------------------------------------------------


def test_choices_from_v1_lists_and_v3_combos() -> None:
    assert choices(Loader, "ckpt_name") == ["a.safetensors", "b.safetensors"]
    assert choices(V3Combo, "mode") == ["fast", "slow"]
    assert choices(Sampler, "seed") is None  # not a COMBO
    assert choices(Sampler, "nope") is None
    assert choices(V3Combo, "flag") is None
    assert choices(Broken, "anything") is None  # a definition that raises is no reason to fail the message


# --- comfy_problems ---------------------------------------------------------------------------------------


def node_error(class_type: str, *errors: dict[str, Any]) -> dict[str, Any]:
    return {"errors": list(errors), "dependent_outputs": ["9"], "class_type": class_type}


def test_value_not_in_list_quotes_the_choices_from_the_definition() -> None:
    prompt = graph()
    prompt["4"]["inputs"]["ckpt_name"] = "sdxl.safetensors"
    error = {"type": "value_not_in_list", "message": "Value not in list",
             "details": "ckpt_name: 'sdxl.safetensors' not in ['a.safetensors', 'b.safetensors']",
             "extra_info": {"input_name": "ckpt_name", "received_value": "sdxl.safetensors"}}
    problems = comfy_problems(prompt, None, {"4": node_error("Loader", error)}, NODES)
    assert problems == ["node 4 (Loader) input 'ckpt_name': 'sdxl.safetensors' is not one of the allowed values: "
                        "'a.safetensors', 'b.safetensors'"]


def test_long_choice_lists_are_cut_and_counted() -> None:
    error = {"type": "value_not_in_list", "message": "Value not in list", "details": "...",
             "extra_info": {"input_name": "sampler_name", "received_value": "eulr"}}
    [problem] = comfy_problems(graph(), None, {"3": node_error("Sampler", error)}, NODES)
    assert problem == ("node 3 (Sampler) input 'sampler_name': 'eulr' is not one of the allowed values: 's0', "
                       "'s1', 's2', 's3', 's4', 's5', 's6', 's7', ... (12 in all)")


def test_value_not_in_list_without_a_definition_uses_comfyuis_details() -> None:
    error = {"type": "value_not_in_list", "message": "Value not in list",
             "details": "mode: 'x' not in ['fast', 'slow']",
             "extra_info": {"input_name": "mode", "received_value": "x"}}
    [problem] = comfy_problems({"5": {"class_type": "Gone", "inputs": {}}}, None, {"5": node_error("Gone", error)})
    assert problem == "node 5 (Gone) input 'mode': 'x' is not one of the allowed values (['fast', 'slow'])"


def test_other_input_errors_keep_comfyuis_message() -> None:
    errors = [
        {"type": "required_input_missing", "message": "Required input is missing", "details": "model",
         "extra_info": {"input_name": "model"}},
        {"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "steps",
         "extra_info": {"input_name": "steps", "received_value": 0}},
        {"type": "invalid_input_type", "message": "Failed to convert an input value to a INT value",
         "details": "seed, abc, invalid literal for int() with base 10: 'abc'",
         "extra_info": {"input_name": "seed", "received_value": "abc"}},
        {"type": "exception_during_inner_validation", "message": "Exception when validating inner node",
         "details": "KeyError: 'x' " + "y" * 300, "extra_info": {"input_name": "model"}},
    ]
    problems = comfy_problems(graph(), None, {"3": node_error("Sampler", *errors)}, NODES)
    assert problems[:3] == [
        "node 3 (Sampler) input 'model': required input is missing; this node type needs it (a value or a link)",
        "node 3 (Sampler) input 'steps': Value 0 smaller than min of 1",
        "node 3 (Sampler) input 'seed': Failed to convert an input value to a INT value "
        "(abc, invalid literal for int() with base 10: 'abc')",
    ]
    assert problems[3].startswith("node 3 (Sampler) input 'model': could not be checked: KeyError: 'x' yyy")
    assert problems[3].endswith("...") and len(problems[3]) < 300


def test_an_error_of_a_node_not_in_the_prompt_is_still_named() -> None:
    error = {"type": "custom_validation_failed", "message": "Custom validation failed for node",
             "details": "x", "extra_info": {}}
    assert comfy_problems({}, None, {"12": node_error("Mystery", error)}) == [
        "node 12 (Mystery): Custom validation failed for node (x)"]


def test_a_prompt_level_error_when_no_node_has_one() -> None:
    no_outputs = {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""}
    [problem] = comfy_problems(graph(), no_outputs, {})
    assert "no output node" in problem and "SaveImage" in problem
    other = {"type": "invalid_prompt", "message": "Cannot execute because a node is missing", "details": "Node 7"}
    assert comfy_problems(graph(), other, {}) == ["Cannot execute because a node is missing: Node 7"]
    assert comfy_problems(graph(), None, {}) == []
    # Node errors win over the prompt-level summary ComfyUI also sends.
    error = {"type": "required_input_missing", "message": "m", "details": "", "extra_info": {"input_name": "images"}}
    problems = comfy_problems(graph(), {"type": "prompt_outputs_failed_validation", "message": "failed"},
                              {"9": node_error("Output", error)})
    assert problems == ["node 9 (Output) input 'images': required input is missing; this node type needs it "
                        "(a value or a link)"]


# --- unused_inputs ----------------------------------------------------------------------------------------


def test_inputs_a_node_does_not_define_are_named() -> None:
    prompt = graph()
    prompt["3"]["inputs"] |= {"stepz": 30, "denoise": 0.5, "unique_id": "3", "ui.pos": [1, 2]}
    prompt["20"] = {"class_type": "FancyNode", "inputs": {"whatever": 1}}  # unknown type: reported elsewhere
    prompt["21"] = {"class_type": "Broken", "inputs": {"anything": 1}}  # cannot be asked
    prompt["22"] = {"class_type": "V3Combo", "inputs": {"mode": "fast", "flag": True, "speed": 2}}
    assert unused_inputs(prompt, NODES) == [
        "node 3 (Sampler) input 'stepz' is not an input of this node type and was ignored",
        "node 22 (V3Combo) input 'speed' is not an input of this node type and was ignored",
    ]
    assert unused_inputs(graph(), NODES) == []


@pytest.mark.parametrize("node", ["text", {"class_type": "Sampler"}, {"class_type": "Sampler", "inputs": [1]}])
def test_malformed_nodes_are_left_to_the_shape_check(node: Any) -> None:
    assert unused_inputs({"1": node}, NODES) == []
