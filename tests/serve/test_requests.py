"""`lab.serve.requests` on literal bodies, no server: what each field means, and the one sentence (and
`param`) a client gets for each thing this server refuses."""

from __future__ import annotations

from dataclasses import replace

import pytest
from pydantic import ValidationError

from lab.interface import SamplingParams
from lab.serve.replies import ApiError
from lab.serve.requests import ChatCompletionBody, TokenizeBody, api_error, parse_chat, parse_completion, read
from tests.conftest import WEATHER

HI = [{"role": "user", "content": "Hi"}]
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def chat(**fields):
    return parse_chat({"messages": HI, **fields})


def completion(**fields):
    return parse_completion({"prompt": "Once", **fields})


def refused(parse, body: dict) -> ApiError:
    with pytest.raises(ApiError) as e:
        parse(body)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"
    return e.value


def test_fields_left_out_take_the_models_own_defaults():
    req = chat()
    assert replace(req.params, max_new_tokens=512) == SamplingParams()  # Qwen's generation_config, as vLLM
    assert req.max_tokens is None  # the route gives what the context leaves after the prompt
    assert (req.model, req.tools, req.stream, req.include_usage) == (None, None, False, False)
    req = completion()
    assert req.params == SamplingParams(max_new_tokens=16) and req.max_tokens == 16  # OpenAI's default
    assert (req.prompts, req.echo, req.logprobs) == (["Once"], False, None)


def test_sampling_fields_map_onto_sampling_params():
    req = chat(temperature=0, top_p=0.5, top_k=-1, repetition_penalty=1.0, seed=7, max_tokens=8, stop="\n",
               ignore_eos=True, stream=True, stream_options={"include_usage": True}, model="tiny-random",
               user="someone", metadata={"x": 1})  # unknown fields are ignored
    assert req.params == SamplingParams(temperature=0, top_p=0.5, top_k=0, repetition_penalty=1.0, seed=7,
                                        max_new_tokens=8, stop=("\n",), ignore_eos=True)  # top_k -1 is off: 0
    assert (req.max_tokens, req.stream, req.include_usage, req.model) == (8, True, True, "tiny-random")
    assert chat(max_completion_tokens=5, max_tokens=9).max_tokens == 5  # the newer name wins
    assert chat(top_k=3.0, seed=2.0).params.top_k == 3  # 2.0 is an integer in JSON
    assert chat(temperature=1).params.temperature == 1.0 and chat(ignore_eos="yes").params.ignore_eos is False
    assert chat(temperature=None).params.temperature == SamplingParams().temperature  # null is left out


@pytest.mark.parametrize("stop, kept", [("END", ("END",)), (["a", "", "b"], ("a", "b")), ([], ()), (None, ())])
def test_stop_is_a_string_or_a_list_of_strings(stop, kept):
    assert chat(stop=stop).params.stop == kept


def test_messages_are_read_as_the_chat_template_reads_them():
    assert parse_chat({"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "y"}]}
                      ).messages[0] == {"role": "system", "content": "x"}
    with_system = [{"role": "system", "content": "Be brief."}, *HI]
    assert chat(messages=with_system).messages == with_system
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert chat(messages=parts).messages == [{"role": "user", "content": "ab"}]
    assert chat(messages=HI).messages == HI  # no system message added: Qwen's template adds its own


def test_tools_and_response_format():
    assert chat(tools=[WEATHER]).tools == [WEATHER]
    assert chat(tools=[WEATHER], tool_choice="none").tools is None
    assert chat(tools=[WEATHER["function"]]).tools == [WEATHER]  # a bare function is accepted too
    assert chat(response_format={"type": "text"}).params.response_format is None
    assert chat(response_format={"type": "json_object"}).params.response_format == {"type": "json_object"}
    fmt = chat(response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}}).params.response_format
    assert fmt == {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}}


def test_completion_fields():
    req = completion(prompt=["a", "b"], echo=True, logprobs=0, max_tokens=0)
    assert (req.prompts, req.echo, req.logprobs, req.max_tokens) == (["a", "b"], True, 0, 0)  # 0: score only
    assert completion(logprobs=20).logprobs == 20 and completion(prompt="").prompts == [""]


def test_token_id_prompts_and_rows():
    """OpenAI's four prompt shapes: one token-id prompt is one prompt, a list of them a batch."""
    assert completion(prompt=[9707, 11]).prompts == [[9707, 11]]
    assert completion(prompt=[[9707], [11, 12.0]]).prompts == [[9707], [11, 12]]  # 12.0 is the integer 12
    assert completion(prompt=["a"], n=3).n == 3 and completion().n == 1


def test_chat_logprobs_rows_and_forced_tools():
    req = chat(logprobs=True, top_logprobs=3, n=2)
    assert (req.logprobs, req.top_logprobs, req.n) == (True, 3, 2)
    assert chat().params.response_format is None and not chat().logprobs
    required = chat(tools=[WEATHER], tool_choice="required").params.response_format
    assert required == {"type": "tool_call", "named": False, "tools": [
        {"name": "get_current_weather", "parameters": WEATHER["function"]["parameters"]}]}
    named = chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_current_weather"}})
    assert named.params.response_format["named"] is True and named.tools == [WEATHER]
    assert chat(tools=[WEATHER], tool_choice="none").tools is None


PROMPT = ("'prompt' must be a string, a non-empty list of strings, a non-empty list of token ids (integers) or a list "
          "of such lists.")
PENALTY = "is not supported; use 'repetition_penalty' (1.0 is off)."
CHAT_REFUSALS = [
    ({"n": 17}, "n", "'n' must be between 1 and 16, got 17."),
    ({"n": 0}, "n", "'n' must be between 1 and 16, got 0."),
    ({"best_of": 3}, "best_of", "'best_of' must be 1 on this server (use 'n' for several rows), got 3."),
    ({"frequency_penalty": 0.5}, "frequency_penalty", f"'frequency_penalty' {PENALTY}"),
    ({"presence_penalty": -1}, "presence_penalty", f"'presence_penalty' {PENALTY}"),
    ({"presence_penalty": 3}, "presence_penalty", "'presence_penalty' must be a number between -2 and 2, got 3."),
    ({"logit_bias": {"42": 5}}, "logit_bias", "'logit_bias' is not supported."),
    ({"temperature": -0.5}, "temperature", "'temperature' must be 0 or a number between 0.01 and 2, got -0.5."),
    ({"temperature": 2.5}, "temperature", "'temperature' must be 0 or a number between 0.01 and 2, got 2.5."),
    ({"temperature": float("nan")}, "temperature", "'temperature' must be 0 or a number between 0.01 and 2, got nan."),
    ({"temperature": 5e-324}, "temperature", "'temperature' must be 0 or a number between 0.01 and 2, got 5e-324."),
    ({"repetition_penalty": 5e-324}, "repetition_penalty",
     "'repetition_penalty' must be a number between 0.01 and 10, got 5e-324."),  # found by tests/serve/test_fuzz.py
    ({"temperature": float("inf")}, "temperature", "'temperature' must be 0 or a number between 0.01 and 2, got inf."),
    ({"temperature": 10**400}, "temperature", "'temperature' must be a number, got " + "1" + "0" * 400 + "."),
    ({"temperature": True}, "temperature", "'temperature' must be a number, got true."),
    ({"temperature": "0.5"}, "temperature", "'temperature' must be a number, got \"0.5\"."),
    ({"top_p": 1.5}, "top_p", "'top_p' must be a number between 0.001 and 1, got 1.5."),
    ({"top_p": 0}, "top_p", "'top_p' must be a number between 0.001 and 1, got 0."),
    ({"top_p": 5e-324}, "top_p", "'top_p' must be a number between 0.001 and 1, got 5e-324."),  # 0 in float32
    ({"top_p": float("-inf")}, "top_p", "'top_p' must be a number between 0.001 and 1, got -inf."),
    ({"top_k": -2}, "top_k", "'top_k' must be -1 (off) or a whole number between 0 and 1,000,000, got -2."),
    ({"top_k": 10**12}, "top_k",
     "'top_k' must be -1 (off) or a whole number between 0 and 1,000,000, got 1000000000000."),
    ({"repetition_penalty": 0}, "repetition_penalty",
     "'repetition_penalty' must be a number between 0.01 and 10, got 0."),
    ({"repetition_penalty": float("nan")}, "repetition_penalty",
     "'repetition_penalty' must be a number between 0.01 and 10, got nan."),
    ({"seed": 10**30}, "seed", "'seed' must be a whole number between 0 and 4,294,967,295, got "
     "1000000000000000000000000000000."),
    ({"seed": -1}, "seed", "'seed' must be a whole number between 0 and 4,294,967,295, got -1."),
    ({"seed": 2**32}, "seed", "'seed' must be a whole number between 0 and 4,294,967,295, got 4294967296."),
    ({"seed": float("inf")}, "seed", "'seed' must be an integer, got Infinity."),
    ({"stream": "yes"}, "stream", "'stream' must be true or false."),
    ({"stream": 1}, "stream", "'stream' must be true or false."),
    ({"messages": [{"role": "user", "content": "\ud800 lone"}]}, "messages",
     "'messages' holds text that is not valid Unicode (a lone surrogate, such as \\ud800 unpaired); send UTF-8 "
     "text."),
    ({"messages": [{"role": "user", "content": {"text": "a dict where the text goes"}}]}, "messages",
     "Message 1 of 'messages' needs a role (user, assistant, tool, or system first) and text content."),
    ({"messages": [{"role": "user", "content": "Hi"}], "user": {"\udfff": 1}}, "user",
     "'user' holds text that is not valid Unicode (a lone surrogate, such as \\ud800 unpaired); send UTF-8 text."),
    ({"messages": [{"role": "user", "content": "Hi"}], "\udfff": 1}, None,
     "The request body holds text that is not valid Unicode (a lone surrogate, such as \\ud800 unpaired); send "
     "UTF-8 text."),
    ({"top_k": 2.5}, "top_k", "'top_k' must be an integer, got 2.5."),
    ({"seed": False}, "seed", "'seed' must be an integer, got false."),
    ({"max_tokens": -1}, "max_tokens", "'max_tokens' must be a whole number between 0 and 1,048,576, got -1."),
    ({"max_completion_tokens": 2**21}, "max_completion_tokens",
     "'max_completion_tokens' must be a whole number between 0 and 1,048,576, got 2097152."),
    ({"max_tokens": 0}, "max_tokens", "'max_tokens' must be at least 1 for a chat completion."),
    ({"max_completion_tokens": 0}, "max_tokens", "'max_tokens' must be at least 1 for a chat completion."),
    ({"stop": [1]}, "stop", "'stop' must be a string or a list of strings."),
    ({"stop": {"a": 1}}, "stop", "'stop' must be a string or a list of strings."),
    ({"model": 3}, "model", "'model' must be a string."),
    ({"stream_options": True}, "stream_options", "'stream_options' must be an object like {\"include_usage\": true}."),
    ({"logprobs": 1}, "logprobs", "'logprobs' must be true or false."),
    ({"top_logprobs": 2}, "top_logprobs", "'top_logprobs' needs 'logprobs': true."),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs",
     "'top_logprobs' must be a whole number between 0 and 20, got 21."),
    ({"tool_choice": "required"}, "tool_choice",
     "'tool_choice' asks for a tool call, so send the functions in 'tools'."),
    ({"tool_choice": "any"}, "tool_choice",
     "'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"function\": "
     "{\"name\": NAME}}."),
    ({"tool_choice": {"type": "function", "function": {"name": "get_time"}}, "tools": [WEATHER]}, "tool_choice",
     "'tool_choice' names the function 'get_time', which is not among the tools."),
    ({"tools": [{"description": "no name"}]}, "tools", "Tool 1 has no 'name'."),
    ({"tools": [WEATHER], "response_format": {"type": "json_object"}}, "response_format",
     "'response_format' constrains the whole reply, so it cannot be combined with 'tools'."),
    ({"response_format": {"type": "xml"}}, "response_format",
     "'response_format' must have type text, json_object or json_schema."),
    ({"response_format": "json"}, "response_format",
     "'response_format' must have type text, json_object or json_schema."),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format",
     "'response_format' of type json_schema needs 'json_schema': {\"name\", \"schema\"}."),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "object", "required": "x"}}}},
     "response_format", "The JSON Schema is invalid at required: 'x' is not of type 'array'."),
    ({"messages": []}, "messages", "'messages' must be a non-empty list of {\"role\", \"content\"} messages."),
    ({"messages": "Hi"}, "messages", "'messages' must be a non-empty list of {\"role\", \"content\"} messages."),
    ({"messages": [{"role": "system", "content": "x"}]}, "messages",
     "'messages' needs a user message after the system message."),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages",
     "Message 1 of 'messages' needs a role (user, assistant, tool, or system first) and text content."),
]


@pytest.mark.parametrize("fields, param, sentence", CHAT_REFUSALS, ids=[str(f) for f, _, _ in CHAT_REFUSALS])
def test_chat_refusals_are_one_sentence_with_their_param(fields, param, sentence):
    error = refused(parse_chat, {"messages": HI, **fields})
    assert (error.message, error.param) == (sentence, param)


COMPLETION_REFUSALS = [
    ({"prompt": [1, "two"]}, "prompt", PROMPT),
    ({"prompt": [1.5]}, "prompt", PROMPT),
    ({"prompt": [[1], []]}, "prompt", PROMPT),
    ({"prompt": []}, "prompt", PROMPT),
    ({"prompt": None}, "prompt", PROMPT),
    ({"logprobs": 21}, "logprobs", "'logprobs' must be a whole number between 0 and 20, got 21."),
    ({"logprobs": -1}, "logprobs", "'logprobs' must be a whole number between 0 and 20, got -1."),
    ({"prompt": ["fine", "\udc80"]}, "prompt",
     "'prompt' holds text that is not valid Unicode (a lone surrogate, such as \\ud800 unpaired); send UTF-8 text."),
    ({"seed": 1e30}, "seed", "'seed' must be a whole number between 0 and 4,294,967,295, got "
     "1000000000000000019884624838656."),  # 1e30 is a whole number: the integer it stands for
    ({"logprobs": 2.5}, "logprobs", "'logprobs' must be an integer, got 2.5."),
    ({"echo": "yes"}, "echo", "'echo' must be true or false."),
    ({"suffix": "The end."}, "suffix", "'suffix' is not supported."),
    ({"n": 17}, "n", "'n' must be between 1 and 16, got 17."),
    ({"max_tokens": 1.5}, "max_tokens", "'max_tokens' must be an integer, got 1.5."),
]


@pytest.mark.parametrize("fields, param, sentence", COMPLETION_REFUSALS,
                         ids=[str(f) for f, _, _ in COMPLETION_REFUSALS])
def test_completion_refusals_are_one_sentence_with_their_param(fields, param, sentence):
    error = refused(parse_completion, {"prompt": "Once", **fields})
    assert (error.message, error.param) == (sentence, param)


def test_a_missing_prompt_or_messages_is_refused():
    assert refused(parse_completion, {}).message == PROMPT
    assert refused(parse_chat, {}).param == "messages"


def test_tokenize_counts_a_prompt_or_messages():
    assert read(TokenizeBody, {"prompt": "Hi", "tools": "ignored without messages"}).messages is None
    body = read(TokenizeBody, {"messages": [{"role": "developer", "content": "x"}, *HI], "tools": [WEATHER]})
    assert body.messages[0] == {"role": "system", "content": "x"} and body.tools == [WEATHER]
    assert body.add_generation_prompt is True
    error = refused(lambda b: read(TokenizeBody, b), {"messages": "Hi"})
    assert error.message == "Send 'prompt' (a string) or 'messages' to count tokens." and error.param is None
    assert refused(lambda b: read(TokenizeBody, b), {"messages": []}).param == "messages"


def test_fastapis_errors_become_the_same_sentences():
    """FastAPI's errors put "body" first in `loc`, and describe the body itself when it is not an object."""
    with pytest.raises(ValidationError) as e:
        ChatCompletionBody.model_validate({"messages": HI, "top_p": 2})
    errors = [{**err, "loc": ("body", *err["loc"])} for err in e.value.errors()]
    error = api_error(errors, ChatCompletionBody)
    assert (error.message, error.param) == ("'top_p' must be a number between 0.001 and 1, got 2.", "top_p")

    def says(error: dict) -> str:
        return api_error([error], ChatCompletionBody).message

    assert says({"type": "json_invalid", "loc": ("body", 1), "msg": "JSON decode error", "input": {}}) == \
        "The request body is not valid JSON."
    assert says({"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}) == \
        "The request body is not valid JSON."
    assert says({"type": "model_attributes_type", "loc": ("body",), "msg": "", "input": [1]}) == \
        "The request body must be a JSON object."
    assert says({"type": "model_attributes_type", "loc": ("body",), "msg": "", "input": b"{}"}) == \
        "The request body was not sent as JSON; send it with 'Content-Type: application/json'."
