"""The Chat tab's saved chats: the list (open, rename, delete, search), import of an exported JSON file, and the
autosave after every change, all through lab.chat.saved's store in the run history's SQLite file.

Whose chats: behind a login (`--auth`) the user's; else the browser's, by a random client id kept in its
localStorage (a gr.BrowserState, encrypted with a key kept beside lab.db so it survives a restart). The same
BrowserState remembers which chat was open, so a reload opens it again.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import gradio as gr

from lab.chat.conversation import Conversation
from lab.chat.saved import ChatStore, new_client_id, owner_of, parse_import
from lab.errors import LabError
from lab.ui.common import notice

STORAGE_KEY = "qwen-lab-chats"


def state_secret(store: ChatStore) -> str:
    """The key the browser's state is encrypted with, made once per run history."""
    path = Path(store.path).with_name("browser-state.key")
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        key = secrets.token_urlsafe(24)
        path.write_text(key)
        path.chmod(0o600)
        return key


class SavedChats:
    """The panel's components and handlers; `build()` inside the tab's left column, `wire()` once outputs exist."""

    def __init__(self, store: ChatStore) -> None:
        self.store = store

    def build(self) -> None:
        self.browser = gr.BrowserState({}, storage_key=STORAGE_KEY, secret=state_secret(self.store))
        with gr.Row(elem_id="chat-list-head"):
            self.new_btn = gr.Button("＋ New chat", size="sm", elem_id="clear-btn", scale=3)
            self.close_btn = gr.Button("✕", size="sm", elem_classes="drawer-close", scale=1, min_width=40)
        self.search = gr.Textbox(show_label=False, placeholder="Search chats", elem_id="chat-search", lines=1)
        self.choices = gr.Radio([], label="Saved chats", show_label=False, elem_id="chat-list", container=False)
        self.note = gr.Markdown("", elem_id="chat-list-note", elem_classes="lab-notice")
        with gr.Accordion("This chat", open=False, elem_id="chat-manage"):
            self.title = gr.Textbox(label="Title", elem_id="chat-title", lines=1)
            with gr.Row():
                self.rename_btn = gr.Button("Rename", size="sm", elem_id="rename-btn")
                self.delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="delete-btn")
            self.upload = gr.UploadButton("Import JSON", file_types=[".json"], size="sm", elem_id="import-btn")

    # ---- helpers --------------------------------------------------------------------------
    def owner(self, state: dict | None, request: gr.Request | None) -> tuple[str, dict]:
        """This visitor's owner key, and the browser state (a new client id on a first visit)."""
        state = dict(state or {})
        if owner_of(None, state.get("client")) is None:
            state["client"] = new_client_id()
        user = getattr(request, "username", None) if request is not None else None
        return owner_of(user, state["client"]), state

    def listing(self, owner: str, query: str = "", selected: str | None = None):
        chats = self.store.list(owner, query)
        ids = {c.id for c in chats}
        return gr.Radio(choices=[(c.label(), c.id) for c in chats], value=selected if selected in ids else None)

    # ---- handlers -------------------------------------------------------------------------
    def autosave(self, conv: Conversation, system_prompt: str, state: dict, query: str, request: gr.Request):
        """After a change: the chat written (once it has a message), the list refreshed, the open chat remembered."""
        owner, state = self.owner(state, request)
        if not conv.messages:
            return conv, state, self.listing(owner, query), gr.skip(), ""
        self.store.save(owner, conv, system_prompt)
        state["open"] = conv.chat_id
        return conv, state, self.listing(owner, query, conv.chat_id), conv.title or gr.skip(), ""

    def start(self, state: dict, request: gr.Request):
        """The page opens: the list, and the chat that was open before a reload."""
        owner, state = self.owner(state, request)
        conv, system = Conversation(), gr.skip()
        if state.get("open"):
            try:
                conv, system = self.store.load(owner, state["open"])
            except LabError:
                state.pop("open")
        return conv, system, state, self.listing(owner, "", conv.chat_id), conv.title

    def open(self, chat_id: str | None, state: dict, request: gr.Request):
        owner, state = self.owner(state, request)
        if not chat_id:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), ""
        try:
            conv, system = self.store.load(owner, chat_id)
        except LabError as e:
            return gr.skip(), gr.skip(), state, self.listing(owner), gr.skip(), notice(str(e))
        state["open"] = chat_id
        return conv, system, state, gr.skip(), conv.title, ""

    def new(self, state: dict, request: gr.Request):
        owner, state = self.owner(state, request)
        state.pop("open", None)
        return Conversation(), state, self.listing(owner), "", ""

    def rename(self, conv: Conversation, title: str, state: dict, query: str, request: gr.Request):
        owner, state = self.owner(state, request)
        if not conv.chat_id:
            return gr.skip(), gr.skip(), notice("Send a message first: a chat is saved, and can be named, once it "
                                                "has one.")
        try:
            self.store.rename(owner, conv.chat_id, title)
        except LabError as e:
            return gr.skip(), gr.skip(), notice(str(e))
        conv.title = " ".join(title.split())
        return conv, self.listing(owner, query, conv.chat_id), ""

    def delete(self, conv: Conversation, state: dict, query: str, request: gr.Request):
        owner, state = self.owner(state, request)
        if conv.chat_id:
            self.store.delete(owner, conv.chat_id)
        state.pop("open", None)
        return Conversation(), state, self.listing(owner, query), "", "Chat deleted."

    def find(self, query: str, conv: Conversation, state: dict, request: gr.Request):
        owner, _ = self.owner(state, request)
        return self.listing(owner, query, conv.chat_id)

    def import_file(self, file, state: dict, request: gr.Request):
        owner, state = self.owner(state, request)
        try:
            conv, system = parse_import(Path(file if isinstance(file, str) else file.name).read_bytes())
        except LabError as e:
            return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), notice(str(e))
        conv.chat_id = None  # a new chat in this list, whatever id it had elsewhere
        self.store.save(owner, conv, system)
        state["open"] = conv.chat_id
        return conv, system, state, self.listing(owner, "", conv.chat_id), conv.title, "Chat imported."


__all__ = ["SavedChats", "state_secret", "STORAGE_KEY"]
