"""The merge program: puts the swapped face back into each frame (DFL_SPEC §4), jitted per batch."""
