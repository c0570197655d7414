"""Hardware-in-the-loop bench: one suite for real boards and virtual devices."""
