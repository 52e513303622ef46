"""The six attacks the paper evaluates: triggers (pixel space) and poisoning recipes."""
