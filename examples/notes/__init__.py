"""The notes example: a small knowledge base an LLM agent can write to and search, as four cells."""
