"""Saved chats: each visitor's conversations in the run history's SQLite file (lab.db, table `chats`), so a
chat survives a reload, and a list to open, rename, delete and search; plus import of the JSON the page exports.

    store = ChatStore.open()                     # runs/lab.db, or --runs-dir / LAB_RUNS_DIR
    owner = owner_of(username, client_id)        # a login, else the browser's random id
    chat_id = store.save(owner, conv, system_prompt, params, info)
    conv, system_prompt = store.load(owner, chat_id)

A chat belongs to one owner: "user:NAME" behind a login (`--auth`), else "client:ID" for a random id the
browser keeps in its localStorage, so two people on one Space never see each other's chats. Every read and
write names the owner; a chat of another owner is "not found", never shown. Nothing here imports Gradio.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass

from lab.chat.conversation import Conversation, export_conversation, parse_history
from lab.db import Store, get, put
from lab.errors import LabError
from lab.interface import ModelInfo, SamplingParams

FORMAT = "qwen-lab.chat/1"
TITLE_CHARS = 60
LIST_LIMIT = 200  # the newest chats the list shows
CLIENT_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def new_client_id() -> str:
    return secrets.token_urlsafe(18)  # 24 characters, 144 random bits


def owner_of(username: str | None, client_id: str | None) -> str | None:
    """Whose chats these are: the login when there is one, else the browser's id (None: not known yet)."""
    if username:
        return f"user:{username}"
    if client_id and CLIENT_ID.fullmatch(client_id):
        return f"client:{client_id}"
    return None


def title_of(conv: Conversation) -> str:
    """The chat's title: the one given, else the start of its first message."""
    if conv.title.strip():
        return conv.title.strip()
    first = next((m.get("content") or "" for m in conv.messages if m["role"] == "user"), "")
    words = " ".join(first.split())
    return (words[:TITLE_CHARS - 1] + "…" if len(words) > TITLE_CHARS else words) or "New chat"


@dataclass
class SavedChat:
    id: str
    title: str
    updated_at: float
    messages: int

    def label(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.updated_at))
        return f"{self.title} · {when}"


def from_record(record: object) -> tuple[Conversation, str]:
    """The conversation and system prompt of an exported (or saved) chat record; LabError in one sentence."""
    if not isinstance(record, dict) or record.get("format") != FORMAT or not isinstance(record.get("messages"), list):
        raise LabError(f"This is not a chat the page exported: its JSON needs \"format\": \"{FORMAT}\" and a "
                       "list of messages.")
    raw = record["messages"]
    system, messages = parse_history(raw)
    offset = 1 if system is not None else 0
    conv = Conversation(messages)
    for i, m in enumerate(messages):
        source = raw[i + offset]
        if m["role"] == "tool":  # parse_history keeps role and content; a tool result also has its call's name
            m.update({k: source[k] for k in ("name", "tool_call_id") if isinstance(source.get(k), str)})
        if m["role"] == "assistant" and isinstance(source.get("stats"), dict):
            conv.stats[i] = source["stats"]
    for entry in record.get("versions") or []:
        try:
            i, versions = int(entry["index"]) - offset, list(entry["versions"])
            shown = int(entry.get("shown", 0))
            ok = 0 <= i < len(messages) and messages[i]["role"] == "assistant" and 0 <= shown < len(versions)
            ok = ok and all(isinstance(v.get("message"), dict) and isinstance(v["message"].get("content"), str)
                            for v in versions)
        except (KeyError, TypeError, ValueError, AttributeError):
            ok = False
        if not ok:
            raise LabError("The chat's reply versions do not match its messages; export it again from the page.")
        conv.versions[i], conv.shown[i] = versions, shown
    title = record.get("title")
    conv.title = title if isinstance(title, str) else ""
    prompt = record.get("system_prompt")
    return conv, system if system is not None else (prompt if isinstance(prompt, str) else "")


def parse_import(text: str | bytes) -> tuple[Conversation, str]:
    """A chat from the text of an exported JSON file."""
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LabError(f"The file is not JSON ({e}); pick a chat the page exported with Export JSON.") from None
    return from_record(record)


class ChatStore(Store):
    """The `chats` table: one row per saved chat, the chat itself as its exported JSON record."""

    def save(self, owner: str, conv: Conversation, system_prompt: str, params: SamplingParams | None = None,
             info: ModelInfo | None = None) -> str:
        """Write the chat (a new row the first time, then the same row); sets and returns `conv.chat_id`."""
        record = export_conversation(conv, system_prompt, params or SamplingParams(), info)
        now = time.time()
        body = put(json.dumps(record, ensure_ascii=False))
        with self.conn() as c:
            updated = 0
            if conv.chat_id:
                updated = c.execute("UPDATE chats SET title=?, updated_at=?, record=? WHERE id=? AND owner=?",
                                    (put(title_of(conv)), now, body, conv.chat_id, owner)).rowcount
            if not updated:
                conv.chat_id = secrets.token_hex(8)
                c.execute("INSERT INTO chats (id, owner, title, created_at, updated_at, record) VALUES (?,?,?,?,?,?)",
                          (conv.chat_id, owner, put(title_of(conv)), now, now, body))
        return conv.chat_id

    def list(self, owner: str, query: str = "") -> list[SavedChat]:
        """The owner's chats, newest first; `query` keeps those whose title or text holds it (any case)."""
        rows = self.conn().execute("SELECT id, title, updated_at, record FROM chats WHERE owner=? "
                                   "ORDER BY updated_at DESC", (owner,)).fetchall()
        q = query.strip().casefold()
        out = []
        for r in rows:
            record = get(r["record"])
            if q and q not in get(r["title"]).casefold() and q not in _text_of(record).casefold():
                continue
            out.append(SavedChat(r["id"], get(r["title"]), r["updated_at"], len(json.loads(record)["messages"])))
            if len(out) == LIST_LIMIT:
                break
        return out

    def load(self, owner: str, chat_id: str) -> tuple[Conversation, str]:
        row = self.conn().execute("SELECT record FROM chats WHERE id=? AND owner=?", (chat_id, owner)).fetchone()
        if row is None:
            raise LabError("That chat is gone (deleted, perhaps in another tab); pick another one.")
        conv, system_prompt = from_record(json.loads(get(row["record"])))
        conv.chat_id = chat_id
        return conv, system_prompt

    def rename(self, owner: str, chat_id: str, title: str) -> None:
        title = " ".join(title.split())[:200]
        if not title:
            raise LabError("Give the chat a title (it cannot be empty).")
        with self.conn() as c:
            row = c.execute("SELECT record FROM chats WHERE id=? AND owner=?", (chat_id, owner)).fetchone()
            if row is None:
                raise LabError("That chat is gone (deleted, perhaps in another tab); pick another one.")
            record = json.loads(get(row["record"]))
            record["title"] = title
            c.execute("UPDATE chats SET title=?, record=? WHERE id=? AND owner=?",
                      (put(title), put(json.dumps(record, ensure_ascii=False)), chat_id, owner))

    def delete(self, owner: str, chat_id: str) -> bool:
        with self.conn() as c:
            return c.execute("DELETE FROM chats WHERE id=? AND owner=?", (chat_id, owner)).rowcount > 0


def _text_of(record: str) -> str:
    """What a search looks through: every message's text."""
    return "\n".join(m.get("content") or "" for m in json.loads(record)["messages"] if isinstance(m, dict))


__all__ = ["ChatStore", "SavedChat", "owner_of", "new_client_id", "title_of", "from_record", "parse_import"]
