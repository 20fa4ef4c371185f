"""A custom tool's call (Codex's apply_patch) streamed to a /v1/responses client from an
upstream that only has functions: the call arrives as a function's arguments,
``{"input": "..."}``, in fragments; the client gets ``response.custom_tool_call_input.delta``
events with the decoded text as it comes, then ``.done`` with the whole input, and the
deltas add up to it."""
from __future__ import annotations

import json
import random
from typing import Any

import pytest

from providers.base import StreamContext, fold_chunks
from tornado_proxy.apis.openai_responses import ResponsesFormat
from tornado_proxy.apis.openai_responses.stream import CustomInput
from tornado_proxy.pipeline.sse import SSEDecoder

PATCH = "*** Begin Patch\n*** Add File: a.py\n+print(\"héllo\\n\")\t# ok\n+x = '\\u'\n*** End Patch\n"
INPUTS = [PATCH, "", "plain", 'quote " backslash \\ slash / ctl \b\f\r', "emoji 😀 and é and 中文",
          "\\u0041 is not an escape here", "ends with a backslash \\"]


def wrapped(text: str, ascii_only: bool, spaced: bool) -> str:
    value = json.dumps(text, ensure_ascii=ascii_only)
    return ('{ "input" : ' + value + " }") if spaced else '{"input":' + value + "}"


def feed_all(pieces: list[str]) -> tuple[str, list[str]]:
    dec = CustomInput()
    outs = []
    for p in pieces:
        outs.append(dec.feed(p))
    return "".join(outs), outs


@pytest.mark.parametrize("text", INPUTS)
@pytest.mark.parametrize("ascii_only", [True, False])
@pytest.mark.parametrize("spaced", [True, False])
def test_every_split_decodes_to_the_input_and_only_ever_a_prefix_of_it(text: str, ascii_only: bool,
                                                                        spaced: bool) -> None:
    args = wrapped(text, ascii_only, spaced)
    for at in range(len(args) + 1):
        dec = CustomInput()
        first = dec.feed(args[:at])
        assert text.startswith(first), (at, first)
        assert first + dec.feed(args[at:]) == text == dec.text()
    rnd = random.Random(len(args))
    for _ in range(20):
        cuts = sorted(rnd.sample(range(len(args) + 1), min(6, len(args) + 1)))
        pieces = [args[a:b] for a, b in zip([0, *cuts], [*cuts, len(args)])]
        got, outs = feed_all(pieces)
        assert got == text
        so_far = ""
        for o in outs:
            so_far += o
            assert text.startswith(so_far)


def test_one_character_at_a_time_streams_as_it_goes() -> None:
    args = wrapped("ab\\nc😀d", True, False)
    got, outs = feed_all(list(args))
    assert got == "ab\\nc😀d"
    assert sum(1 for o in outs if o) >= 5  # text came out along the way, not at the end
    # a surrogate pair written as two escapes is one character, given out whole
    assert "😀" in outs


@pytest.mark.parametrize("args", [
    '["input"]', 'null', 'input', '{"input": 5}', '{"other": 1}', '{"other": 1, "input": [1]}',
    '{"other" 1, "input": "x"}', '{"a": tru, "input": "x"}',
])
def test_arguments_of_another_shape_decode_nothing(args: str) -> None:
    for at in range(len(args) + 1):
        got, _ = feed_all([args[:at], args[at:]])
        assert got == "", at


@pytest.mark.parametrize("head", [
    '{"note": "x", ', '{ "n" : 12.5e3 , "ok": true, "nothing": null,', '{"deep": {"a": [1, {"b": "}\\""}]}, ',
    '{"n\\u0061me": "apply_patch", ',
])
def test_members_before_the_input_are_skipped_and_the_input_still_streams(head: str) -> None:
    args = head + '"input": ' + json.dumps(PATCH) + "}"
    assert json.loads(args)["input"] == PATCH
    for at in range(len(args) + 1):
        dec = CustomInput()
        first = dec.feed(args[:at])
        assert PATCH.startswith(first), (at, first)
        assert first + dec.feed(args[at:]) == PATCH
    got, outs = feed_all(list(args))  # a character at a time: it streams once the key is reached
    assert got == PATCH and sum(1 for o in outs if o) > 10


def test_members_before_the_input_are_read_only_so_far() -> None:
    from tornado_proxy.apis.openai_responses.custom_input import HEAD_LIMIT

    args = '{"pad": "' + "x" * HEAD_LIMIT + '", "input": "late"}'
    got, _ = feed_all([args[:HEAD_LIMIT + 20], args[HEAD_LIMIT + 20:]])
    assert got == ""  # (the input then goes out whole at the end of the call)


def test_a_bad_escape_stops_the_decoding_and_the_end_quote_ends_it() -> None:
    assert feed_all(['{"input": "ok\\', 'q more"}'])[0] == "ok"
    assert feed_all(['{"input": "ok\\u12', 'zz"}'])[0] == "ok"
    assert feed_all(['{"input": "done"', ', "input": "again"}'])[0] == "done"


# -- the encoder ------------------------------------------------------------------------

TOOLS = [{"type": "custom", "name": "apply_patch", "description": "patch",
          "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"}},
         {"type": "function", "name": "shell", "parameters": {"type": "object", "properties": {}}}]
REQ = {"model": "claude-x", "input": "hi", "tools": TOOLS}


def ctx() -> StreamContext:
    return StreamContext(id="resp_0123abcd", created=1700000000, model="claude-x", client_request=REQ)


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def call_chunks(args: list[str], name: str = "apply_patch", index: int = 0, cid: str = "call_1") -> list[dict[str, Any]]:
    out = [chunk({"tool_calls": [{"index": index, "id": cid, "type": "function",
                                   "function": {"name": name, "arguments": ""}}]})]
    out += [chunk({"tool_calls": [{"index": index, "function": {"arguments": a}}]}) for a in args]
    return out


def events(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    enc = ResponsesFormat().new_encoder(ctx())
    data = b"".join(enc.feed(c) for c in chunks) + enc.finish()
    return [json.loads(e.data) for e in SSEDecoder().feed(data)]


def split(s: str, n: int) -> list[str]:
    return [s[i:i + n] for i in range(0, len(s), n)]


def test_custom_call_streams_input_deltas_that_add_up_to_the_done_input() -> None:
    args = split(json.dumps({"input": PATCH}), 7)
    chunks = [chunk({"role": "assistant", "content": "Patching."}), *call_chunks(args),
              *call_chunks(['{"a":', '1}'], name="shell", index=1, cid="call_2"), chunk({}, "tool_calls")]
    evs = events(chunks)
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    deltas = [e for e in evs if e["type"] == "response.custom_tool_call_input.delta"]
    assert len(deltas) > 5
    [done] = [e for e in evs if e["type"] == "response.custom_tool_call_input.done"]
    assert "".join(d["delta"] for d in deltas) == done["input"] == PATCH
    assert {(d["item_id"], d["output_index"]) for d in deltas} == {(done["item_id"], done["output_index"])}
    assert set(deltas[0]) == {"type", "item_id", "output_index", "delta", "sequence_number"}
    kinds = [e["type"] for e in evs]
    # added, the deltas, done, item done: in that order; the function call keeps its own events
    first = kinds.index("response.custom_tool_call_input.delta")
    assert kinds[first - 1] == "response.output_item.added" and evs[first - 1]["item"]["type"] == "custom_tool_call"
    assert kinds.index("response.custom_tool_call_input.done") > max(i for i, k in enumerate(kinds)
                                                                    if k == "response.custom_tool_call_input.delta")
    assert "response.function_call_arguments.delta" in kinds
    assert all(e["item_id"] != done["item_id"] for e in evs if e["type"] == "response.function_call_arguments.delta")
    final = evs[-1]["response"]
    assert final == ResponsesFormat().render_response(fold_chunks(chunks), ctx())
    custom = final["output"][1]
    assert custom["type"] == "custom_tool_call" and custom["input"] == PATCH and custom["call_id"] == "call_1"


def test_openai_python_takes_the_custom_tool_events() -> None:
    from openai._models import construct_type_unchecked
    from openai._types import omit
    from openai.lib.streaming.responses._responses import ResponseStreamState
    from openai.types.responses import ResponseStreamEvent

    state = ResponseStreamState(text_format=omit, input_tools=omit)
    fired = []
    for obj in events([*call_chunks(split(json.dumps({"input": PATCH}), 5)), chunk({}, "tool_calls")]):
        fired += state.handle_event(construct_type_unchecked(type_=ResponseStreamEvent, value=obj))  # type: ignore[arg-type]
    deltas = [e.delta for e in fired if e.type == "response.custom_tool_call_input.delta"]
    assert "".join(deltas) == PATCH
    final = state._completed_response
    assert final is not None and final.output[0].type == "custom_tool_call" and final.output[0].input == PATCH


@pytest.mark.parametrize("args", [
    ['{"input":"whole at once"}'],                       # (Gemini: the arguments in one piece)
    ['{"note": "x", ', '"input": "key not', ' first"}'],  # streamed once the key comes
    ['{"pad": "' + "y" * 5000 + '", ', '"input": "far"}'],  # too far in: one delta at the end
])
def test_the_deltas_add_up_to_the_input_whatever_the_arguments_look_like(args: list[str]) -> None:
    evs = events([*call_chunks(args), chunk({}, "tool_calls")])
    deltas = [e["delta"] for e in evs if e["type"] == "response.custom_tool_call_input.delta"]
    [done] = [e for e in evs if e["type"] == "response.custom_tool_call_input.done"]
    assert "".join(deltas) == done["input"] == json.loads("".join(args))["input"]
    assert len(deltas) == (2 if args[0].startswith('{"note"') else 1)


def test_arguments_cut_short_end_the_call_without_an_error() -> None:
    # finish_reason "length" mid-arguments: what was decoded went out, .done and the
    # item have the part of the input the arguments hold (the deltas add up to it), and
    # the response is incomplete.
    evs = events([*call_chunks(['{"input": "*** Begin', " Patch\\n*** Add"]), chunk({}, "length")])
    deltas = [e["delta"] for e in evs if e["type"] == "response.custom_tool_call_input.delta"]
    assert "".join(deltas) == "*** Begin Patch\n*** Add"
    [done] = [e for e in evs if e["type"] == "response.custom_tool_call_input.done"]
    assert done["input"] == "*** Begin Patch\n*** Add" and evs[-1]["type"] == "response.incomplete"
    assert evs[-1]["response"]["output"][0]["input"] == done["input"]
