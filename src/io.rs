//! Safetensors interchange (DESIGN.md §5): models, episodes, gradients and training checkpoints, written atomically.
