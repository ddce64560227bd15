"""Saved chats in a real SQLite file: per owner, list/search/rename/delete, round trips of the exported JSON,
reply versions and ratings; and the conversation's versions, Continue and dropped-turn marks they rely on."""

from __future__ import annotations

import json

import pytest

from lab.chat.conversation import Conversation, export_conversation, export_json
from lab.chat.saved import ChatStore, new_client_id, owner_of, parse_import, title_of
from lab.db import Database
from lab.errors import LabError
from lab.interface import ReplyStats, SamplingParams

PARAMS = SamplingParams(seed=1)


def stats(tokens: int = 5, finish: str = "stop") -> ReplyStats:
    return ReplyStats(prompt_tokens=10, completion_tokens=tokens, ttft_s=0.01, decode_tokens_per_s=50.0, total_s=0.1,
                      finish_reason=finish, seed=1)


def chat(*pairs: tuple[str, str]) -> Conversation:
    conv = Conversation()
    for question, answer in pairs:
        conv.messages.append({"role": "user", "content": question})
        conv.add_reply(answer, stats(), PARAMS, 0)
    return conv


@pytest.fixture
def store(tmp_path):
    return ChatStore(Database(tmp_path / "lab.db"))


def test_owners_are_a_login_or_a_well_formed_browser_id():
    cid = new_client_id()
    assert owner_of(None, cid) == f"client:{cid}" and owner_of("alice", cid) == "user:alice"
    assert owner_of(None, None) is None and owner_of(None, "x' OR 1=1 --") is None and owner_of(None, "short") is None
    assert new_client_id() != cid


def test_save_list_load_rename_delete_stay_within_one_owner(store):
    a, b = "client:" + new_client_id(), "client:" + new_client_id()
    conv = chat(("Tell me about 北京的历史 please", "It is old."))
    chat_id = store.save(a, conv, "Be brief.", PARAMS)
    assert conv.chat_id == chat_id and store.save(a, conv, "Be brief.") == chat_id  # the same row again
    assert [c.title for c in store.list(a)] == ["Tell me about 北京的历史 please"] and store.list(b) == []
    with pytest.raises(LabError, match="That chat is gone"):
        store.load(b, chat_id)  # another browser cannot open it by id
    assert not store.delete(b, chat_id)
    with pytest.raises(LabError, match="That chat is gone"):
        store.rename(b, chat_id, "mine now")
    loaded, system = store.load(a, chat_id)
    assert system == "Be brief." and loaded.messages == conv.messages and loaded.stats[1]["seed"] == 1
    store.rename(a, chat_id, "  History   of Beijing ")
    assert store.list(a)[0].title == "History of Beijing" and store.load(a, chat_id)[0].title == "History of Beijing"
    with pytest.raises(LabError, match="cannot be empty"):
        store.rename(a, chat_id, "   ")
    assert store.delete(a, chat_id) and store.list(a) == []


def test_a_chat_of_another_owner_is_never_overwritten(store):
    conv = chat(("q", "a"))
    first = store.save("client:" + "a" * 20, conv, "")
    second = store.save("client:" + "b" * 20, conv, "")  # the same object saved by another owner: a new row
    assert first != second and len(store.list("client:" + "a" * 20)) == 1


def test_search_reads_titles_and_messages_in_any_case_newest_first(store):
    owner = "user:alice"
    store.save(owner, chat(("Recipe for dumplings", "Flour and water.")), "")
    store.save(owner, chat(("Weather", "明天下雨 in BEIJING")), "")
    assert [c.title for c in store.list(owner)] == ["Weather", "Recipe for dumplings"]
    assert [c.title for c in store.list(owner, "beijing")] == ["Weather"]
    assert [c.title for c in store.list(owner, "下雨")] == ["Weather"]
    assert [c.title for c in store.list(owner, "DUMPLING")] == ["Recipe for dumplings"]
    assert store.list(owner, "nothing like this") == []


def test_text_sqlite_cannot_hold_round_trips(store):
    odd = "lone \ud800 surrogate and a NUL \0 here"
    conv = chat((odd, odd))
    loaded, system = store.load("user:x", store.save("user:x", conv, odd))
    assert loaded.messages == conv.messages and system == odd


def test_regenerate_keeps_versions_and_switching_restores_each_with_its_rating():
    conv = chat(("q", "first"))
    conv.rate(1, "down")
    conv.truncate(1, keep_versions=True)
    conv.add_reply("second", stats(7), PARAMS, 0)
    assert conv.version_label(1) == "2/2" and conv.messages[1]["content"] == "second"
    assert conv.show_version(-1) and conv.messages[1]["content"] == "first" and conv.stats[1]["rating"] == "down"
    assert not conv.show_version(-1) and conv.version_label(1) == "1/2"
    conv.rate(1, "up")
    assert conv.show_version(+1) and conv.stats[1]["completion_tokens"] == 7 and "rating" not in conv.stats[1]
    assert conv.show_version(-1) and conv.stats[1]["rating"] == "up"  # the rating given meanwhile was kept
    conv.truncate(1)  # undo or edit: the versions go with the reply
    assert conv.versions == {} and conv.version_label(1) == ""
    with pytest.raises(LabError, match="Only the model's replies"):
        conv.rate(0, "up")


def test_export_import_round_trip_keeps_versions_ratings_tools_and_title():
    conv = chat(("q", "one"))
    conv.truncate(1, keep_versions=True)
    conv.add_reply("two", stats(), PARAMS, 0)
    conv.rate(1, "up")
    conv.messages += [{"role": "user", "content": "weather?"},
                      {"role": "assistant", "content": "", "tool_calls": [
                          {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "北京"}}}]},
                      {"role": "tool", "content": "{\"t\": 21}", "name": "get_weather"}]
    conv.title = "Named"
    text = export_json(export_conversation(conv, "Be brief.", PARAMS, None))
    back, system = parse_import(text)
    assert system == "Be brief." and back.messages == conv.messages and back.title == "Named"
    assert back.versions[1] == json.loads(json.dumps(conv.all_versions(1)))
    assert back.shown == {1: 1} and back.stats[1]["rating"] == "up"
    assert title_of(Conversation([{"role": "user", "content": "x " * 100}]))[-1] == "…"


@pytest.mark.parametrize("text, match", [
    ("not json", "The file is not JSON"),
    ('{"messages": []}', "not a chat the page exported"),
    ('[1, 2]', "not a chat the page exported"),
    ('{"format": "qwen-lab.chat/1", "messages": [{"role": "robot", "content": "x"}]}', "needs a role"),
    ('{"format": "qwen-lab.chat/1", "messages": [{"role": "user", "content": "x"}],'
     ' "versions": [{"index": 0, "versions": []}]}', "reply versions do not match"),
])
def test_a_bad_import_is_one_sentence(text, match):
    with pytest.raises(LabError, match=match):
        parse_import(text)


def test_continue_extends_the_reply_and_its_stats():
    conv = chat(("q", "Once upon"))
    conv.extend_reply(" a time", stats(3, "length"))
    assert conv.messages[1]["content"] == "Once upon a time"
    assert conv.stats[1]["completion_tokens"] == 8 and conv.stats[1]["finish_reason"] == "length"
    assert conv.stats[1]["continued"] == 1


def test_dropped_turns_are_the_oldest_ones_the_last_reply_did_not_see():
    conv = chat(("a", "A"), ("b", "B"))
    conv.messages.append({"role": "user", "content": "c"})
    conv.add_reply("C", stats(), PARAMS, dropped_turns=2)
    assert conv.dropped_indices() == {0, 1, 2, 3}
    conv.stats[5]["dropped_turns"] = 0
    assert conv.dropped_indices() == set()
    assert json.loads(export_json(export_conversation(conv, "", PARAMS, None)))["title"] == ""
