"""The simulated OpenAI-compatible upstream (`shipyard sim`) and its model."""
