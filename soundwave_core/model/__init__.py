"""The composed speech LLM and the pieces it is made of."""
