"""Matrix products the engine runs itself: LLM.int8 without host reads (`int8`)."""
