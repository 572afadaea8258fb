"""build_plan: every rejected workflow names the node, its type and the input at fault, and says what was
expected; valid workflows are planned with coerced values, defaults and dependencies first."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from tests.helpers import img2img, txt2img
from worker.engine import Plan, build_plan, registry
from worker.errors import UserError

LIMITS = {"max_side": 4096, "max_batch": 16, "max_steps": 200}
CHOICES = {"checkpoints": ["tiny-sd", "sd15.safetensors"], "input_images": ["input.png"]}


def choices(source: str) -> Sequence[str]:
    return CHOICES[source]


def plan(workflow: Any, limits: Mapping[str, float] | None = None, max_nodes: int = 500) -> Plan:
    return build_plan(workflow, registry(), choices, LIMITS if limits is None else limits, max_nodes)


def rejected(workflow: Any, limits: Mapping[str, float] | None = None, max_nodes: int = 500) -> str:
    with pytest.raises(UserError) as exc:
        plan(workflow, limits, max_nodes)
    return str(exc.value)


def exc_problems(workflow: Any) -> list[str]:
    with pytest.raises(UserError) as exc:
        plan(workflow)
    return exc.value.problems


def with_input(node_id: str, name: str, value: Any, workflow: dict[str, Any] | None = None) -> dict[str, Any]:
    graph = copy.deepcopy(workflow if workflow is not None else txt2img())
    graph[node_id]["inputs"][name] = value
    return graph


def without_input(node_id: str, name: str) -> dict[str, Any]:
    graph = txt2img()
    del graph[node_id]["inputs"][name]
    return graph


# -- the happy path ------------------------------------------------------------------------------------


def test_default_txt2img_plans_every_node() -> None:
    result = plan(txt2img())
    assert sorted(result.order) == ["3", "4", "5", "6", "7", "8", "9"]
    assert result.nodes["3"].class_type == "KSampler"
    assert result.nodes["3"].values["steps"] == 4
    assert result.nodes["3"].links["model"].node_id == "4"
    assert result.nodes["3"].links["model"].index == 0
    assert result.workflow == txt2img()


def test_img2img_plans_load_image() -> None:
    result = plan(img2img())
    assert "10" in result.order and "11" in result.order
    assert result.nodes["10"].values["image"] == "input.png"


# -- workflow shape -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("workflow", "kind"), [([txt2img()], "list"), ("{}", "str"), (None, "NoneType")])
def test_workflow_not_an_object(workflow: Any, kind: str) -> None:
    message = rejected(workflow)
    assert "'workflow' must be an object" in message
    assert kind in message


def test_empty_workflow() -> None:
    message = rejected({})
    assert "empty" in message
    assert "API" in message


def test_node_body_not_an_object() -> None:
    graph = txt2img()
    graph["5"] = ["EmptyLatentImage"]
    message = rejected(graph)
    assert "node 5" in message
    assert "class_type" in message


def test_node_without_class_type() -> None:
    graph = txt2img()
    del graph["5"]["class_type"]
    message = rejected(graph)
    assert "node 5" in message
    assert "'class_type' is missing" in message


def test_node_inputs_not_an_object() -> None:
    graph = txt2img()
    graph["5"]["inputs"] = [512, 512, 1]
    message = rejected(graph)
    assert "node 5 (EmptyLatentImage)" in message
    assert "'inputs' must be an object" in message


def test_unknown_class_type_lists_supported_types() -> None:
    graph = txt2img()
    graph["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {"strength": 1.0}}
    message = rejected(graph)
    assert "12 (ControlNetApplyAdvanced)" in message
    assert "unsupported" in message
    for supported in ("KSampler", "CheckpointLoaderSimple", "SaveImage", "LoadImage"):
        assert supported in message


def test_unknown_class_type_feeding_a_needed_node_is_reported_once() -> None:
    graph = txt2img()
    graph["4"]["class_type"] = "CheckpointLoaderGGUF"
    message = rejected(graph)
    assert "4 (CheckpointLoaderGGUF)" in message
    # The nodes that link to the unsupported node are not blamed for it.
    assert "which is not in the workflow" not in message
    assert len(exc_problems(graph)) == 1


def test_too_many_nodes() -> None:
    message = rejected(txt2img(), max_nodes=5)
    assert "7 nodes" in message
    assert "limit is 5" in message


def test_node_count_at_the_limit_is_accepted() -> None:
    assert len(plan(txt2img(), max_nodes=7).order) == 7


# -- inputs and links -----------------------------------------------------------------------------------


def test_missing_required_input() -> None:
    message = rejected(without_input("3", "model"))
    assert "node 3 (KSampler)" in message
    assert "missing required input 'model'" in message
    assert "MODEL" in message


def test_missing_required_widget_input() -> None:
    message = rejected(without_input("3", "sampler_name"))
    assert "node 3 (KSampler)" in message
    assert "'sampler_name'" in message


def test_null_input_counts_as_missing() -> None:
    message = rejected(with_input("6", "clip", None))
    assert "node 6 (CLIPTextEncode)" in message
    assert "missing required input 'clip'" in message


def test_link_to_missing_node() -> None:
    message = rejected(with_input("3", "model", ["42", 0]))
    assert "node 3 (KSampler) input 'model'" in message
    assert "'42'" in message
    assert "not in the workflow" in message


def test_link_with_bad_output_index() -> None:
    message = rejected(with_input("3", "model", ["4", 7]))
    assert "node 3 (KSampler) input 'model'" in message
    assert "output 7 of node 4 (CheckpointLoaderSimple)" in message
    assert "3 output(s)" in message


def test_link_with_negative_output_index() -> None:
    message = rejected(with_input("3", "model", ["4", -1]))
    assert "node 3 (KSampler) input 'model'" in message
    assert "output -1" in message


def test_link_with_wrong_type() -> None:
    message = rejected(with_input("3", "positive", ["4", 1]))
    assert "node 3 (KSampler) input 'positive'" in message
    assert "expects CONDITIONING" in message
    assert "node 4 (CheckpointLoaderSimple) is CLIP" in message


def test_literal_where_a_link_is_expected() -> None:
    message = rejected(with_input("3", "model", "4"))
    assert "node 3 (KSampler) input 'model'" in message
    assert "link" in message
    assert "MODEL" in message


def test_malformed_link_for_a_link_input() -> None:
    message = rejected(with_input("8", "vae", ["4", 2, 0]))
    assert "node 8 (VAEDecode) input 'vae'" in message
    assert "[node_id, output_index]" in message


def test_link_to_a_widget_input_of_the_right_type_is_checked() -> None:
    # A COMBO fed by a MODEL output is a type error, not a value error.
    message = rejected(with_input("3", "sampler_name", ["4", 0]))
    assert "node 3 (KSampler) input 'sampler_name'" in message
    assert "expects COMBO" in message
    assert "MODEL" in message


def test_cycle_names_its_nodes() -> None:
    # 3 (KSampler) <- 11 (VAEEncode) <- 8 (VAEDecode) <- 3: every link has the right type.
    graph = img2img()
    graph["11"]["inputs"]["pixels"] = ["8", 0]
    del graph["10"]
    message = rejected(graph)
    assert "cycle" in message
    for node_id in ("3", "8", "11"):
        assert node_id in message.split("cycle", 1)[1]
    assert "4" not in message.split("cycle", 1)[1]


def test_self_loop_is_a_cycle() -> None:
    message = rejected(with_input("3", "latent_image", ["3", 0]))
    assert "cycle" in message
    assert "3 -> 3" in message


# -- value types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "name", "value", "expected"),
    [
        ("3", "steps", "many", "expected an integer, got 'many'"),
        ("3", "steps", True, "expected an integer, got True"),
        ("3", "cfg", "high", "expected a number, got 'high'"),
        ("3", "cfg", "nan", "expected a number"),
        ("3", "cfg", float("inf"), "expected a number"),
        ("3", "seed", [1, 2, 3], "expected an integer, got [1, 2, 3]"),
        ("3", "seed", {"value": 1}, "expected an integer"),
        ("6", "text", 5, "expected a string, got int"),
        ("6", "text", ["a", "b", "c"], "expected a string, got list"),
    ],
)
def test_wrong_value_type(node_id: str, name: str, value: Any, expected: str) -> None:
    graph = txt2img()
    class_type = graph[node_id]["class_type"]
    message = rejected(with_input(node_id, name, value, graph))
    assert f"node {node_id} ({class_type}) input '{name}'" in message
    assert expected in message


# -- ranges ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("node_id", "name", "value", "expected"),
    [
        ("3", "steps", 0, "0 is below the minimum 1"),
        ("3", "steps", 201, "201 is above the maximum 200"),
        ("3", "cfg", 101, "101 is above the maximum 100"),
        ("3", "cfg", -0.5, "-0.5 is below the minimum 0"),
        ("3", "denoise", 1.5, "1.5 is above the maximum 1"),
        ("3", "seed", -1, "-1 is below the minimum 0"),
        ("5", "width", 500, "500 is not a multiple of 8"),
        ("5", "height", 8, "8 is below the minimum 16"),
        ("5", "width", 4104, "4104 is above the maximum 4096"),
        ("5", "batch_size", 17, "17 is above the maximum 16"),
        ("5", "batch_size", 0, "0 is below the minimum 1"),
    ],
)
def test_out_of_range(node_id: str, name: str, value: Any, expected: str) -> None:
    class_type = txt2img()[node_id]["class_type"]
    message = rejected(with_input(node_id, name, value))
    assert f"node {node_id} ({class_type}) input '{name}'" in message
    assert expected in message


def test_limits_come_from_the_limits_mapping() -> None:
    small = {"max_side": 1024, "max_batch": 2, "max_steps": 10}
    graph = txt2img(width=2048, batch_size=3, steps=11)
    message = rejected(graph, limits=small)
    assert "node 5 (EmptyLatentImage) input 'width': 2048 is above the maximum 1024" in message
    assert "node 5 (EmptyLatentImage) input 'batch_size': 3 is above the maximum 2" in message
    assert "node 3 (KSampler) input 'steps': 11 is above the maximum 10" in message
    # The same values pass under the default limits.
    assert plan(graph).nodes["5"].values["width"] == 2048


def test_bounds_are_inclusive() -> None:
    graph = txt2img(steps=200, cfg=100.0, width=4096, height=16, batch_size=16, seed=0)
    graph["3"]["inputs"]["denoise"] = 0.0
    values = plan(graph).nodes
    assert values["3"].values["steps"] == 200
    assert values["3"].values["denoise"] == 0.0
    assert values["5"].values["width"] == 4096
    assert values["5"].values["batch_size"] == 16


def test_largest_seed_is_accepted() -> None:
    assert plan(txt2img(seed=2**64 - 1)).nodes["3"].values["seed"] == 2**64 - 1


# -- coercion -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("steps", ["20", 20.0, " 20 "])
def test_int_accepts_numeric_strings_and_integral_floats(steps: Any) -> None:
    value = plan(with_input("3", "steps", steps)).nodes["3"].values["steps"]
    assert value == 20
    assert type(value) is int


@pytest.mark.parametrize("steps", [20.5, "20.5", "2e1"])
def test_int_rejects_non_integral_values(steps: Any) -> None:
    message = rejected(with_input("3", "steps", steps))
    assert "node 3 (KSampler) input 'steps'" in message
    assert "expected an integer" in message


@pytest.mark.parametrize(("cfg", "expected"), [(7, 7.0), ("7.5", 7.5)])
def test_float_accepts_ints_and_numeric_strings(cfg: Any, expected: float) -> None:
    value = plan(with_input("3", "cfg", cfg)).nodes["3"].values["cfg"]
    assert value == expected
    assert type(value) is float


def test_numeric_string_out_of_range_is_still_checked() -> None:
    message = rejected(with_input("3", "steps", "0"))
    assert "node 3 (KSampler) input 'steps': 0 is below the minimum 1" in message


# -- choices --------------------------------------------------------------------------------------------


def test_unknown_checkpoint_lists_available() -> None:
    message = rejected(txt2img(ckpt="sdxl.safetensors"))
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in message
    assert "'sdxl.safetensors' not found in checkpoints" in message
    assert "'tiny-sd'" in message
    assert "'sd15.safetensors'" in message


def test_unknown_checkpoint_with_none_available() -> None:
    graph = txt2img(ckpt="sd15.safetensors")
    with pytest.raises(UserError) as exc:
        build_plan(graph, registry(), lambda source: [], LIMITS)
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in str(exc.value)
    assert "none available" in str(exc.value)


def test_long_choice_lists_are_shortened() -> None:
    many = [f"model-{i:03}.safetensors" for i in range(50)]
    with pytest.raises(UserError) as exc:
        build_plan(txt2img(ckpt="other.safetensors"), registry(), lambda source: many, LIMITS)
    message = str(exc.value)
    assert "'model-000.safetensors'" in message
    assert "'model-049.safetensors'" not in message
    assert "and 30 more" in message


def test_unknown_sampler_lists_valid_names() -> None:
    message = rejected(txt2img(sampler="dpmpp_9m"))
    assert "node 3 (KSampler) input 'sampler_name'" in message
    assert "'dpmpp_9m'" in message
    assert "euler" in message


def test_unknown_scheduler_lists_valid_names() -> None:
    message = rejected(txt2img(scheduler="turbo"))
    assert "node 3 (KSampler) input 'scheduler'" in message
    assert "'turbo'" in message
    assert "karras" in message
    assert "normal" in message


def test_checkpoint_name_not_a_string() -> None:
    message = rejected(with_input("4", "ckpt_name", 3))
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in message
    assert "expected a file name" in message


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../secret.safetensors", "'..'"),
        ("/etc/passwd", "absolute"),
        ("a\\b", "backslash"),
        ("C:/x", "absolute"),
    ],
)
def test_checkpoint_name_escaping_its_folder(name: str, reason: str) -> None:
    # Even when the listing (wrongly) contains the name, it is refused before lookup.
    listed = lambda source: [name]  # noqa: E731
    with pytest.raises(UserError) as exc:
        build_plan(txt2img(ckpt=name), registry(), listed, LIMITS)
    message = str(exc.value)
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in message
    assert "not allowed" in message
    assert reason in message


def test_load_image_name_escaping_its_folder() -> None:
    message = rejected(img2img(image_name="../x.png"))
    assert "node 10 (LoadImage) input 'image'" in message
    assert "'../x.png' is not allowed" in message


@pytest.mark.parametrize(("prefix", "reason"), [("../../tmp/x", "'..'"), ("/abs/x", "absolute")])
def test_filename_prefix_escaping_the_output_folder(prefix: str, reason: str) -> None:
    message = rejected(txt2img(prefix=prefix))
    assert "node 9 (SaveImage) input 'filename_prefix'" in message
    assert "not allowed" in message
    assert reason in message


def test_filename_prefix_with_subfolder_is_accepted() -> None:
    assert plan(txt2img(prefix="runs/%year%/img")).nodes["9"].values["filename_prefix"] == "runs/%year%/img"


def test_load_image_of_an_image_not_sent() -> None:
    message = rejected(img2img(image_name="missing.png"))
    assert "node 10 (LoadImage) input 'image'" in message
    assert "'missing.png' not found in input_images" in message
    assert "'input.png'" in message


# -- output nodes and reachability ----------------------------------------------------------------------


def test_no_output_node() -> None:
    graph = txt2img()
    del graph["9"]
    message = rejected(graph)
    assert "no output node" in message
    assert "SaveImage" in message


def test_only_preview_output() -> None:
    graph = txt2img()
    graph["9"] = {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}}
    message = rejected(graph)
    assert "9 (PreviewImage)" in message
    assert "not returned" in message
    assert "SaveImage" in message


def test_all_problems_reported_at_once() -> None:
    graph = txt2img(steps=0, ckpt="nope.safetensors")
    graph["6"]["inputs"]["text"] = 7
    with pytest.raises(UserError) as exc:
        plan(graph)
    message = str(exc.value)
    assert "3 problems" in message
    assert "node 3 (KSampler) input 'steps'" in message
    assert "node 4 (CheckpointLoaderSimple) input 'ckpt_name'" in message
    assert "node 6 (CLIPTextEncode) input 'text'" in message
    assert len(exc.value.problems) == 3


def test_unreachable_nodes_are_not_planned_or_validated() -> None:
    graph = txt2img()
    # Not linked to the SaveImage: neither planned nor checked (its steps are out of range).
    graph["20"] = copy.deepcopy(graph["3"])
    graph["20"]["inputs"]["steps"] = 0
    graph["21"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    result = plan(graph)
    assert "20" not in result.order
    assert "21" not in result.order
    assert set(result.nodes) == set(result.order)
    assert result.workflow["20"]["inputs"]["steps"] == 0  # the graph is kept as sent


def test_preview_branch_is_not_planned() -> None:
    graph = txt2img()
    graph["30"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    graph["31"] = {"class_type": "PreviewImage", "inputs": {"images": ["30", 0]}}
    result = plan(graph)
    assert "30" not in result.order
    assert "31" not in result.order
    assert "9" in result.order


def test_every_save_image_is_planned() -> None:
    graph = txt2img()
    graph["30"] = {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}}
    graph["31"] = {"class_type": "SaveImage", "inputs": {"images": ["30", 0], "filename_prefix": "second"}}
    result = plan(graph)
    assert {"9", "30", "31"} <= set(result.order)


def assert_topological(result: Plan) -> None:
    position = {node_id: index for index, node_id in enumerate(result.order)}
    assert len(position) == len(result.order)
    for node_id, planned in result.nodes.items():
        for link in planned.links.values():
            assert position[link.node_id] < position[node_id], (link.node_id, node_id, result.order)


def test_order_puts_dependencies_first() -> None:
    assert_topological(plan(txt2img()))
    assert_topological(plan(img2img()))


def test_order_with_ids_that_do_not_sort_like_dependencies() -> None:
    # The sampler has the lowest id and string ids sort differently from numbers ("10" < "9").
    graph = {
        "100": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}},
        "1": {"class_type": "VAEDecode", "inputs": {"samples": ["2", 0], "vae": ["10", 2]}},
        "2": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 1, "steps": 2, "cfg": 7, "sampler_name": "euler", "scheduler": "normal",
                "model": ["10", 0], "positive": ["9", 0], "negative": ["9", 0], "latent_image": ["abc", 0],
            },
        },
        "9": {"class_type": "CLIPTextEncode", "inputs": {"text": "x", "clip": ["10", 1]}},
        "10": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny-sd"}},
        "abc": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
    }
    result = plan(graph)
    assert sorted(result.order) == sorted(graph)
    assert_topological(result)


def test_integer_node_ids_in_links() -> None:
    graph = txt2img()
    for body in graph.values():
        for name, value in body["inputs"].items():
            if isinstance(value, list):
                body["inputs"][name] = [int(value[0]), value[1]]
    result = plan(graph)
    assert sorted(result.order) == ["3", "4", "5", "6", "7", "8", "9"]
    assert result.nodes["3"].links["model"].node_id == "4"
    assert_topological(result)


# -- defaults and extras --------------------------------------------------------------------------------


def test_defaults_are_filled() -> None:
    graph = without_input("3", "denoise")
    del graph["9"]["inputs"]["filename_prefix"]
    result = plan(graph)
    assert result.nodes["3"].values["denoise"] == 1.0
    assert result.nodes["9"].values["filename_prefix"] == "ComfyUI"


def test_numeric_defaults_are_filled() -> None:
    graph = txt2img()
    graph["5"]["inputs"] = {}
    for name in ("seed", "steps", "cfg"):
        del graph["3"]["inputs"][name]
    result = plan(graph)
    assert result.nodes["5"].values == {"width": 512, "height": 512, "batch_size": 1}
    assert result.nodes["3"].values["steps"] == 20
    assert result.nodes["3"].values["cfg"] == 8.0
    assert result.nodes["3"].values["seed"] == 0


def test_unknown_extra_inputs_are_ignored() -> None:
    graph = with_input("3", "control_after_generate", "randomize")
    graph["6"]["inputs"]["speak_and_recognation"] = True
    graph["4"]["_meta"] = {"title": "Load Checkpoint"}
    result = plan(graph)
    assert "control_after_generate" not in result.nodes["3"].values
    assert "speak_and_recognation" not in result.nodes["6"].values
