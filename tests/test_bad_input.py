"""Bad prompts never kill an AsymCache server: token ids outside the vocabulary, ids that are
not integers and text that is not valid Unicode are refused with a 400 before they reach the
scheduler, on every endpoint, and the next request is served. ``sglang.Engine`` raises the same
ValueError (``tests/test_engine.py``)."""

from __future__ import annotations

import json

import pytest
import requests

from asymcache_sglang.core.request_checks import text_error, token_ids_error

VOCAB = 512  # eval.tiny_model's vocabulary
SURROGATE = "hi \\ud800 there"  # as JSON escapes it; not encodable to UTF-8


def test_token_ids_error_names_the_first_bad_id_and_the_valid_range():
    assert token_ids_error([], 10) is None
    assert token_ids_error([0, 9, True], 10) is None
    for ids, index, value in (([1, 10], 1, 10), ([-1, 2], 0, -1), ([3, 2**70], 1, 2**70)):
        assert token_ids_error(ids, 10) == (
            f"input_ids[{index}] is {value}, outside this model's vocabulary: "
            "valid token ids are 0 to 9"
        )
    assert token_ids_error([1, 2.5], 10) == "input_ids must be integers; input_ids[1] is 2.5"
    assert token_ids_error([1, None], 10) == "input_ids must be integers; input_ids[1] is None"


def test_text_error_finds_a_lone_surrogate_anywhere_in_the_text():
    assert text_error("plain text, é, 中文, 🙂") is None
    assert text_error(["a", ("b", "c")]) is None
    message = "text is not valid Unicode: character 3 is a lone surrogate (U+D800); send UTF-8 text"
    assert text_error("hi \ud800") == message
    assert text_error([("x", "y"), {"content": [{"text": "hi \ud800"}]}]) == message
    assert text_error(None) is None


def _post(url: str, path: str, body: str) -> requests.Response:
    return requests.post(
        url + path, data=body, headers={"content-type": "application/json"}, timeout=120
    )


def _stream_error(response: requests.Response) -> dict:
    """The error event of an SSE stream (SGLang sends the 200 status before the prompt is read,
    so a stream's 400 is its error event)."""
    events = [line[len("data: ") :] for line in response.text.splitlines() if line]
    return json.loads(events[0])["error"]


CASES = {
    "generate ids above": ("/generate", {"input_ids": [11, VOCAB + 7]}, "input_ids[1] is 519"),
    "generate ids negative": ("/generate", {"input_ids": [-3, 11]}, "input_ids[0] is -3"),
    "generate batch": ("/generate", {"input_ids": [[11, 12], [13, VOCAB]]}, "input_ids[1] is 512"),
    "completions ids": ("/v1/completions", {"prompt": [11, VOCAB]}, "input_ids[1] is 512"),
    "completions negative": ("/v1/completions", {"prompt": [11, -1]}, "input_ids[1] is -1"),
}


@pytest.mark.e2e
@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("stream", [False, True])
def test_token_ids_outside_the_vocabulary_get_a_400(asymcache_server, case, stream):
    path, body, names = CASES[case]
    if path == "/generate":
        body = {**body, "sampling_params": {"max_new_tokens": 2}, "stream": stream}
    else:
        body = {**body, "model": "m", "max_tokens": 2, "stream": stream}
    response = _post(asymcache_server.url, path, json.dumps(body))
    if stream and path == "/generate":
        assert response.status_code == 200
        error = _stream_error(response)
        assert error["code"] == 400
        message = error["message"]
    else:
        assert response.status_code == 400, response.text
        message = response.json()["message" if path.startswith("/v1") else "error"]
        message = message if isinstance(message, str) else message["message"]
    assert names in message and f"valid token ids are 0 to {VOCAB - 1}" in message
    _assert_serves(asymcache_server.url)


@pytest.mark.e2e
@pytest.mark.parametrize(
    "path, body",
    [
        ("/generate", f'{{"text": "{SURROGATE}", "sampling_params": {{"max_new_tokens": 2}}}}'),
        ("/v1/completions", f'{{"model": "m", "prompt": "{SURROGATE}", "max_tokens": 2}}'),
        (
            "/v1/chat/completions",
            f'{{"model": "m", "messages": [{{"role": "user", "content": "{SURROGATE}"}}], '
            '"max_tokens": 2}',
        ),
    ],
)
def test_text_that_is_not_unicode_gets_a_400(asymcache_server, path, body):
    response = _post(asymcache_server.url, path, body)
    assert response.status_code == 400, response.text
    assert "lone surrogate (U+D800)" in response.text
    _assert_serves(asymcache_server.url)


def _assert_serves(url: str) -> None:
    ok = requests.post(
        f"{url}/generate",
        json={"input_ids": [11, 12, 13], "sampling_params": {"max_new_tokens": 2}},
        timeout=120,
    )
    assert ok.status_code == 200 and len(ok.json()["output_ids"]) == 2, ok.text
    assert requests.get(f"{url}/health_generate", timeout=120).status_code == 200
