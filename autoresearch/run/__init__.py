"""run: see the README's "How it works"."""
