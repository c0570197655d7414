"""`lifeline demo`: a virtual site playing a scripted incident (run), its live view (live), the incident as
timed stimulus (script), and the plot and summary (report)."""
