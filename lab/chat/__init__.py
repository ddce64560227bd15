"""Conversation logic with no UI: the messages a model sees and fitting them into its context
(`conversation`), tool calls read out of replies (`tools`), JSON mode as a request and a check
(`json_mode`), and the prompt text kept as data (`presets`)."""
