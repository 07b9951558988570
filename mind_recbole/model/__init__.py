"""The plugin's models: MIND, its single-interest baseline YouTubeDNN, and ComiRec-SA / ComiRec-DR."""
