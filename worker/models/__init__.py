"""Model store (names -> files -> resident modules) and the model wrappers nodes pass around."""
