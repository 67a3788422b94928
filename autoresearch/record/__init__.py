"""record: what a run leaves behind, shared by run/, loop/ and cli/ (a leaf: imports no stage)."""
