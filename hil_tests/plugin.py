"""pytest plugin for the bench; its fixtures arrive with the HIL issue."""
