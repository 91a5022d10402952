"""Prompt templates sent to LLMs (plain Markdown files) and their loader."""
