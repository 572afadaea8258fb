"""parse_request and the v5 result shapes: every rejected request names the field (input.workflow,
input.images[i] and the image name) and says what was expected."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.helpers import b64, png_bytes, txt2img
from worker.config import Settings
from worker.contract import Request, failure, no_outputs, output_item, parse_request, success
from worker.errors import UserError

SETTINGS = Settings.from_env({})
PNG = png_bytes(16, 16)


def parse(job_input: Any, settings: Settings = SETTINGS) -> Request:
    return parse_request(job_input, settings)


def rejected(job_input: Any, settings: Settings = SETTINGS) -> UserError:
    with pytest.raises(UserError) as exc:
        parse(job_input, settings)
    return exc.value


def with_images(images: Any) -> dict[str, Any]:
    return {"workflow": txt2img(), "images": images}


def image(name: str = "input.png", data: bytes = PNG) -> dict[str, str]:
    return {"name": name, "image": b64(data)}


# -- input and workflow ---------------------------------------------------------------------------------


def test_minimal_request() -> None:
    request = parse({"workflow": txt2img()})
    assert request.workflow == txt2img()
    assert request.images == {}
    assert request.unknown_keys == ()


def test_input_none() -> None:
    message = str(rejected(None))
    assert "no 'input'" in message
    assert "workflow" in message


@pytest.mark.parametrize(("job_input", "kind"), [([txt2img()], "list"), (3, "int"), (True, "bool")])
def test_input_not_an_object(job_input: Any, kind: str) -> None:
    message = str(rejected(job_input))
    assert "'input' must be an object" in message
    assert kind in message


def test_input_as_a_json_string_is_parsed_like_the_object() -> None:
    body = {"workflow": txt2img(), "images": [image("a.png")], "output": {"format": "webp"}}
    request = parse(json.dumps(body))
    assert request.workflow == txt2img()
    assert request.images == {"a.png": PNG}
    assert request.output.format == "webp"


@pytest.mark.parametrize("job_input", ["workflow", json.dumps([txt2img()]), "42", "null", '"{}"', ""])
def test_input_string_that_is_not_a_json_object_is_refused(job_input: str) -> None:
    message = str(rejected(job_input))
    assert message == "'input' is a string but not a JSON object; expected {\"workflow\": {...}}"


def test_input_json_string_is_checked_like_the_object() -> None:
    assert "'input' is empty" in str(rejected("{}"))
    assert "'input.workflow' is missing" in str(rejected(json.dumps({"images": []})))


def test_input_empty() -> None:
    message = str(rejected({}))
    assert "'input' is empty" in message
    assert "workflow" in message


def test_workflow_missing() -> None:
    message = str(rejected({"images": [image()]}))
    assert "'input.workflow' is missing" in message
    assert "API" in message


def test_workflow_a_list() -> None:
    message = str(rejected({"workflow": [txt2img()]}))
    assert "'input.workflow' must be an object" in message
    assert "list" in message


def test_workflow_as_json_string_is_parsed() -> None:
    request = parse({"workflow": json.dumps(txt2img())})
    assert request.workflow == txt2img()


def test_workflow_json_string_of_a_list() -> None:
    message = str(rejected({"workflow": "[1, 2]"}))
    assert "'input.workflow' must be an object" in message
    assert "list" in message


def test_workflow_invalid_json_string() -> None:
    message = str(rejected({"workflow": '{"3": {"class_type": '}))
    assert "'input.workflow'" in message
    assert "not valid JSON" in message


@pytest.mark.parametrize("workflow", [{}, "{}"])
def test_workflow_empty(workflow: Any) -> None:
    message = str(rejected({"workflow": workflow}))
    assert "'input.workflow' is empty" in message


def test_ui_format_workflow_is_accepted_and_marked_for_conversion() -> None:
    ui = {"last_node_id": 9, "nodes": [{"id": 3, "type": "KSampler"}], "links": [[1, 4, 0, 3, 0, "MODEL"]]}
    for workflow in (ui, json.dumps(ui)):
        request = parse_request({"workflow": workflow}, SETTINGS)
        assert request.ui_format and request.workflow == ui
    assert not parse_request({"workflow": {"1": {"class_type": "KSampler", "inputs": {}}}}, SETTINGS).ui_format


# -- images ---------------------------------------------------------------------------------------------


def test_images_are_decoded_by_name() -> None:
    other = png_bytes(8, 8, (0, 0, 255))
    request = parse(with_images([image("input.png"), image("sub/mask.png", other)]))
    assert request.images == {"input.png": PNG, "sub/mask.png": other}


def test_images_empty_list() -> None:
    assert parse(with_images([])).images == {}


@pytest.mark.parametrize(("images", "kind"), [({"name": "a.png"}, "dict"), ("a.png", "str")])
def test_images_not_a_list(images: Any, kind: str) -> None:
    message = str(rejected(with_images(images)))
    assert "'input.images' must be a list" in message
    assert kind in message


def test_image_item_not_an_object() -> None:
    message = str(rejected(with_images([image(), "b.png"])))
    assert "input.images[1]" in message
    assert "expected an object with 'name' and 'image'" in message


def test_image_name_missing() -> None:
    message = str(rejected(with_images([{"image": b64(PNG)}])))
    assert "input.images[0].name" in message
    assert "expected a file name" in message


@pytest.mark.parametrize(("name", "reason"), [("../a.png", "'..'"), ("/a.png", "absolute"), ("a\\b.png", "backslash")])
def test_image_name_escaping_its_folder(name: str, reason: str) -> None:
    message = str(rejected(with_images([image("ok.png"), image(name)])))
    assert "input.images[1].name" in message
    assert repr(name) in message
    assert reason in message


def test_duplicate_image_names() -> None:
    message = str(rejected(with_images([image("a.png"), image("b.png"), image("a.png")])))
    assert "input.images[2] ('a.png')" in message
    assert "used twice" in message
    assert "input.images[0]" not in message


def test_image_field_missing() -> None:
    message = str(rejected(with_images([{"name": "a.png"}])))
    assert "input.images[0] ('a.png').image" in message
    assert "is missing" in message
    assert "base64" in message


@pytest.mark.parametrize("value", [None, "", 12, ["abc"]])
def test_image_field_not_a_string(value: Any) -> None:
    message = str(rejected(with_images([{"name": "a.png", "image": value}])))
    assert "input.images[0] ('a.png').image" in message
    assert "is missing" in message


def test_image_invalid_base64() -> None:
    message = str(rejected(with_images([{"name": "a.png", "image": "not base64!!"}])))
    assert "input.images[0] ('a.png').image" in message
    assert "not valid base64" in message


def test_image_data_uri_prefix_is_accepted() -> None:
    request = parse(with_images([{"name": "a.png", "image": "data:image/png;base64," + b64(PNG)}]))
    assert request.images == {"a.png": PNG}


def test_image_base64_with_surrounding_whitespace_is_accepted() -> None:
    request = parse(with_images([{"name": "a.png", "image": f"  {b64(PNG)}\n"}]))
    assert request.images == {"a.png": PNG}


def test_image_bytes_not_an_image() -> None:
    message = str(rejected(with_images([{"name": "a.png", "image": b64(b"hello world")}])))
    assert "input.images[0] ('a.png').image" in message
    assert "not a readable image" in message


def test_image_over_the_byte_limit() -> None:
    settings = Settings.from_env({"MAX_INPUT_IMAGE_BYTES": "100"})
    data = png_bytes(64, 64)
    assert len(data) > 100
    message = str(rejected(with_images([image("big.png", data)]), settings))
    assert "input.images[0] ('big.png').image" in message
    assert "100 bytes" in message


def test_image_at_the_byte_limit_is_accepted() -> None:
    settings = Settings.from_env({"MAX_INPUT_IMAGE_BYTES": str(len(PNG))})
    assert parse(with_images([image("a.png")]), settings).images == {"a.png": PNG}


def test_image_just_over_the_byte_limit_after_decoding() -> None:
    # Within the cheap pre-decode estimate, but one byte over once decoded.
    settings = Settings.from_env({"MAX_INPUT_IMAGE_BYTES": str(len(PNG) - 1)})
    message = str(rejected(with_images([image("a.png")]), settings))
    assert "input.images[0] ('a.png').image" in message
    assert f"the limit is {len(PNG) - 1}" in message


def test_image_over_the_pixel_limit() -> None:
    settings = Settings.from_env({"MAX_INPUT_PIXELS": "1000"})
    message = str(rejected(with_images([image("wide.png", png_bytes(200, 100))]), settings))
    assert "input.images[0] ('wide.png').image" in message
    assert "200x100" in message
    assert "1000 pixels" in message


def test_too_many_images() -> None:
    settings = Settings.from_env({"MAX_INPUT_IMAGES": "2"})
    images = [image(f"{i}.png") for i in range(3)]
    message = str(rejected(with_images(images), settings))
    assert "'input.images'" in message
    assert "3 images" in message
    assert "limit is 2" in message
    assert len(parse(with_images(images[:2]), settings).images) == 2


def test_several_bad_images_in_one_error() -> None:
    images = [
        image("good.png"),
        {"name": "bad64.png", "image": "not base64!!"},
        {"name": "text.png", "image": b64(b"hello world")},
        {"name": "empty.png"},
    ]
    error = rejected(with_images(images))
    message = str(error)
    assert "3 problems" in message
    assert "input.images[1] ('bad64.png')" in message
    assert "input.images[2] ('text.png')" in message
    assert "input.images[3] ('empty.png')" in message
    assert "good.png" not in message
    assert len(error.problems) == 3


def test_several_bad_image_names_in_one_error() -> None:
    error = rejected(with_images([image("../a.png"), 7, image("x.png"), image("x.png")]))
    message = str(error)
    assert "input.images[0].name" in message
    assert "input.images[1]" in message
    assert "input.images[3] ('x.png')" in message
    assert len(error.problems) == 3


# -- other keys -----------------------------------------------------------------------------------------


def test_comfy_org_api_key_is_accepted_and_not_unknown() -> None:
    request = parse({"workflow": txt2img(), "comfy_org_api_key": "comfyui-abc"})
    assert request.unknown_keys == ()
    assert request.workflow == txt2img()


def test_unknown_keys_are_reported_sorted() -> None:
    request = parse({"workflow": txt2img(), "webhook": "x", "callback": 1, "comfy_org_api_key": "k"})
    assert request.unknown_keys == ("callback", "webhook")


# -- results --------------------------------------------------------------------------------------------


def test_success_without_errors_has_no_errors_key() -> None:
    item = output_item("ComfyUI_00001_.png", "aGVsbG8=")
    result = success([item], [])
    assert result == {"images": [{"filename": "ComfyUI_00001_.png", "type": "base64", "data": "aGVsbG8="}]}
    assert "errors" not in result


def test_success_with_errors_lists_them() -> None:
    item = output_item("ComfyUI_00001_.png", "https://bucket/x.png", "s3_url")
    result = success([item], ["image 2 is over the result limit"])
    assert result["images"] == [{"filename": "ComfyUI_00001_.png", "type": "s3_url", "data": "https://bucket/x.png"}]
    assert result["errors"] == ["image 2 is over the result limit"]


def test_failure_error_is_a_string() -> None:
    result = failure("invalid workflow: node 3 (KSampler) input 'steps': 0 is below the minimum 1")
    assert result == {"error": "invalid workflow: node 3 (KSampler) input 'steps': 0 is below the minimum 1"}
    assert isinstance(result["error"], str)


def test_wrapped_base64_at_the_size_limit_is_accepted() -> None:
    import base64 as b64mod

    data = png_bytes(64, 64)
    settings = Settings.from_env({"MAX_INPUT_IMAGE_BYTES": str(len(data))})
    wrapped = b64mod.encodebytes(data).decode()
    request = parse_request({"workflow": txt2img(), "images": [{"name": "a.png", "image": wrapped}]}, settings)
    assert request.images["a.png"] == data


def test_data_uri_with_parameters_is_accepted() -> None:
    data = png_bytes()
    uri = "data:image/png;charset=utf-8;base64," + b64(data)
    request = parse_request({"workflow": txt2img(), "images": [{"name": "a.png", "image": uri}]}, Settings.from_env({}))
    assert request.images["a.png"] == data


def test_success_lists_files_only_when_there_are_some() -> None:
    still = output_item("ComfyUI_00001_.png", "aGVsbG8=")
    audio = output_item("audio_00001_.flac", "ZkxhQw==")
    result = success([still], [], {"device": "cpu"}, [audio])
    assert result == {"images": [still], "files": [audio], "metadata": {"device": "cpu"}}
    assert "files" not in success([still], [], None, [])


def test_no_outputs_is_worker_comfyuis_answer() -> None:
    assert no_outputs() == {"status": "success_no_images", "images": []}
    assert no_outputs([]) == {"status": "success_no_images", "images": []}
    assert no_outputs(["node 3 (KSampler) input 'stepz' ..."]) == {
        "status": "success_no_images", "images": [], "metadata": {"warnings": ["node 3 (KSampler) input 'stepz' ..."]}}


def test_workflow_ui_as_a_json_string_is_parsed() -> None:
    ui = {"nodes": [{"id": 3}], "links": []}
    assert parse({"workflow": txt2img(), "workflow_ui": json.dumps(ui)}).output.workflow_ui == ui
    assert parse({"workflow": txt2img(), "workflow_ui": ui}).output.workflow_ui == ui
    message = str(rejected({"workflow": txt2img(), "workflow_ui": "[1, 2]"}))
    assert "input.workflow_ui: expected the UI workflow as an object" in message
