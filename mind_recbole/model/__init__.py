"""The plugin's models: MIND and its single-interest baseline YouTubeDNN."""
