"""autoresearch: an autonomous, sandboxed experiment loop for Claude Code with trusted evaluation."""
__version__ = "0.1.0"
