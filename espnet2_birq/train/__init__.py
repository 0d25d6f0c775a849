"""Training loop additions (ESPnet trainer subclasses)."""
